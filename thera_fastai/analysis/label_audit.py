"""The label audit of a run: cleanlab's confident learning over the pooled out-of-fold probabilities (each row
scored by the fold model that never trained on it), the noise it implies, and grids of the suspects with saliency."""
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import COMMAND_DEFAULTS as _C, SHORT_NAMES
from ..errors import TheraError
from ..files import atomic_write, make_folder, write_json
from ..metrics import chance_warning, error_rates
from .report import cross_fitted_hter, run_summary
from ..runs import open_run, run_data

__all__ = ['ISSUE_COLUMNS', 'find_label_issues', 'noise_estimate', 'label_audit', 'audit_markdown', 'suspect_grids', 'write_audit']


ISSUE_COLUMNS = ['name', 'row', 'label', 'p_clean', 'p_label', 'quality', 'rank']  # label_issues.csv, which thera-fit --exclude reads


def _pred_probs(p1): return np.stack([1 - p1, p1], 1)


def find_label_issues(oof, names=None, prob='prob_tta'):
    """Rows whose given label cleanlab flags (confident learning, prune by noise rate) in the out-of-fold frame `oof`:
    name, row (0-based: line `row + 1` of label_train.txt), given label, `p_clean` (the out-of-fold P(clean face)),
    `p_label` (the out-of-fold probability of the given label), label quality (cleanlab's normalized margin) and rank
    (1 = most suspect), most suspect first. `names`: the training image names (else blank)."""
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores
    labels, pp = oof['label'].to_numpy().astype(int), _pred_probs(oof[prob].to_numpy())
    if len(np.unique(labels)) < 2: raise TheraError("the audit needs both classes among the out-of-fold rows")
    flagged = cl_find(labels, pp, filter_by='prune_by_noise_rate')
    quality = get_label_quality_scores(labels, pp, method='normalized_margin')
    rows = oof['row'].to_numpy()
    frame = pd.DataFrame(dict(name=[names[r] for r in rows] if names is not None else [''] * len(rows), row=rows,
                              label=labels, p_clean=pp[:, 1], p_label=pp[np.arange(len(pp)), labels], quality=quality,
                              fold=oof['fold'].to_numpy()))
    frame = frame[flagged].sort_values(['quality', 'row']).reset_index(drop=True)
    frame.insert(len(frame.columns) - 1, 'rank', np.arange(1, len(frame) + 1))
    return frame


def noise_estimate(oof, prob='prob_tta'):
    """cleanlab's estimate of the joint P(given label, true label), the noise rates P(given | true) it implies, and
    the HTER floor: what a perfect classifier of the true labels would score against the given ones,
    (P(true 1 | given 0) + P(true 0 | given 1)) / 2."""
    from cleanlab.count import estimate_joint
    labels, pp = oof['label'].to_numpy().astype(int), _pred_probs(oof[prob].to_numpy())
    joint = estimate_joint(labels, pp)  # rows: given label, columns: true label
    true_given = joint / joint.sum(1, keepdims=True)
    given_true = joint / joint.sum(0, keepdims=True)
    return dict(joint=joint.tolist(), p_true1_given0=float(true_given[0, 1]), p_true0_given1=float(true_given[1, 0]),
                p_given1_true0=float(given_true[1, 0]), p_given0_true1=float(given_true[0, 1]),
                hter_floor=float((true_given[0, 1] + true_given[1, 0]) / 2))


def label_audit(run, data=None):
    """The audit of run folder `run` (every finished fold): label issues, noise estimate, and the run's HTER on all
    out-of-fold rows and on the rows not flagged, both at the cross-fitted threshold's decisions and at 0.5.
    `data` (the exercise zip or folder, default: the run's own) gives the image names. Returns (summary, issues)."""
    from ..data.source import open_dataset
    run_info = open_run(run)
    summary, oof = run_summary(run, run_info)
    if oof is None: raise TheraError("holds no finished fold (fold*/fold.json): nothing to audit", run)
    if warning := chance_warning(summary['pooled']['at_05']['auc'], 'its model'):
        raise TheraError(f"{warning}. An audit would flag noise as label errors, so none is made", run)
    source = run_data(run_info, data)
    names = open_dataset(source).train.names if source else None
    issues = find_label_issues(oof, names)
    noise = noise_estimate(oof)
    keep = ~oof['row'].isin(issues['row']).to_numpy()
    p, t = oof['prob_tta'].to_numpy(), oof['label'].to_numpy()
    counts = issues['label'].value_counts()
    out = dict(run=str(run), n_rows=len(oof), folds=sorted(int(k) for k in summary['folds']), n_folds=run_info['config']['folds'], n_flagged=len(issues),
               flagged_by_label={int(k): int(counts.get(k, 0)) for k in (0, 1)}, rows_by_label={int(k): int((t == k).sum()) for k in (0, 1)},
               noise=noise, hter_all=summary['pooled']['cross_fitted']['hter'], hter_all_05=summary['pooled']['at_05']['hter'],
               hter_unflagged_05=error_rates(p[keep], t[keep])['hter'],
               hter_unflagged=cross_fitted_hter(oof, keep), data=None if source is None else str(source))
    return out, issues


def folds_of(a):
    "Which folds an audit covers; a partial run says that the rows of its other folds are not audited."
    folds = f"fold{'s' * (len(a['folds']) > 1)} {', '.join(map(str, a['folds']))}"
    n = a.get('n_folds', len(a['folds']))
    return folds if len(a['folds']) == n else f"{folds} of {n} (the other folds' rows are not audited)"


def audit_markdown(a):
    "The audit as a short Markdown page."
    n, fl = a['noise'], a['flagged_by_label']
    return '\n'.join([
        "# Label audit", "",
        f"Run `{a['run']}`: {a['n_rows']:,} out-of-fold rows from {folds_of(a)}, each scored by the fold "
        "model that never trained on it. cleanlab (confident learning, prune by noise rate) flags "
        f"**{a['n_flagged']:,}** labels ({a['n_flagged'] / a['n_rows']:.2%}): {fl[0]:,} of {a['rows_by_label'][0]:,} labelled 0, "
        f"{fl[1]:,} of {a['rows_by_label'][1]:,} labelled 1 ([label_issues.csv](label_issues.csv)).", "",
        "| estimate | value |", "|---|---|",
        f"| P(true 1 \\| given 0): labelled occluded, looks clean | {n['p_true1_given0']:.4f} |",
        f"| P(true 0 \\| given 1): labelled clean, looks occluded | {n['p_true0_given1']:.4f} |",
        f"| noise rate P(given 1 \\| true 0) | {n['p_given1_true0']:.4f} |",
        f"| noise rate P(given 0 \\| true 1) | {n['p_given0_true1']:.4f} |",
        f"| implied HTER floor (a perfect classifier scored against these labels) | **{n['hter_floor']:.4f}** |",
        f"| this run's HTER, all rows, cross-fitted threshold (at 0.5) | {a['hter_all']:.4f} ({a['hter_all_05']:.4f}) |",
        f"| this run's HTER, rows not flagged, same decisions (at 0.5) | {a['hter_unflagged']:.4f} ({a['hter_unflagged_05']:.4f}) |",
        "", "The rows not flagged are chosen with the same probabilities they are scored with, so their HTER is optimistic: "
        "it says how much of the error sits on suspect labels, not what a better model would score.", "",
        "Most suspect labels, per given label (the map shows where the fold model sees an occlusion, Grad-CAM):", "",
        *[line for k in (0, 1) for line in ((f"![suspects labelled {k}](suspects_label{k}.png)", "") if fl[k] else
                                            (f"No label {k} is flagged.", ""))]])


def suspect_grids(run, issues, images, out, n=_C['audit_n'], device=_C['audit_device']):
    "PNG grids of the `n` most suspect rows per given label, each with the Grad-CAM map of the fold model that held it out."
    from .saliency import oof_saliency, plot_saliency
    tops = [issues[issues['label'] == label].head(n) for label in (0, 1)]
    maps = oof_saliency(run, pd.concat(tops), images, device=device)  # each fold model loaded once for both grids
    paths, start = [], 0
    for label, top in zip((0, 1), tops):
        if not len(top): continue
        titles = [f"{r.name}\ny={r.label} P(clean)={r.p_clean:.2f}" for r in top.itertuples()]
        path = Path(out)/f"suspects_label{label}.png"
        plot_saliency(images[top['row'].to_numpy()], maps[start:start + len(top)], titles, path,
                      title=f"Most suspect labels given {label} ({SHORT_NAMES[label]}); map: evidence of occlusion")
        paths.append(path); start += len(top)
    return paths


def write_audit(run, out=None, data=None, n=_C['audit_n'], cache=None, device=_C['audit_device']):
    """Audits run folder `run` and writes label_issues.csv, audit.json, audit.md and the suspect grids under `out`
    (default: `run`/audit). Returns (summary, issues)."""
    from ..data.cache import cached_images
    from ..data.source import open_dataset
    a, issues = label_audit(run, data)
    out = make_folder(out or Path(run)/'audit', 'audit output')
    atomic_write(out/'label_issues.csv', lambda tmp: issues[ISSUE_COLUMNS].to_csv(tmp, index=False, float_format='%.6g'))
    write_json(out/'audit.json', a)
    text = audit_markdown(a)
    atomic_write(out/'audit.md', lambda tmp: tmp.write_text(text))
    if n and a['data']:
        suspect_grids(run, issues, cached_images(open_dataset(a['data']).train, cache), out, n, device)
    return a, issues
