"""How the budget's probe times a TTA pass: in each of `--processes` fresh processes (as each `thera-fit` is), the fold's
learner is built as a budgeted fit builds it and the probe (`budget.measure_speed`) times it, with every `learn.tta`
call it makes over its one validation batch timed here too. The probe takes the best of its four calls; the first
call alone is what a probe that timed one call (0.25.0 and before) counted.

Run:  .venv/bin/python bench/probe_tta.py --data ml_exercise_therapanacea.zip --widths 48/192/192 --processes 6 \\
          --threads 2 --csv docs/probe_tta.csv
      .venv/bin/python bench/probe_tta.py --table docs/probe_tta.csv   # the doc's table, from the CSV"""
import argparse, json, subprocess, sys, time

import numpy as np
import pandas as pd

COLUMNS = ['process', 'widths', 'batch', 'call_s', 'eval_img_ms', 'aug_img_ms', 'first_call_aug_img_ms']


def one_process(args):
    "This process's row: each TTA call's seconds over one batch, the probe's estimates, and the first call's reading."
    import thera_fastai, torch
    from fastai.learner import Learner
    from thera_fastai.config import FitConfig, Runtime
    from thera_fastai.data.cache import cached_images
    from thera_fastai.data.folds import fold_train_rows
    from thera_fastai.data.loaders import image_stats
    from thera_fastai.data.source import open_dataset
    from thera_fastai.train.budget import _one_batch, measure_speed
    from thera_fastai.train.learner import config_dataloaders, thera_learner
    runtime = Runtime(threads=args.threads)
    rt = runtime.resolved(); runtime.apply()
    ds = open_dataset(args.data)
    images = cached_images(ds.train, None, n_threads=args.threads)
    cfg = FitConfig(budget=600, widths=tuple(int(w) for w in args.widths.split('/')), **({'bs': args.bs} if args.bs else {}))
    train, valid = fold_train_rows(np.arange(len(ds.labels)), ds.labels, cfg.folds, cfg.seed, 0, np.zeros(0, np.int64))
    dls = config_dataloaders(cfg, images, ds.labels, train, valid, image_stats(images, train), rt['device'])
    learn = thera_learner(dls, cfg, '.', ds.labels[train], rt)
    real, calls = Learner.tta, []
    def timed(self, *a, **k):
        t0 = time.perf_counter()
        try: return real(self, *a, **k)
        finally: calls.append(time.perf_counter() - t0)
    Learner.tta = timed
    try: speed = measure_speed(learn)
    finally: Learner.tta = real
    n = _one_batch(dls.valid).n
    first = max(calls[0] / n - speed['eval_img_s'], speed['eval_img_s'])  # one call's reading, as the probe took it before 0.26.0
    return dict(widths=args.widths, batch=n, call_s=' '.join(f"{c:.4f}" for c in calls), eval_img_ms=speed['eval_img_s'] * 1e3,
                aug_img_ms=speed['aug_img_s'] * 1e3, first_call_aug_img_ms=first * 1e3, version=thera_fastai.__version__, torch=torch.__version__)


def markdown(table):
    "The doc's table, made from the raw one."
    lines = ['| process | widths | the probe\'s TTA calls over one batch, s each | plain pass ms an image | TTA pass ms an image: the probe | its first call alone |',
             '|---|---|---|---|---|---|']
    for r in table.itertuples():
        lines.append(f"| {r.process} | {r.widths} | {r.call_s} | {r.eval_img_ms:.3f} | {r.aug_img_ms:.3f} | {r.first_call_aug_img_ms:.3f} |")
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data'); ap.add_argument('--widths', default='48/192/192')
    ap.add_argument('--processes', type=int, default=6)
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--bs', type=int, help="batch size (default: the fit's)")
    ap.add_argument('--one', action='store_true', help='(internal) measure in this process and print one JSON row')
    ap.add_argument('--csv', help='CSV to write the raw table to')
    ap.add_argument('--table', help='a CSV this script wrote: print its Markdown table')
    args = ap.parse_args()
    if args.table: print(markdown(pd.read_csv(args.table)), end=''); return
    if not args.data: ap.error('--data is needed to run')
    if args.one: print(json.dumps(one_process(args))); return
    rows = []
    for k in range(args.processes):
        out = subprocess.run([sys.executable, __file__, '--one', '--data', args.data, '--widths', args.widths, '--threads', str(args.threads),
                              *(['--bs', str(args.bs)] if args.bs else [])],
                             capture_output=True, text=True, check=True).stdout
        rows.append(dict(process=k, **json.loads(out.strip().splitlines()[-1])))
    table = pd.DataFrame(rows)[COLUMNS + ['version', 'torch']]
    if args.csv: table.to_csv(args.csv, index=False)
    print(markdown(table), end='')


if __name__ == '__main__': main()
