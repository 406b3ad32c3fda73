"""Training around bad labels, scored two ways on the same held-out rows: all of them, and those an audit does not flag.

Run:  .venv/bin/python bench/noise_study.py --issues runs/simple/audit/label_issues.csv --fold 0 \
          runs/simple runs/simple-exclude runs/simple-bootstrap [--out noise_study.csv]
Each run's finished folds are pooled; decisions come from the cross-fitted threshold (picked on the other
folds' rows, or the other half of the rows with one fold), never on the rows scored. `--issues` flags held-out
rows: an audit whose models never trained on them (`bench/ensemble_study.py --audit`'s held_out_issues.csv) says
how much of each run's error sits on labels that models outside the run doubt. `--out` writes the raw table as
CSV; `--table CSV` prints it again."""
import argparse, warnings

warnings.filterwarnings('ignore')
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from thera_fastai.analysis.comparison import recipe_text  # noqa: E402
from thera_fastai.metrics import error_rates  # noqa: E402
from thera_fastai.analysis.report import cross_fitted_decisions, run_summary  # noqa: E402


def scores(run, flagged, fold=None):
    """One row of the table for run folder `run` (one `fold`, or all): its HTER on all held-out rows, its HTER, FAR and
    FRR on those not flagged and its FAR and FRR on the flagged ones (the same decisions), and its AUC."""
    s, oof = run_summary(run)
    if fold is not None: oof = oof[oof['fold'] == fold].reset_index(drop=True)
    flag = oof['row'].isin(flagged).to_numpy()
    decided, t = cross_fitted_decisions(oof).astype(float), oof['label'].to_numpy()
    every, left, doubted = (error_rates(decided[m], t[m], 0.5) for m in (np.ones(len(oof), bool), ~flag, flag))
    return dict(run=str(run), recipe=recipe_text(s['config']), rows=len(oof), hter_all=every['hter'],
                rows_not_flagged=int((~flag).sum()), hter_not_flagged=left['hter'], far_not_flagged=left['far'], frr_not_flagged=left['frr'],
                flagged_label0=int((flag & (t == 0)).sum()), flagged_label1=int((flag & (t == 1)).sum()),
                far_flagged=doubted['far'], frr_flagged=doubted['frr'],
                auc=error_rates(oof['prob_tta'].to_numpy(), t)['auc'])


def markdown(table):
    "The study's table as markdown, from `scores`' rows (or the CSV file `--out` writes)."
    lines = ["| run | recipe | held-out rows | HTER, all rows | rows not flagged | their HTER (FAR / FRR) | "
             "flagged (label 0 / 1) | FAR / FRR on the flagged rows | AUC |", "|---|---|---|---|---|---|---|---|---|"]
    rate = lambda v: '-' if pd.isna(v) else f"{v:.3f}"  # no flagged row of that label
    lines += [f"| {r.run} | {r.recipe} | {r.rows:,} | {r.hter_all:.4f} | {r.rows_not_flagged:,} | "
              f"{r.hter_not_flagged:.4f} ({r.far_not_flagged:.4f} / {r.frr_not_flagged:.4f}) | "
              f"{r.flagged_label0:,} / {r.flagged_label1:,} | {rate(r.far_flagged)} / {rate(r.frr_flagged)} | {r.auc:.4f} |"
              for r in table.itertuples()]
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--issues', help="a label_issues.csv (thera-audit's, or ensemble_study.py --audit's held_out_issues.csv)")
    ap.add_argument('--fold', type=int, default=None, help='score this fold only (default: every finished fold, pooled)')
    ap.add_argument('--out', default=None, help='write the raw table here as CSV')
    ap.add_argument('--table', default=None, help='print the table of a CSV written by --out and stop')
    ap.add_argument('runs', nargs='*')
    a = ap.parse_args()
    if a.table: print(markdown(pd.read_csv(a.table)), end=''); return
    if not a.issues or not a.runs: ap.error('--issues and at least one run are required')
    flagged = set(pd.read_csv(a.issues)['row'])
    table = pd.DataFrame([scores(run, flagged, a.fold) for run in a.runs])
    if a.out: table.to_csv(a.out, index=False)
    print(markdown(table), end='')


if __name__ == '__main__': main()
