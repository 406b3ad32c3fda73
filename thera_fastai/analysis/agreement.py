"""Where runs agree on their mistakes: on the out-of-fold rows they all scored, each run's errors at its cross-fitted
threshold, how many of them the others make too, the blend of their probabilities, and the rows every run gets wrong
(a label the runs all doubt, or a case none of them learned). Cheap: it reads the runs' oof.csv files, trains nothing."""
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import COMMAND_DEFAULTS as _C, SHORT_NAMES
from ..errors import TheraError
from ..files import atomic_write
from .report import cross_fitted_decisions, cv_summary, run_summary

__all__ = ['run_names', 'shared_oof', 'error_agreement', 'agreement_markdown', 'write_shared_errors', 'shared_error_grids']


def run_names(runs):
    "Short names for run folders: the folder names, or the paths where two folder names clash."
    names = [Path(r).name for r in runs]
    return names if len(set(names)) == len(names) and 'blend' not in names else [str(r) for r in runs]


def shared_oof(runs, summaries=None):
    """The out-of-fold rows every run scored: (frame of row, label, fold (the first run's) and `prob_<run>`, each run's
    TTA probability; the run names). Every probability comes from a fold model that never trained on that row, so a
    blend of them is scored as honestly as one run. Refuses runs whose labels differ (other data). `summaries`: the
    runs' `run_summary` results, where already read."""
    names, joint = run_names(runs), None
    for run, name, (_, oof) in zip(runs, names, summaries or map(run_summary, runs)):
        if oof is None: raise TheraError("holds no finished fold (fold*/fold.json): nothing to compare", run)
        oof = oof.set_index('row')
        if joint is None: joint = oof[['label', 'fold']].copy()
        common = joint.index.intersection(oof.index)
        if (joint.loc[common, 'label'] != oof.loc[common, 'label']).any():
            raise TheraError(f"has other labels than {names[0]} on the same rows: runs of other data cannot be compared", run)
        joint = joint.loc[common]
        joint[f'prob_{name}'] = oof.loc[common, 'prob_tta']
    if not len(joint): raise TheraError("the runs share no out-of-fold row: train them on the same data, folds and seed")
    return joint.sort_index().reset_index(), names


def _scored(joint, col):
    "The shared rows with `col` as the probability, in the shape the report's cross-fitting reads."
    return joint[['row', 'label', 'fold']].assign(prob_tta=joint[col].to_numpy())


def error_agreement(runs, summaries=None):
    """How the runs' mistakes overlap on their shared out-of-fold rows. Returns a dict: `table` (one row per run:
    HTER at its cross-fitted threshold on the shared rows, errors, the share of them the best run also makes, the
    share every run makes; then the blend, the mean probability of all runs, scored the same way), `wrong_by` (rows
    wrong in exactly k of the runs, per label) and `rows` (the shared rows with each run's probability and error,
    `n_wrong` and the blend's probability `prob_blend`). `summaries`: the runs' `run_summary` results, where already read."""
    if len(runs) < 2: raise TheraError("the error agreement needs at least two runs")
    joint, names = shared_oof(runs, summaries)
    cols = [f'prob_{n}' for n in names]
    joint['prob_blend'] = joint[cols].mean(axis=1)
    labels = joint['label'].to_numpy()
    wrong = pd.DataFrame({n: cross_fitted_decisions(_scored(joint, f'prob_{n}')) != (labels == 1) for n in names + ['blend']})
    joint['n_wrong'] = wrong[names].sum(axis=1).to_numpy()
    scores = {n: cv_summary(_scored(joint, f'prob_{n}')) for n in names + ['blend']}
    best = min(names, key=lambda n: scores[n]['cross_fitted']['hter'])
    every = joint['n_wrong'].to_numpy() == len(names)
    rows = [dict(run=n, hter_cross=s['cross_fitted']['hter'], hter_05=s['at_05']['hter'], auc=s['at_05']['auc'],
                 errors=int(wrong[n].sum()), shared_with_best=(wrong[n] & wrong[best]).sum() / max(wrong[n].sum(), 1),
                 made_by_every_run=(wrong[n] & every).sum() / max(wrong[n].sum(), 1)) for n, s in scores.items()]
    wrong_by = pd.DataFrame({f'label {c}': np.bincount(joint.loc[labels == c, 'n_wrong'], minlength=len(names) + 1) for c in (0, 1)})
    wrong_by.index.name = 'runs wrong'
    for n in names: joint[f'wrong_{n}'] = wrong[n].to_numpy()
    return dict(table=pd.DataFrame(rows), wrong_by=wrong_by, rows=joint, best=best, names=names)


def agreement_markdown(agreement):
    "The error agreement as a Markdown section: the per-run table with the blend, and the rows wrong by k runs."
    t, wb, rows = agreement['table'], agreement['wrong_by'], agreement['rows']
    n = len(agreement['names'])
    lines = ["## Errors in common", "",
             f"{len(rows):,} out-of-fold rows scored by all {n} runs (each by a model that never trained on it); errors at each "
             f"run's cross-fitted threshold. `blend`: the mean probability of the {n} runs, scored the same way.", "",
             f"| run | HTER cross-fitted | HTER at 0.5 | AUC | errors | also made by {agreement['best']} | made by every run |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.run} | {r.hter_cross:.4f} | {r.hter_05:.4f} | {r.auc:.4f} | {r.errors:,} | {r.shared_with_best:.0%} | "
              f"{r.made_by_every_run:.0%} |" for r in t.itertuples()]
    lines += ["", "Rows by how many runs get them wrong:", "", "| runs wrong | " + " | ".join(wb.columns) + " |",
              "|---|" + "---|" * len(wb.columns)]
    lines += [f"| {k} | " + " | ".join(f"{v:,}" for v in wb.loc[k]) + " |" for k in wb.index]
    return '\n'.join(lines) + '\n'


def write_shared_errors(agreement, path, names=None):
    "The rows every run gets wrong as CSV: name (if `names`, the training image names), row, label, mean probability."
    rows = agreement['rows']
    every = rows[rows['n_wrong'] == len(agreement['names'])]
    frame = pd.DataFrame(dict(name=[names[r] for r in every['row']] if names is not None else '', row=every['row'],
                              label=every['label'], mean_prob=every['prob_blend']))
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format='%.6g'))
    return frame


def shared_error_grids(shared, images, out, n=_C['compare_n'], seed=_C['seed']):
    """PNG grids, one per label, of up to `n` rows every run gets wrong, drawn at random (seeded) rather than the most
    confident, so the grid shows what such rows typically look like. Returns the paths written."""
    from .plots import image_grid
    rng, paths = np.random.default_rng(seed), []
    for label in (0, 1):
        mine = shared[shared['label'] == label]
        if not len(mine): continue
        pick = mine.iloc[np.sort(rng.choice(len(mine), min(n, len(mine)), replace=False))]
        titles = [f"{r.name or '#' + str(r.row + 1)}\nmean P(clean) {r.mean_prob:.2f}" for r in pick.itertuples()]
        path = Path(out)/f'shared_errors_label{label}.png'
        image_grid(images[pick['row'].to_numpy()], titles, path,
                   title=f"Labelled {label} ({SHORT_NAMES[label]}), wrong in every run: {min(n, len(mine))} "
                         f"of {len(mine):,} at random")
        paths.append(path)
    return paths
