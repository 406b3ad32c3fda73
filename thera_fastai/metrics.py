"""HTER and its parts, as plain functions over probabilities and as fastai metrics over one-logit outputs.

Convention (the seed's): class 1, a clean face, is "accepted"; class 0, an occluded face, is the
impostor. FAR = share of class-0 images predicted 1; FRR = share of class-1 images predicted 0;
HTER = (FAR + FRR) / 2 = 1 - balanced accuracy."""
from functools import partial

import numpy as np

__all__ = ['chance_warning', 'far', 'frr', 'hter', 'error_rates', 'roc_points', 'best_threshold', 'balanced_acc', 'auc', 'HTER', 'FAR', 'FRR', 'BalancedAcc', 'AUC',
           'thera_metrics']


def chance_warning(auc, what='this run'):
    "One line saying that `what` has not learned (its AUC is below `config.CHANCE_AUC`, or undefined), else None."
    from .config import CHANCE_AUC
    if auc is not None and auc >= CHANCE_AUC: return None
    shown = 'undefined' if auc is None or auc != auc else f"{auc:.3f}"
    return (f"{what} has not learned: out-of-fold AUC {shown}, below {CHANCE_AUC} (0.5 is chance); its HTER and errors are noise, "
            "not a result: train longer (--epochs) or on more images (--sample)")


def _as_np(probs, targs):
    return np.asarray(probs, dtype=np.float64).reshape(-1), np.asarray(targs).reshape(-1).astype(np.int64)


def far(probs, targs, thresh=0.5):
    "False accept rate: share of class-0 rows whose probability of class 1 is >= `thresh`."
    p, t = _as_np(probs, targs)
    neg = t == 0
    return float((p[neg] >= thresh).mean()) if neg.any() else float('nan')


def frr(probs, targs, thresh=0.5):
    "False reject rate: share of class-1 rows whose probability of class 1 is < `thresh`."
    p, t = _as_np(probs, targs)
    pos = t == 1
    return float((p[pos] < thresh).mean()) if pos.any() else float('nan')


def hter(probs, targs, thresh=0.5):
    "Half total error rate, (FAR + FRR) / 2, which equals 1 - balanced accuracy."
    return (far(probs, targs, thresh) + frr(probs, targs, thresh)) / 2


def error_rates(probs, targs, thresh=0.5):
    "HTER, FAR, FRR, balanced accuracy and AUC of `probs` (of class 1) against 0/1 `targs`, as a dict."
    return dict(hter=hter(probs, targs, thresh), far=far(probs, targs, thresh), frr=frr(probs, targs, thresh),
                balanced_acc=balanced_acc(probs, targs, thresh), auc=auc(probs, targs), threshold=float(thresh))


def roc_points(probs, targs):
    """(FAR, 1 - FRR, threshold) at every distinct threshold of "predict 1 when p >= threshold", highest first, from
    (0, 0) at +inf: scikit-learn's `roc_curve` without dropping collinear points. Written here because importing
    scikit-learn (and SciPy) is most of the start-up of the commands that only read a run's CSV files."""
    p, t = _as_np(probs, targs)
    order = np.argsort(-p, kind='mergesort')
    p, t = p[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # the last row of each run of equal probabilities
    tps, fps = np.cumsum(t)[last], (last + 1) - np.cumsum(t)[last]
    n_pos, n_neg = max(int(t.sum()), 1), max(int(len(t) - t.sum()), 1)
    return np.r_[0, fps] / n_neg, np.r_[0, tps] / n_pos, np.r_[np.inf, p[last]]


def best_threshold(probs, targs):
    "The threshold on P(class 1) that minimizes HTER over these rows (pick it on out-of-fold rows only)."
    far_, tpr, thresholds = roc_points(probs, targs)
    i = int(np.argmin(far_ + (1 - tpr)))  # FAR + FRR: the first, highest threshold of a tie
    return float(min(thresholds[i], 1.0))


def _prob(logits): return 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64).reshape(-1)))


def balanced_acc(probs, targs, thresh=0.5):
    "Balanced accuracy of predicting 1 when P(class 1) >= `thresh`: 1 - HTER."
    return 1 - hter(probs, targs, thresh)


def auc(probs, targs):
    "ROC AUC of P(class 1); NaN when only one class is present."
    p, t = _as_np(probs, targs)
    if len(np.unique(t)) != 2: return float('nan')
    far_, tpr, _ = roc_points(p, t)
    return float(np.sum(np.diff(far_) * (tpr[1:] + tpr[:-1]) / 2))  # the trapezoids: ties count half, as in roc_auc_score


def _on_logits(func, preds, targs, **kwargs): return func(_prob(preds), targs, **kwargs)


def _metric(f, name, **kwargs):
    from fastai.metrics import AccumMetric  # here: reading a run's figures needs no fastai
    return AccumMetric(partial(_on_logits, f, **kwargs), to_np=True, flatten=True, name=name)


def _at_threshold(f, doc):
    "A factory of fastai metrics computing `f` at a threshold on one-logit outputs."
    def make(thresh=0.5): return _metric(f, f.__name__, thresh=thresh)
    make.__doc__, make.__name__ = doc, f.__name__.upper()
    return make


HTER = _at_threshold(hter, "HTER at `thresh` as a fastai metric over one-logit outputs (lower is better).")
FAR = _at_threshold(far, "FAR (class 0 accepted) as a fastai metric (lower is better).")
FRR = _at_threshold(frr, "FRR (class 1 rejected) as a fastai metric (lower is better).")
BalancedAcc = _at_threshold(balanced_acc, "Balanced accuracy = 1 - HTER as a fastai metric.")


def AUC():
    "ROC AUC of P(class 1) as a fastai metric."
    return _metric(auc, 'auc')


def thera_metrics():
    "The metrics every fit reports, in order."
    return [HTER(), FAR(), FRR(), BalancedAcc(), AUC()]
