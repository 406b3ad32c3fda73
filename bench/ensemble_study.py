"""Ensemble study: how much do K fold models gain over one, and does a vote beat the mean probability?

Run:  .venv/bin/python bench/ensemble_study.py --data ../shared/data/ml_exercise_therapanacea.zip \
          --members 5 --out runs/ensemble   [--arch simple --epochs 2; default: thera-fit's default recipe]

In a K-fold run every row was seen by K-1 of the K models, so the ensemble cannot be scored on its own
out-of-fold rows. This study holds out fold 0 of the usual 5-fold split (20,000 rows no member ever
sees), trains `--members` fold models on an inner stratified K-fold of the other 80,000 rows exactly as
`thera-fit` would (each with its threshold picked on its own inner out-of-fold rows), and scores on the
held-out rows: each member alone, the hard vote (the majority at the members' thresholds), the soft vote (the
mean probability at the mean of the members' thresholds: what `thera-predict` does) and the mean probability at
0.5, each also cross-fitted on the held-out rows as thera-compare scores a run; then the paired intervals of each
vote against each member, of the soft vote against the hard one, and of the mean probability against the best
member (and against single runs' fold 0: `--against`). `--out` gets the tables as predictors.csv and
differences.csv (`--table OUT` prints them again) and the held-out probabilities. `--budget 10m` gives each member
thera-fit's time budget in place of epochs. Finished members are
reused when the script is rerun with the same arguments, and so are their held-out probabilities while the members'
weights, the rows and the TTA passes are those they were predicted with; `--only 3,4` trains just those members and stops, so
that members can train on several cores or machines at once before one run without it scores them all.
`--audit` also writes cleanlab's flags in thera-audit's columns: `label_issues.csv` on the 80,000 training rows from
the members' inner out-of-fold probabilities (no model of that audit saw the held-out rows, so a fold trained with
`thera-fit --exclude OUT/label_issues.csv` is still scored honestly on them), and `held_out_issues.csv` on the
held-out rows from the members' mean probability (`noise_study.py --issues` scores runs on the rows it leaves), and
`train_probs.csv`, the training rows' inner out-of-fold probabilities as a teacher table (`thera-fit --distill`)."""
import argparse, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings('ignore')
from thera_fastai.cli import parse_duration, parse_widths  # noqa: E402
from thera_fastai.data.cache import cached_images  # noqa: E402
from thera_fastai.data.loaders import fold_splits  # noqa: E402
from thera_fastai.files import atomic_write, file_hash, short_hash  # noqa: E402
from thera_fastai.infer.ensemble import FoldModel, predict_folds, vote  # noqa: E402
from thera_fastai.metrics import error_rates  # noqa: E402
from thera_fastai.analysis.label_audit import ISSUE_COLUMNS, find_label_issues  # noqa: E402
from thera_fastai.analysis.paired import N_BOOT, cross_fitted_hter_of, paired_difference, verdict  # noqa: E402
from thera_fastai.data.source import open_dataset  # noqa: E402
from thera_fastai.config import FitConfig, Runtime  # noqa: E402
from thera_fastai.data.loaders import sample_rows  # noqa: E402
from thera_fastai.train.learner import load_fold_learner  # noqa: E402
from thera_fastai.train.levers import unsmoothed  # noqa: E402
from thera_fastai.runs import WEIGHTS_FILE, fold_done, read_oof  # noqa: E402
from thera_fastai.train.sizing import size_for_budget  # noqa: E402
from thera_fastai.train.training import train_fold  # noqa: E402


TABLES = ('predictors.csv', 'differences.csv')
# FitConfig fields added since members were first identified: left out while unset, so finished members are still
# reused (as `runs.run_id` leaves them out of a run's id)
LATER_FIELDS = ('head', 'train_seed')
PROBS, PROBS_KEY = 'held_out_probs.csv', 'held_out_probs.key'


def member_id(cfg, members):
    "The identity of a study's members: `cfg` and the number of members; a `LATER_FIELDS` field counts only when set."
    identity = {k: v for k, v in cfg.to_dict().items() if not (k in LATER_FIELDS and v is None)}
    return 'ensemble-' + short_hash(identity, members)


def train_members(images, labels, train_rows, cfg, out, members, runtime=None, only=None):
    "Fits (or reuses) one model per inner fold of `train_rows` (those in `only` alone, if given); returns them as `FoldModel`s with their thresholds."
    run_id, runtime = member_id(cfg, members), runtime or Runtime()
    models = []
    for k, (inner_tr, inner_va) in enumerate(fold_splits(labels[train_rows], members, cfg.seed)):
        if only is not None and k not in only: continue
        folder = Path(out)/f"member{k}"
        res = fold_done(folder, run_id)
        if res is None:
            t = time.time()
            folder.mkdir(parents=True, exist_ok=True)
            res = train_fold(images, labels, train_rows[inner_tr], train_rows[inner_va], cfg, runtime.resolved(), folder, run_id, fold=k)
            epochs = cfg.epochs if cfg.budget is None else f"{res['epochs_run']:.3g}"  # a budget's steps, in epochs
            print(f"member {k}: {len(inner_tr):,} rows x {epochs} epochs in {(time.time() - t) / 60:.1f} min", flush=True)
        models.append(FoldModel(k, load_fold_learner(folder), res['threshold']))
    return models


def held_out_probs(models, images, held_out, targs, tta, out):
    """(members, rows) TTA probabilities of the held-out rows, and whether they were reused: read back from
    `held_out_probs.csv` where its key (each member's weights, the rows, the TTA passes) is this study's, else
    predicted and written, the key after the file (scoring 20,000 rows with TTA takes minutes, which a rerun that only
    adds an audit or runs to compare against does not need)."""
    out, columns = Path(out), [f"prob_member{m.fold}" for m in models]
    key = short_hash(*[file_hash(out/f"member{m.fold}"/WEIGHTS_FILE) for m in models], np.asarray(held_out, np.int64).tobytes(), tta)
    if (out/PROBS_KEY).exists() and (out/PROBS_KEY).read_text().strip() == key:
        frame = pd.read_csv(out/PROBS)
        if frame['row'].tolist() == list(held_out) and set(columns) <= set(frame.columns):
            return frame[columns].to_numpy(np.float32).T, True  # float32, as predicted: the same values, the same scores
    (out/PROBS_KEY).unlink(missing_ok=True)  # an old key never vouches for a file being rewritten
    probs, _ = predict_folds(models, images[held_out], tta)
    frame = pd.DataFrame({'row': held_out, 'label': targs, **dict(zip(columns, probs))})
    atomic_write(out/PROBS, lambda tmp: frame.to_csv(tmp, index=False))
    atomic_write(out/PROBS_KEY, lambda tmp: tmp.write_text(key + '\n'))
    return probs, False


def score(probs, models, targs, rows, n_boot=N_BOOT, against=None):
    """Two tables on the held-out rows: each predictor's error rates at its threshold (picked on other rows: a member's
    own inner out-of-fold rows) and cross-fitted (picked on one half of the held-out rows, scored on the other, as
    thera-compare does), and the paired differences that say which gains are more than noise. `against`: {name:
    probabilities of the held-out rows} of single runs (`against_runs`), scored cross-fitted only (their own
    thresholds were picked on these rows) and compared with the mean probability."""
    thresholds = [m.threshold for m in models]
    mean, mean_at = probs.mean(0), float(np.mean(thresholds))
    decided = vote(probs, thresholds, 'hard').astype(float)  # 0/1: compared at 0.5
    groups = rows % 2
    members, hard, soft = [f"member {m.fold}" for m in models], 'hard vote', 'soft vote (thera-predict)'
    named = dict(zip(members, zip(probs, thresholds)))
    named.update({hard: (decided, 0.5), soft: (mean, mean_at), 'mean probability at 0.5': (mean, 0.5)})
    def row(name, p, t):
        rates = error_rates(p, targs, t)
        return dict(predictor=name, threshold=t, hter=rates['hter'], far=rates['far'], frr=rates['frr'],
                    auc=error_rates(mean, targs)['auc'] if p is decided else rates['auc'],  # a vote's: that of the probabilities it votes on
                    hter_cross_fitted=np.nan if p is decided else cross_fitted_hter_of(p, targs, groups))
    predictors = pd.DataFrame([row(name, p, t) for name, (p, t) in named.items()]
                              + [dict(predictor=name, threshold=np.nan, hter=np.nan, far=np.nan, frr=np.nan, auc=error_rates(p, targs)['auc'],
                                      hter_cross_fitted=cross_fitted_hter_of(p, targs, groups)) for name, p in (against or {}).items()])
    pairs = [(member, vote_name) for vote_name in (hard, soft) for member in members] + [(hard, soft)]
    diffs = [dict(baseline=a, candidate=b, thresholds='own', **paired_difference(named[a][0], named[b][0], targs, n_boot=n_boot, thresholds=(named[a][1], named[b][1])))
             for a, b in pairs]
    best = predictors.set_index('predictor').loc[members, 'hter_cross_fitted'].idxmin()
    diffs += [dict(baseline=name, candidate='mean probability', thresholds='cross-fitted', **paired_difference(p, mean, targs, groups, n_boot))
              for name, p in [(best, named[best][0]), *(against or {}).items()]]
    differences = pd.DataFrame(diffs)
    differences['verdict'] = [verdict(d, d['baseline'], d['candidate']) for d in differences.to_dict('records')]
    return predictors, differences


def write_audits(out, models, names, held_out, targs, probs, smoothing):
    """cleanlab's label issues (thera-audit's columns) among the rows the members trained on, each scored by the member
    that held it out (`label_issues.csv`, for `thera-fit --exclude`), and among the held-out rows, scored by the
    members' mean probability (`held_out_issues.csv`, for `noise_study.py --issues`); no member saw the held-out rows.
    `train_probs.csv` holds those training rows' probabilities with the members' label `smoothing` taken out: a
    teacher table (`thera-fit --distill`)."""
    train = pd.concat([pd.read_csv(Path(out)/f"member{m.fold}"/'oof.csv').assign(fold=m.fold) for m in models], ignore_index=True)
    pd.DataFrame(dict(row=train['row'], prob=unsmoothed(train['prob_tta'], smoothing))).to_csv(Path(out)/'train_probs.csv', index=False, float_format='%.6g')
    held = pd.DataFrame(dict(row=held_out, label=targs, prob_tta=probs.mean(0), fold=-1))
    for oof, file, what in ((train, 'label_issues.csv', 'training'), (held, 'held_out_issues.csv', 'held-out')):
        issues = find_label_issues(oof, names)
        issues[ISSUE_COLUMNS].to_csv(Path(out)/file, index=False, float_format='%.6g')
        counts = issues['label'].value_counts()
        print(f"label audit of the {len(oof):,} {what} rows: {len(issues):,} flagged ({counts.get(0, 0):,} labelled 0, "
              f"{counts.get(1, 0):,} labelled 1) -> {Path(out)/file}")


def against_runs(runs, held_out):
    "{run folder name: its fold 0's TTA probabilities of the held-out rows, in their order}; one clear error where a run did not score them all."
    probs = {}
    for run in runs:
        oof = read_oof(run, [0]).set_index('row')
        missing = np.setdiff1d(held_out, oof.index)
        if len(missing): raise SystemExit(f"{run}: its fold 0 did not score {len(missing):,} of the held-out rows (other folds, seed or data)")
        probs[Path(run).name] = oof.loc[held_out, 'prob_tta'].to_numpy()
    return probs


def markdown(predictors, differences):
    "The study's two tables as markdown, from `score`'s frames (or the CSV files it writes)."
    lines = ["| predictor | threshold | HTER | FAR | FRR | AUC | HTER cross-fitted |", "|---|---|---|---|---|---|---|"]
    fmt = lambda v, f='.4f': '-' if pd.isna(v) else format(v, f)
    lines += [f"| {r.predictor} | {fmt(r.threshold, '.3f')} | {fmt(r.hter)} | {fmt(r.far)} | {fmt(r.frr)} | {fmt(r.auc)} | {fmt(r.hter_cross_fitted)} |"
              for r in predictors.itertuples()]
    lines += ["", "| candidate | baseline | thresholds | HTER difference [95%] | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r.candidate} | {r.baseline} | {r.thresholds} | {r.diff:+.4f} [{r.lo:+.4f}, {r.hi:+.4f}] | {r.verdict} |" for r in differences.itertuples()]
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--data', help='the exercise zip or folder (needed unless --table)')
    ap.add_argument('--out', default='runs/ensemble')
    ap.add_argument('--members', type=int, default=5)
    ap.add_argument('--epochs', type=int, default=None, help="default: the arch's recipe")
    ap.add_argument('--budget', default=None, help="each member's time budget, as thera-fit's --budget (10m, 1h), in place of --epochs")
    ap.add_argument('--arch', default=FitConfig.arch)
    ap.add_argument('--widths', default=None, help="as thera-fit's --widths; under a budget, auto (the default) is sized once, on member 0's rows")
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: all cores)')
    ap.add_argument('--tta', type=int, default=4)
    ap.add_argument('--sample', type=int, default=None, help='stratified subset of N images (a smaller, quicker study)')
    ap.add_argument('--only', default=None, help='comma-separated members to train, then stop without scoring')
    ap.add_argument('--against', default=None, help="comma-separated thera-fit runs of the same data and seed whose fold 0 the mean probability is compared with")
    ap.add_argument('--n-boot', type=int, default=N_BOOT, help='resamples of each paired interval')
    ap.add_argument('--audit', action='store_true', help="also write label_issues.csv and held_out_issues.csv: cleanlab's flags on the training rows (the members' inner out-of-fold probabilities) and on the held-out rows (their mean); train_probs.csv: the former as a teacher table")
    ap.add_argument('--table', default=None, help="print the tables of a finished study's --out folder from its CSV files and stop")
    a = ap.parse_args()
    if a.table: print(markdown(*(pd.read_csv(Path(a.table)/f) for f in TABLES)), end=''); return
    if not a.data: ap.error('--data is required')
    runtime = Runtime(threads=a.threads); runtime.apply()
    ds = open_dataset(a.data)
    images, labels = cached_images(ds.train), np.asarray(ds.labels)
    cfg = FitConfig(arch=a.arch, folds=a.members, epochs=a.epochs, budget=parse_duration(a.budget), tta=a.tta, sample=a.sample,
                    **({} if a.widths is None else dict(widths=parse_widths(a.widths, a.arch))))
    rows = sample_rows(labels, a.sample, cfg.seed)
    train_rows, held_out = (rows[i] for i in fold_splits(labels[rows], 5, cfg.seed)[0])
    only = None if a.only is None else {int(k) for k in a.only.split(',')}
    inner_tr, inner_va = fold_splits(labels[train_rows], a.members, cfg.seed)[0]
    cfg = size_for_budget(cfg, a.out, images, labels, train_rows[inner_tr], train_rows[inner_va], runtime.resolved())
    models = train_members(images, labels, train_rows, cfg, a.out, a.members, runtime, only)
    if only is not None: return
    targs, out = labels[held_out], Path(a.out)
    probs, reused = held_out_probs(models, images, held_out, targs, a.tta, out)
    steps = f"{cfg.epochs} epochs" if cfg.budget is None else f"a {cfg.budget / 60:g}-minute budget"
    print(f"\n{a.members} members, {steps} each on {len(train_rows) * (a.members - 1) // a.members:,} rows; "
          f"scored on {len(held_out):,} held-out rows (TTA {a.tta}{'; their probabilities reused from ' + PROBS if reused else ''})\n")
    if a.audit: write_audits(out, models, ds.train.names, held_out, targs, probs, cfg.label_smoothing)
    against = against_runs(a.against.split(','), held_out) if a.against else None
    tables = score(probs, models, targs, held_out, a.n_boot, against)
    for frame, name in zip(tables, TABLES): frame.to_csv(out/name, index=False)
    print(markdown(*tables), end='')


if __name__ == '__main__': main()
