"""Candidates at one time budget (airbench's training method piece by piece by default; Muon, EMA or pseudo-labels
through `--candidates`): each trains fold 0 of 5 under `budget` (the fit measures its own speed and sets its steps),
or for `--epochs N`, then every candidate is compared with the first, the current default, by the HTER difference on
fold 0's held-out rows and its paired bootstrap interval.

Run:  .venv/bin/python bench/method_study.py --data ../shared/data/ml_exercise_therapanacea.zip --budget 30m \
          --out runs/method30 [--only airbench-sgd] [--threads 1]
`--only` trains just those candidates (several processes or machines can share `--out`); a run with every
candidate trained writes `method_study.csv` (the raw table: `thera-compare`'s columns and the paired difference)
and `method_study.md`, generated from the CSV (`--table CSV` regenerates it); `--from-compare DIR` makes both from runs
trained apart and compared by `thera-compare ... --out DIR`."""
import argparse, sys, warnings
from pathlib import Path

warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).parent))
import pandas as pd  # noqa: E402

import thera_fastai as tf  # noqa: E402
from thera_fastai.cli import parse_duration  # noqa: E402
from thera_fastai.analysis.comparison import write_comparison  # noqa: E402
from thera_fastai.runs import fold_done, fold_dir, open_run  # noqa: E402
from recipe_study import parse_variants  # noqa: E402

CANDIDATES = ('adam:method="adam";airbench-sgd:method="airbench";'
              'airbench-sgd-no-lookahead:method="airbench",hyp={"lookahead":False};'
              'airbench-sgd-no-whiten:method="airbench",hyp={"whiten":False};'
              'airbench-sgd-random-flip:method="airbench",hyp={"alt_flip":False}')


def trained(run):
    "Whether fold 0 of `run` is finished."
    return (Path(run)/'config.json').exists() and fold_done(fold_dir(run, 0), open_run(run)['run_id']) is not None


def study_table(compare_csv, paired_csv):
    "The raw study table: one row per candidate, its cost and HTER, and its difference from the first with the interval."
    frame = pd.read_csv(compare_csv)
    frame['run'] = frame['run'].map(lambda r: Path(r).name)
    paired = pd.read_csv(paired_csv)
    return frame.merge(paired[[c for c in PAIRED_COLUMNS if c in paired]], on='run', how='left')


PAIRED_COLUMNS = ('run', 'diff', 'lo', 'hi', 'verdict', 'auc_diff', 'auc_lo', 'auc_hi', 'ranking')  # the AUC's: thera-compare 0.25.0 on


def interval_text(value, lo, hi):
    "A difference and its interval as the study tables print them; '-' for the baseline's empty cells."
    return '-' if pd.isna(value) else f"{value:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def study_markdown(table):
    "The study table as Markdown, from its CSV; with the AUC difference and its verdict where the CSV has them."
    ranked = 'auc_diff' in table
    lines = ["| candidate | recipe | images seen | minutes | HTER cross-fitted | AUC | difference from the first [95%] | verdict |"
             + (" AUC difference [95%] | ranking |" if ranked else ''), "|---|---|---|---|---|---|---|---|" + ('---|---|' if ranked else '')]
    for r in table.itertuples():
        lines.append(f"| {r.run} | {r.recipe} | {r.images_seen:,} | {r.minutes:.1f} | {r.hter_cross:.4f} | {r.auc:.4f} | "
                     f"{interval_text(r.diff, r.lo, r.hi)} | {'baseline' if pd.isna(r.verdict) else r.verdict} |"
                     + (f" {interval_text(r.auc_diff, r.auc_lo, r.auc_hi)} | {'baseline' if pd.isna(r.ranking) else r.ranking} |" if ranked else ''))
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--data')
    ap.add_argument('--out', default='runs/method')
    ap.add_argument('--budget', default='30m', help='time per candidate fold (e.g. 10m, 30m)')
    ap.add_argument('--epochs', type=int, default=None, help='train each candidate for this many epochs instead of a budget')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--sample', type=int, default=None)
    ap.add_argument('--candidates', default=CANDIDATES)
    ap.add_argument('--only', default=None, help='train just these candidates (comma-separated names)')
    ap.add_argument('--table', default=None, help='regenerate method_study.md from this method_study.csv and stop')
    ap.add_argument('--from-compare', default=None, help="write method_study.csv and .md from a thera-compare folder's compare.csv and paired.csv and stop")
    a = ap.parse_args()
    if a.table: print(study_markdown(pd.read_csv(a.table)), end=''); return
    if a.from_compare: write_study(Path(a.from_compare)); return
    out, budget = Path(a.out), None if a.epochs else parse_duration(a.budget)
    runs = []
    for name, over in parse_variants(a.candidates):
        run = out/name
        runs.append(run)
        if (a.only and name not in a.only.split(',')) or trained(run): continue
        tf.fit(a.data, run, fold=0, folds=5, budget=budget, epochs=a.epochs, sample=a.sample, threads=a.threads, log=lambda *_: None, **over)
        print(f"{name}: trained", flush=True)
    if not all(map(trained, runs)): print("not every candidate is trained yet: no table"); return
    write_comparison(runs, out, fold=0, n=0)
    write_study(out)


def write_study(out):
    "method_study.csv and method_study.md in `out`, from the compare.csv and paired.csv that thera-compare wrote there."
    table = study_table(out/'compare.csv', out/'paired.csv')
    table.to_csv(out/'method_study.csv', index=False)
    (out/'method_study.md').write_text(study_markdown(table))
    print(study_markdown(table))


if __name__ == '__main__': main()
