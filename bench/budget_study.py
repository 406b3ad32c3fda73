"""Architectures and levers at one time budget: each candidate trains fold 0 with its epochs set to fit the budget.

Run:  .venv/bin/python bench/budget_study.py --data ../shared/data/ml_exercise_therapanacea.zip \
          --budget 30 --out runs/budget   [--sample 20000 --budget 4 for a quick look]
Each candidate's training speed is first measured on 12 batches of the real pipeline (augmentation,
levers and all), then epochs = budget / epoch time, rounded to the nearest (at least 1), so a run's
training time is within half an epoch of the budget; the table shows the minutes each took. Candidates are `name:k=v,...` over
`FitConfig` fields; `distill=@name` points at another candidate's run folder as the teacher (train it
first). Every HTER is measured on fold 0's held-out rows; the table and plot come from `thera-compare`."""
import argparse, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore')
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fastai.callback.core import Callback, CancelFitException  # noqa: E402

import thera_fastai as tf  # noqa: E402
from thera_fastai.analysis.comparison import comparison_markdown, write_comparison  # noqa: E402
from thera_fastai.data.loaders import fold_dataloaders, image_stats  # noqa: E402
from thera_fastai.train.learner import thera_learner  # noqa: E402
from thera_fastai.train.levers import ProgressiveResize  # noqa: E402
from thera_fastai.data.rows import fold_rows  # noqa: E402
from recipe_study import parse_variants  # noqa: E402

CANDIDATES = ('simple:arch="simple";simple-resize32:arch="simple",resize_from=32;simple-ema:arch="simple",ema=0.99;'
              'simple-distill:arch="simple",distill="@simple";airbench:arch="airbench",label_smoothing=0.2;'
              'airbench-ema:arch="airbench",label_smoothing=0.2,ema=0.99;'
              'airbench-distill:arch="airbench",label_smoothing=0.2,distill="@airbench";'
              'resnet18-default-stem:arch="resnet18",stem="default";resnet10t:arch="resnet10t",stem="default";'
              'regnetx_002-x2:arch="regnetx_002";mobilenetv3_small_100-x2:arch="mobilenetv3_small_100";'
              'ghostnet_100-x2:arch="ghostnet_100";convnext_atto-x2:arch="convnext_atto"')


class _StopAfter(Callback):
    "Times batches `skip`..`skip + n` of a fit, then stops it."
    def __init__(self, n=12, skip=2): self.n, self.skip, self.times = n, skip, []
    def after_batch(self):
        self.times.append(time.perf_counter())
        if len(self.times) > self.n + self.skip: raise CancelFitException


def images_per_second(data, cfg, threads, compile=False, precision='auto'):
    "Training images per second of `cfg` through the package's own DataLoaders and learner on this machine, in `precision`."
    runtime = tf.Runtime(threads=threads, precision=precision)
    runtime.apply()
    images, labels, tr, va = fold_rows(data, cfg, 0)
    dls = fold_dataloaders(images, labels, tr, va[:256], bs=cfg.bs, stats=image_stats(images, tr), **cfg.aug_kwargs())
    learn = thera_learner(dls, cfg, '/tmp', labels[tr], runtime=runtime.resolved())
    if compile: learn.model = torch.compile(learn.model)  # compiles on the first batch, which the timing skips
    rates = []
    for size in ([cfg.resize_from, None] if cfg.resize_from else [None]):
        stop = _StopAfter()
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, cfg.lr, cbs=[stop] + ([ProgressiveResize(size, 1)] if size else []))
        rates.append(cfg.bs * stop.n / (stop.times[-1] - stop.times[stop.skip]))
    return len(tr), 1 / np.mean([1 / r for r in rates])  # half the epochs at each size


def candidate_configs(text, out, sample=None):
    "[(name, FitConfig)] of the candidates in `text`, fold 0 of 5; `distill=@name` becomes the run folder `out/name`."
    configs = []
    for name, over in parse_variants(text):
        if isinstance(over.get('distill'), str) and over['distill'].startswith('@'): over['distill'] = str(Path(out)/over['distill'][1:])
        configs.append((name, tf.FitConfig(**{**dict(folds=5, sample=sample), **over})))
    return configs


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--data', required=True)
    ap.add_argument('--out', default='runs/budget')
    ap.add_argument('--sample', type=int, default=None, help='stratified subset of N images (default: all)')
    ap.add_argument('--budget', type=float, default=30, help='training minutes per candidate')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--target', type=float, default=0.08, help='also report the minutes to first reach this HTER')
    ap.add_argument('--candidates', default=CANDIDATES)
    a = ap.parse_args()
    out, done = Path(a.out), []
    print(f"fold 0 of 5 on {f'a stratified sample of {a.sample}' if a.sample else 'all'} images, {a.budget:g} training minutes each, "
          f"{a.threads or 'all'} threads, thera_fastai {tf.__version__ if hasattr(tf, '__version__') else ''}\n", flush=True)
    for name, cfg in candidate_configs(a.candidates, out, a.sample):
        n_train, rate = images_per_second(a.data, cfg, a.threads)
        epochs = max(1, round(a.budget * 60 * rate / n_train))  # nearest: within half an epoch of the budget
        t = time.time()
        tf.fit(a.data, out/name, fold=0, threads=a.threads, log=lambda *_: None, **{**cfg.to_dict(), 'epochs': epochs})
        print(f"{name}: {rate:.0f} img/s, {epochs} epochs, {(time.time() - t) / 60:.1f} min wall", flush=True)
        done.append(out/name)
    frame = write_comparison(done, out, a.target, fold=0)  # the study trains fold 0; a run folder may have more since
    print('\n' + comparison_markdown(frame))


if __name__ == '__main__': main()
