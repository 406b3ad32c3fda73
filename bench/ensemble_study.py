"""Ensemble study: how much do K fold models gain over one, and does a vote beat the mean probability?

Run:  .venv/bin/python bench/ensemble_study.py --data ../shared/data/ml_exercise_therapanacea.zip \
          --members 5 --out runs/ensemble   [--arch simple --epochs 2; default: thera-fit's default recipe]

In a K-fold run every row was seen by K-1 of the K models, so the ensemble cannot be scored on its own
out-of-fold rows. This study holds out fold 0 of the usual 5-fold split (20,000 rows no member ever
sees), trains `--members` fold models on an inner stratified K-fold of the other 80,000 rows exactly as
`thera-fit` would (each with its threshold picked on its own inner out-of-fold rows), and scores on the
held-out rows: each member alone, the majority vote at the members' thresholds (what `thera-predict`
does), and the mean probability at 0.5 and at the mean of the members' thresholds. Finished members are
reused when the script is rerun with the same arguments; `--only 3,4` trains just those members and stops, so
that members can train on several cores or machines at once before one run without it scores them all."""
import argparse, time, warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings('ignore')
from thera_fastai.data.cache import cached_images  # noqa: E402
from thera_fastai.data.loaders import fold_splits  # noqa: E402
from thera_fastai.files import short_hash  # noqa: E402
from thera_fastai.infer.ensemble import FoldModel, predict_folds, vote  # noqa: E402
from thera_fastai.metrics import error_rates  # noqa: E402
from thera_fastai.data.source import open_dataset  # noqa: E402
from thera_fastai.config import FitConfig, Runtime  # noqa: E402
from thera_fastai.data.loaders import sample_rows  # noqa: E402
from thera_fastai.train.learner import load_fold_learner  # noqa: E402
from thera_fastai.runs import fold_done  # noqa: E402
from thera_fastai.train.training import train_fold  # noqa: E402


def train_members(images, labels, train_rows, cfg, out, members, runtime=None, only=None):
    "Fits (or reuses) one model per inner fold of `train_rows` (those in `only` alone, if given); returns them as `FoldModel`s with their thresholds."
    run_id, runtime = 'ensemble-' + short_hash(cfg.to_dict(), members), runtime or Runtime()
    models = []
    for k, (inner_tr, inner_va) in enumerate(fold_splits(labels[train_rows], members, cfg.seed)):
        if only is not None and k not in only: continue
        folder = Path(out)/f"member{k}"
        res = fold_done(folder, run_id)
        if res is None:
            t = time.time()
            folder.mkdir(parents=True, exist_ok=True)
            res = train_fold(images, labels, train_rows[inner_tr], train_rows[inner_va], cfg, runtime.resolved(), folder, run_id, fold=k)
            print(f"member {k}: {len(inner_tr):,} rows x {cfg.epochs} epochs in {(time.time() - t) / 60:.1f} min", flush=True)
        models.append(FoldModel(k, load_fold_learner(folder), res['threshold']))
    return models


def row(name, m):
    return f"| {name} | {m['hter']:.4f} | {m['far']:.4f} | {m['frr']:.4f} | {m['auc']:.4f} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--data', required=True)
    ap.add_argument('--out', default='runs/ensemble')
    ap.add_argument('--members', type=int, default=5)
    ap.add_argument('--epochs', type=int, default=None, help="default: the arch's recipe")
    ap.add_argument('--arch', default=FitConfig.arch)
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: all cores)')
    ap.add_argument('--tta', type=int, default=4)
    ap.add_argument('--sample', type=int, default=None, help='stratified subset of N images (a smaller, quicker study)')
    ap.add_argument('--only', default=None, help='comma-separated members to train, then stop without scoring')
    a = ap.parse_args()
    runtime = Runtime(threads=a.threads); runtime.apply()
    ds = open_dataset(a.data)
    images, labels = cached_images(ds.train), np.asarray(ds.labels)
    cfg = FitConfig(arch=a.arch, folds=a.members, epochs=a.epochs, tta=a.tta, sample=a.sample)
    rows = sample_rows(labels, a.sample, cfg.seed)
    train_rows, held_out = (rows[i] for i in fold_splits(labels[rows], 5, cfg.seed)[0])
    only = None if a.only is None else {int(k) for k in a.only.split(',')}
    models = train_members(images, labels, train_rows, cfg, a.out, a.members, runtime, only)
    if only is not None: return
    probs, votes = predict_folds(models, images[held_out], a.tta)
    targs, thresholds = labels[held_out], [m.threshold for m in models]
    print(f"\n{a.members} members, {cfg.epochs} epochs each on {len(train_rows) * (a.members - 1) // a.members:,} rows; "
          f"scored on {len(held_out):,} held-out rows (TTA {a.tta})\n")
    print("| predictor | HTER | FAR | FRR | AUC |\n|---|---|---|---|---|")
    singles = [error_rates(p, targs, m.threshold) for p, m in zip(probs, models)]
    for k, s in enumerate(singles): print(row(f"member {k} at its threshold {models[k].threshold:.3f}", s))
    print(row("members, mean of the above", {c: np.mean([s[c] for s in singles]) for c in ('hter', 'far', 'frr', 'auc')}))
    final = vote(probs, thresholds)
    print(row("majority vote at the members' thresholds (thera-predict)",
              error_rates(final.astype(float), targs) | dict(auc=error_rates(probs.mean(0), targs)['auc'])))
    print(row("mean probability at 0.5", error_rates(probs.mean(0), targs)))
    print(row(f"mean probability at the mean threshold {np.mean(thresholds):.3f}", error_rates(probs.mean(0), targs, np.mean(thresholds))))


if __name__ == '__main__': main()
