"""Training around bad labels, scored two ways on the same held-out rows: all of them, and those the audit does not flag.

Run:  .venv/bin/python bench/noise_study.py --issues runs/simple/audit/label_issues.csv --fold 0 \
          runs/simple runs/simple-exclude runs/simple-bootstrap
Each run's finished folds are pooled; decisions come from the cross-fitted threshold (picked on the other
folds' rows, or the other half of the rows with one fold), never on the rows scored."""
import argparse, warnings

warnings.filterwarnings('ignore')
import pandas as pd  # noqa: E402

from thera_fastai.analysis.comparison import recipe_text  # noqa: E402
from thera_fastai.metrics import error_rates  # noqa: E402
from thera_fastai.analysis.report import cross_fitted_hter, run_summary  # noqa: E402


def scores(run, flagged, fold=None):
    "(recipe, rows, HTER on all held-out rows, on the rows not flagged, AUC) of run folder `run` (one `fold`, or all)."
    s, oof = run_summary(run)
    if fold is not None: oof = oof[oof['fold'] == fold].reset_index(drop=True)
    keep = ~oof['row'].isin(flagged).to_numpy()
    return (recipe_text(s['config']), len(oof), cross_fitted_hter(oof), cross_fitted_hter(oof, keep),
            error_rates(oof['prob_tta'].to_numpy(), oof['label'].to_numpy())['auc'], int(keep.sum()))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--issues', required=True, help="thera-audit's label_issues.csv")
    ap.add_argument('--fold', type=int, default=None, help='score this fold only (default: every finished fold, pooled)')
    ap.add_argument('runs', nargs='+')
    a = ap.parse_args()
    flagged = set(pd.read_csv(a.issues)['row'])
    print("| run | recipe | held-out rows | HTER, all rows | rows not flagged | HTER, rows not flagged | AUC |\n|---|---|---|---|---|---|---|")
    for run in a.runs:
        recipe, n, all_rows, clean, auc, n_clean = scores(run, flagged, a.fold)
        print(f"| {run} | {recipe} | {n:,} | {all_rows:.4f} | {n_clean:,} | {clean:.4f} | {auc:.4f} |")


if __name__ == '__main__': main()
