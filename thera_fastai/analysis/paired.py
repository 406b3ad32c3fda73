"""Whether one run beats another by more than noise: the HTER difference of two runs on the out-of-fold rows both
scored, with a paired bootstrap interval (rows resampled together, thresholds cross-fitted inside each resample, or
fixed ones picked on other rows), and their AUC difference on the same resamples."""
import numpy as np
import pandas as pd

from ..config import N_BOOT
from ..metrics import auc
from .report import cross_fit_groups, cross_fitted

__all__ = ['cross_fitted_hter_of', 'paired_difference', 'paired_differences', 'verdict', 'ranking_verdict', 'N_BOOT']


def cross_fitted_hter_of(probs, labels, groups):
    "HTER of deciding each group's rows at the threshold picked on the other groups' rows (the report's cross-fitting)."
    return _hter_at(cross_fitted(probs, labels, groups), labels)


def paired_difference(probs_a, probs_b, labels, groups=None, n_boot=N_BOOT, seed=0, level=0.95, thresholds=None):
    """HTER of b minus HTER of a on the same rows, and its paired bootstrap percentile interval: each resample draws
    rows with replacement within each label (so both classes keep their counts), scores both runs on the same draw,
    with thresholds cross-fitted over `groups` inside the draw, or at `thresholds` (a's, b's), fixed ones picked on
    other rows (a model's own out-of-fold rows; 0/1 decisions at 0.5). Negative: b makes fewer errors. Returns a dict,
    with b's AUC minus a's on the same draws (`auc_diff`, `auc_lo`, `auc_hi`; positive: b ranks the rows better): the
    ranking over every threshold, a steadier reading than the errors at one."""
    probs_a, probs_b, labels = (np.asarray(x) for x in (probs_a, probs_b, labels))
    if thresholds is None:
        groups = np.asarray(groups)
        def score(probs, rows, _): return cross_fitted_hter_of(probs[rows], labels[rows], groups[rows])
    else:
        def score(probs, rows, t): return _hter_at(probs[rows] >= t, labels[rows])
    def ranking(rows): return auc(probs_b[rows], labels[rows]) - auc(probs_a[rows], labels[rows])
    ta, tb = thresholds or (None, None)
    every = np.arange(len(labels))
    point = score(probs_b, every, tb) - score(probs_a, every, ta)
    rng, by_label = np.random.default_rng(seed), [np.flatnonzero(labels == c) for c in (0, 1)]
    diffs, auc_diffs = np.empty(n_boot), np.empty(n_boot)
    for i in range(n_boot):
        rows = np.concatenate([rng.choice(idx, len(idx)) for idx in by_label])
        diffs[i] = score(probs_b, rows, tb) - score(probs_a, rows, ta)
        auc_diffs[i] = ranking(rows)
    q = [(1 - level) / 2, (1 + level) / 2]
    (lo, hi), (auc_lo, auc_hi) = np.quantile(diffs, q), np.quantile(auc_diffs, q)
    return dict(diff=float(point), lo=float(lo), hi=float(hi), se=float(diffs.std(ddof=1)), n_rows=len(labels), n_boot=n_boot,
                auc_diff=float(ranking(every)), auc_lo=float(auc_lo), auc_hi=float(auc_hi))


def _hter_at(decided, labels): return (decided[labels == 0].mean() + (~decided[labels == 1]).mean()) / 2


def verdict(d, a='a', b='b'):
    "The interval in words: which run is better, or that the difference is within the noise."
    if d['hi'] < 0: return f"{b} is better than {a}"
    if d['lo'] > 0: return f"{b} is worse than {a}"
    return "within the noise"


def ranking_verdict(d, a='a', b='b'):
    "The AUC difference's interval in words: which run ranks the rows better, or that the difference is within the noise."
    if d['auc_lo'] > 0: return f"{b} ranks better than {a}"
    if d['auc_hi'] < 0: return f"{b} ranks worse than {a}"
    return "within the noise"


def paired_differences(joint, names, n_boot=N_BOOT, seed=0):
    """Every run against the first (the baseline) on the shared out-of-fold rows of `joint` (`agreement.shared_oof`),
    then, where `joint` has the runs' blend (`prob_blend`, their mean probability), the blend against the first run and
    against the best one: one row per pair with the HTER difference, its 95% paired bootstrap interval and the verdict."""
    labels, groups = joint['label'].to_numpy(), cross_fit_groups(joint)
    def probs(n): return joint[f'prob_{n}'].to_numpy()
    pairs = [(names[0], n) for n in names[1:]]
    if 'prob_blend' in joint:
        best = min(names, key=lambda n: cross_fitted_hter_of(probs(n), labels, groups))
        pairs += [(names[0], 'blend')] + ([(best, 'blend')] if best != names[0] else [])
    rows = []
    for a, b in pairs:
        d = paired_difference(probs(a), probs(b), labels, groups, n_boot, seed)
        rows.append(dict(run=b, baseline=a, **d, verdict=verdict(d, a, b), ranking=ranking_verdict(d, a, b)))
    return pd.DataFrame(rows)
