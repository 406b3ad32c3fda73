"""Speed bench: ingest, bare training step, end-to-end fit, prediction; images/s, % of matmul rate, peak RSS.

Each arch runs in fp32 and, where the hardware has native bf16 (AVX512-BF16/AMX CPUs, recent GPUs), in bf16
autocast too: the `--precision` of thera-fit.

Run:  .venv/bin/python bench/bench_speed.py --data ../shared/data/ml_exercise_therapanacea.zip
Prints one Markdown table (paste it into the README with the machine it ran on)."""
import argparse, copy, resource, tempfile, time, warnings

import torch

warnings.filterwarnings('ignore')
from fastai.torch_core import set_seed  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from thera_fastai.data.cache import cached_images  # noqa: E402
from thera_fastai.data.loaders import fold_dataloaders, fold_splits, images_dl  # noqa: E402
from thera_fastai.infer.inference import predict_probs  # noqa: E402
from thera_fastai.data.source import open_dataset  # noqa: E402
from thera_fastai.config import FitConfig, native_bf16  # noqa: E402
from thera_fastai.train.learner import thera_learner  # noqa: E402

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def matmul_gflops(precision='fp32', n=2048, reps=10):
    "Measured matmul rate of this machine in `precision`, GFLOP/s."
    a, b = torch.randn(n, n, dtype=DTYPES[precision]), torch.randn(n, n, dtype=DTYPES[precision])
    a @ b
    t = time.perf_counter()
    for _ in range(reps): a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def train_flops(model, size=64):
    "FLOPs of one training step (forward + backward) per image."
    x = torch.randn(8, 3, size, size)
    with FlopCounterMode(display=False) as fc: model(x).sum().backward()
    model.zero_grad()
    return fc.get_total_flops() / 8


def bare_step(model, bs, channels_last, precision='fp32', seconds=20):
    "Training steps per second on one preloaded batch, on the model's device: the model's own ceiling, images/s."
    model = copy.deepcopy(model).train()
    device = next(model.parameters()).device
    x, y = torch.randn(bs, 3, 64, 64, device=device), torch.randint(0, 2, (bs,), device=device).float()
    if channels_last: model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt, lossf = torch.optim.Adam(model.parameters(), 1e-3), torch.nn.BCEWithLogitsLoss()
    def step():
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16'): out = model(x).view(-1).float()
        lossf(out, y).backward(); opt.step()
    for _ in range(5): step()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds: step(); n += bs
    if device.type == 'cuda': torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def warm_learner(images, labels, cfg, precision):
    """A learner for `cfg` after a first fit on a few batches (as the bare step's first steps): in a real epoch
    of 80,000 images the one-off kernel setup is lost in the noise, in a 6,000-image bench it is not."""
    tr, va = fold_splits(labels, 5, cfg.seed)[0]
    set_seed(0)
    learn = thera_learner(fold_dataloaders(images, labels, tr[:4 * cfg.bs], va[:cfg.bs], bs=cfg.bs), cfg, tempfile.mkdtemp(),
                          runtime=dict(device='cpu', precision=precision, channels_last=True))
    learn.metrics = []
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, cfg.lr)
    return learn


def end_to_end(learn, images, labels, cfg, n_train):
    "Images/s of `fit_one_cycle` on `n_train` rows: weighted sampling, batch augmentation, optimizer step, all in."
    tr, va = fold_splits(labels, 5, cfg.seed)[0]
    learn.dls = fold_dataloaders(images, labels, tr[:n_train], va[:cfg.bs], bs=cfg.bs)
    with learn.no_bar(), learn.no_logging():
        t = time.perf_counter(); learn.fit_one_cycle(1, cfg.lr); total = time.perf_counter() - t
    return n_train / total


def predict_rate(learn, images, tta):
    "Images/s of one fold model predicting with `tta` augmented passes plus a plain one (each image counted once)."
    dl = images_dl(learn.dls, images, bs=512)
    predict_probs(learn, images_dl(learn.dls, images[:512], bs=512), tta)  # compile warm-up, shared by later models
    t = time.perf_counter(); predict_probs(learn, dl, tta)
    return len(images) / (time.perf_counter() - t)


def ingest(data):
    "Seconds to decode train + val into a fresh cache, and to reopen them from it."
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ds = open_dataset(data, need_val=True)
        cached_images(ds.train, tmp), cached_images(ds.val, tmp)
        first = time.perf_counter() - t
        t = time.perf_counter()
        ds = open_dataset(data, need_val=True)
        cached_images(ds.train, tmp), cached_images(ds.val, tmp)
        return first, time.perf_counter() - t, len(ds.train) + len(ds.val)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--data', required=True)
    p.add_argument('--archs', default='airbench,simple,resnet18:nopool')
    p.add_argument('--n-train', type=int, default=6144, help='rows per end-to-end fit (ResNets: 1/8 of it)')
    p.add_argument('--n-predict', type=int, default=4096, help='val rows predicted (ResNets: 1/8 of it)')
    p.add_argument('--tta', type=int, default=4)
    p.add_argument('--seconds', type=float, default=10, help='per bare-step measurement')
    p.add_argument('--repeats', type=int, default=3, help='end-to-end and channels-last bare-step measurements, interleaved; the best counts')
    a = p.parse_args()
    first, again, n = ingest(a.data)
    print(f"ingest: {n} JPEGs decoded into the cache in {first:.1f} s ({n / first:,.0f}/s); reopened in {again:.2f} s")
    precisions = ['fp32', 'bf16'] if native_bf16() else ['fp32']
    gflops = {p: matmul_gflops(p) for p in precisions}
    print("matmul: " + ', '.join(f"{p} {g:.0f} GFLOP/s" for p, g in gflops.items()) + f" on {torch.get_num_threads()} threads")
    ds = open_dataset(a.data, need_val=True)
    images, val = cached_images(ds.train), cached_images(ds.val)
    print("| arch | precision | train GFLOP/img | bare step img/s (NCHW) | bare step img/s (channels-last) | %% of matmul | "
          "end-to-end fit img/s | %% of bare | predict img/s (TTA %d) | 5 folds x 20k predict |" % a.tta)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for spec in a.archs.split(','):
        arch, _, stem = spec.partition(':')
        for precision in precisions:
            cfg = FitConfig(arch=arch, stem=(stem or 'nopool') if arch == 'resnet18' else None)
            scale = 8 if arch == "resnet18" else 1  # the ResNets are 4-13x slower: fewer rows keep the bench short
            learn = warm_learner(images, ds.labels, cfg, precision)
            model = copy.deepcopy(learn.model).to(memory_format=torch.contiguous_format)
            flops = train_flops(copy.deepcopy(model).cpu())
            nchw = bare_step(model, cfg.bs, False, precision, a.seconds)
            # Interleaved best of `repeats`: load from anything else on the machine only ever slows a run down.
            runs = [(end_to_end(learn, images, ds.labels, cfg, a.n_train // scale), bare_step(model, cfg.bs, True, precision, a.seconds))
                    for _ in range(a.repeats)]
            rate, cl = max(r for r, _ in runs), max(c for _, c in runs)
            pred = predict_rate(learn, val[:a.n_predict // scale], a.tta)
            print(f"| {spec} | {precision} | {flops / 1e9:.3f} | {nchw:.0f} | {cl:.0f} | {100 * cl * flops / 1e9 / gflops[precision]:.0f}% | "
                  f"{rate:.0f} | {100 * rate / cl:.0f}% | {pred:.0f} | {5 * 20000 / pred / 60:.1f} min |", flush=True)
    print(f"peak RSS of this bench: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == '__main__': main()
