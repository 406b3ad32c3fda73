"""Speed bench: ingest, bare training step, end-to-end fit, prediction; images/s, % of matmul rate, peak RSS.

Each arch runs in fp32 and, where the hardware has native bf16 (AVX512-BF16/AMX CPUs, recent GPUs), in bf16
autocast too: the `--precision` of thera-fit.

Run:  .venv/bin/python bench/bench_speed.py --data ../shared/data/ml_exercise_therapanacea.zip
Prints one Markdown table (paste it into the README with the machine it ran on)."""
import argparse, copy, math, resource, tempfile, time, warnings
from pathlib import Path

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


def matmul_gflops(precision='fp32', n=2048, reps=10, repeats=3):
    "Measured matmul rate of this machine in `precision`, GFLOP/s: best of `repeats` timings (a ceiling, so the best)."
    a, b = torch.randn(n, n, dtype=DTYPES[precision]), torch.randn(n, n, dtype=DTYPES[precision])
    a @ b
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(reps): a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * reps / best / 1e9


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


def conv_shapes(model, size=64):
    "Each Conv2d of `model` with its input shape for one image, in forward order."
    model = copy.deepcopy(model).eval()
    shapes, hooks = [], [m.register_forward_hook(lambda m, i, o: shapes.append((m, tuple(i[0].shape[1:]))))
                         for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad(): model(torch.zeros(1, 3, size, size))
    for h in hooks: h.remove()
    return shapes


def conv_floor(model, bs, repeats=3, steps=10):
    """The convolutions alone: forward and backward of each Conv2d of `model` on its own input shape, channels-last fp32,
    the input gradient left out for the first layer as in training. Rows (layer, ms per batch, GFLOP/s), best of `repeats`,
    and the images/s a step would reach if everything else in it cost nothing."""
    rows = []
    for i, (conv, shape) in enumerate(conv_shapes(model)):
        conv = copy.deepcopy(conv).to(memory_format=torch.channels_last)
        x = torch.randn(bs, *shape).contiguous(memory_format=torch.channels_last).requires_grad_(i > 0)
        grad = torch.randn_like(conv(x))
        with FlopCounterMode(display=False) as fc: conv(x).backward(grad)
        best = math.inf
        for _ in range(repeats):
            for _ in range(2): conv(x).backward(grad)
            t = time.perf_counter()
            for _ in range(steps): conv(x).backward(grad)
            best = min(best, (time.perf_counter() - t) / steps)
        rows.append((f"{shape[0]}->{conv.out_channels} {conv.kernel_size[0]}x{conv.kernel_size[1]} at {shape[1]}x{shape[2]}", 1e3 * best, fc.get_total_flops() / best / 1e9))
    return rows, bs / (sum(ms for _, ms, _ in rows) / 1e3)


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


def seed_model():
    "The seed's CNN as the seed wrote it: the simple arch's layers with torch's own dropout."
    from thera_fastai.models import ByteDropout, simple_cnn
    model = simple_cnn()
    for i, m in enumerate(model):
        if isinstance(m, ByteDropout): model[i] = torch.nn.Dropout(m.p)
    return model


def write_jpegs(source, rows, folder):
    "The JPEG files of `source`'s `rows`, written into `folder` as the exercise has them; their paths."
    paths = [Path(folder)/source.names[r] for r in rows]
    for r, path in zip(rows, paths): path.write_bytes(source.read(source.names[r]))
    return paths


def seed_pipeline(paths, labels, bs=32, workers=2, seconds=30):
    """Training images/s of the seed's pipeline on the JPEG files `paths` (labels `labels`): a PIL decode and
    torchvision augmentation per item (flip, the same light affine), `bs` 32, `workers` loader processes, torch's Adam,
    contiguous fp32."""
    from PIL import Image
    from torchvision import transforms as T
    aug = T.Compose([T.RandomHorizontalFlip(), T.RandomAffine(5, translate=(2 / 64, 2 / 64)), T.ToTensor(),
                     T.Normalize([0.5] * 3, [0.25] * 3)])
    class Files(torch.utils.data.Dataset):
        def __len__(self): return len(paths)
        def __getitem__(self, i): return aug(Image.open(paths[i]).convert('RGB')), torch.tensor(float(labels[i]))
    dl = torch.utils.data.DataLoader(Files(), batch_size=bs, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    model = seed_model().train()
    opt, lossf = torch.optim.Adam(model.parameters(), 1e-3), torch.nn.BCEWithLogitsLoss()
    n, t, warm = 0, None, 5
    while t is None or time.perf_counter() - t < seconds:
        for x, y in dl:
            opt.zero_grad(); lossf(model(x).view(-1), y).backward(); opt.step()
            warm -= 1
            if warm == 0: t = time.perf_counter()
            elif warm < 0: n += len(x)
            if t is not None and time.perf_counter() - t >= seconds: break
    return n / (time.perf_counter() - t)


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
    p.add_argument('--precisions', default=None, help='e.g. fp32 (default: fp32, and bf16 where the hardware runs it natively)')
    p.add_argument('--seed-pipeline', action='store_true', help="also time the seed's pipeline beside --arch simple in fp32 on the same images")
    p.add_argument('--profile', action='store_true', help="with --seed-pipeline: profile --arch simple's fp32 fit by operator")
    p.add_argument('--no-ingest', action='store_true', help='skip the decode-into-a-fresh-cache timing')
    p.add_argument('--conv-floor', action='store_true', help="time each arch's convolutions alone (fp32, channels-last) and stop")
    p.add_argument('--batch-sizes', default=None, help="e.g. 32,64,128,256: each arch's bare step at each batch size, and stop")
    a = p.parse_args()
    if a.conv_floor: return print_conv_floor(a.archs.split(','), a.repeats)
    if a.batch_sizes: return print_batch_sweep(a.archs.split(','), _precisions(a), [int(b) for b in a.batch_sizes.split(',')], a.seconds, a.repeats)
    if a.seed_pipeline: compare_seed(a)
    if not a.no_ingest:
        first, again, n = ingest(a.data)
        print(f"ingest: {n} JPEGs decoded into the cache in {first:.1f} s ({n / first:,.0f}/s); reopened in {again:.2f} s")
    precisions = _precisions(a)
    gflops = {p: matmul_gflops(p) for p in precisions}
    print("matmul: " + ', '.join(f"{p} {g:.0f} GFLOP/s" for p, g in gflops.items()) + f" on {torch.get_num_threads()} threads")
    ds = open_dataset(a.data, need_val=True)
    images, val = cached_images(ds.train), cached_images(ds.val)
    print("| arch | precision | train GFLOP/img | bare step img/s (NCHW) | bare step img/s (channels-last) | %% of matmul | "
          "end-to-end fit img/s | %% of bare | predict img/s (TTA %d) | 5 folds x 20k predict |" % a.tta)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for spec in a.archs.split(','):
        for precision in precisions:
            cfg = spec_config(spec)
            scale = 8 if cfg.arch == "resnet18" else 1  # the ResNets are 4-13x slower: fewer rows keep the bench short
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


def spec_config(spec):
    """The config of an `--archs` entry: an arch name, `resnet18:STEM` for a ResNet-18 stem (nopool when none is given),
    then `=WIDTHS` as `--widths` writes them (`airbench=32/128/128`) and `@PX` for a working resolution (`airbench@32`)."""
    from thera_fastai.cli import parse_widths
    spec, _, px = spec.partition('@')
    spec, _, widths = spec.partition('=')
    arch, _, stem = spec.partition(':')
    return FitConfig(arch=arch, stem=(stem or 'nopool') if arch == 'resnet18' else None, resolution=int(px) if px else None,
                     widths=parse_widths(widths or None, arch))


def _precisions(a): return a.precisions.split(',') if a.precisions else ['fp32', 'bf16'] if native_bf16() else ['fp32']


def batch_sweep(model, precision, sizes, seconds=10, repeats=2):
    """Bare-step images/s of `model` in `precision` at each batch size of `sizes`, as rows (bs, NCHW, channels-last):
    best of `repeats`, the sizes interleaved within each repeat so that a load on the machine spreads over all of them."""
    best = {bs: [0.0, 0.0] for bs in sizes}
    for _ in range(repeats):
        for bs in sizes:
            for i, cl in enumerate((False, True)): best[bs][i] = max(best[bs][i], bare_step(model, bs, cl, precision, seconds))
    return [(bs, *best[bs]) for bs in sizes]


def print_batch_sweep(specs, precisions, sizes, seconds, repeats):
    "`batch_sweep` of each arch in each precision, as Markdown."
    print(f"bare step (forward, backward, Adam on one preloaded batch), best of {repeats}, {torch.get_num_threads()} threads\n")
    print("| arch | precision | batch | NCHW img/s | channels-last img/s |\n|---|---|---|---|---|")
    for spec in specs:
        model = tf_model(spec_config(spec))
        for precision in precisions:
            for bs, nchw, cl in batch_sweep(model, precision, sizes, seconds, repeats):
                print(f"| {spec} | {precision} | {bs} | {nchw:.0f} | {cl:.0f} |", flush=True)


def print_conv_floor(specs, repeats):
    "`conv_floor` of each arch at its recipe's batch size, as Markdown, with this machine's fp32 matmul rate."
    print(f"matmul: fp32 {matmul_gflops('fp32'):.0f} GFLOP/s on {torch.get_num_threads()} threads")
    for spec in specs:
        cfg = spec_config(spec)
        rows, floor = conv_floor(tf_model(cfg), cfg.bs, repeats)
        print(f"\n{spec}, batch {cfg.bs}: the convolutions alone train at most {floor:.0f} img/s\n\n"
              "| conv (in->out, kernel, input size) | forward + backward ms a batch | GFLOP/s |\n|---|---|---|")
        for name, ms, gflops in rows: print(f"| {name} | {ms:.1f} | {gflops:.0f} |")


def tf_model(cfg):
    "The untrained model of `cfg`'s arch."
    from thera_fastai.models import create_model
    return create_model(cfg.arch, **cfg.model_kwargs())


def profile_fit(learn, images, labels, cfg, n_train, top=12):
    "Where an end-to-end fit's time goes: torch.profiler's operators by own CPU time, a Markdown table of the `top` ones."
    from torch.profiler import ProfilerActivity, profile
    tr, va = fold_splits(labels, 5, cfg.seed)[0]
    learn.dls = fold_dataloaders(images, labels, tr[:n_train], va[:cfg.bs], bs=cfg.bs)
    with profile(activities=[ProfilerActivity.CPU]) as prof, learn.no_bar(), learn.no_logging():
        t = time.perf_counter(); learn.fit_one_cycle(1, cfg.lr); total = time.perf_counter() - t
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    print(f"profile of a {n_train}-row fit ({total:.1f} s, {n_train / total:.0f} img/s under the profiler):")
    print("| operator | calls | own CPU s | share |\n|---|---|---|---|")
    for e in ops: print(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1e6:.2f} | {100 * e.self_cpu_time_total / 1e6 / total:.0f}% |")


def compare_seed(a):
    """The seed's pipeline and `--arch simple`'s in fp32 on the same `--n-train` rows, interleaved `--repeats` times
    (best of each), with the ratio: the package's data path, channels-last and dropout against the seed's."""
    ds = open_dataset(a.data)
    images = cached_images(ds.train)
    cfg = FitConfig(arch='simple')
    rows = fold_splits(ds.labels, 5, cfg.seed)[0][0][:a.n_train]
    learn = warm_learner(images, ds.labels, cfg, 'fp32')
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(ds.train, rows, tmp)
        runs = [(seed_pipeline(paths, ds.labels[rows], seconds=a.seconds * 3), end_to_end(learn, images, ds.labels, cfg, a.n_train))
                for _ in range(a.repeats)]
    seed, ours = max(r for r, _ in runs), max(o for _, o in runs)
    print(f"seed pipeline (PIL + torchvision per item, batch 32, 2 workers, fp32): {seed:.0f} img/s; "
          f"thera-fit --arch simple --precision fp32 end to end: {ours:.0f} img/s; ratio {ours / seed:.2f} "
          f"({a.n_train} rows, best of {a.repeats}, {torch.get_num_threads()} torch threads)", flush=True)
    if a.profile: profile_fit(learn, images, ds.labels, cfg, a.n_train // 2)


if __name__ == '__main__': main()
