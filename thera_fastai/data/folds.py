"""Which rows a fit uses: the stratified sample, the K folds, the class weights of the sampler and the hash of it all.
numpy and scikit-learn only, so the run format and the reports can be read without torch; scikit-learn is imported
where a split is made, since the commands that only read runs start faster without it."""
import numpy as np

from ..errors import TheraError
from ..files import short_hash

__all__ = ['fold_splits', 'fold_train_rows', 'class_weights', 'sample_rows', 'data_key']


def fold_splits(labels, n_folds, seed=42):
    "Stratified K-fold (train_idx, valid_idx) pairs, fixed by `seed`."
    labels = np.asarray(labels)
    if n_folds < 2: raise TheraError(f"must be at least 2 (got {n_folds})", param='folds')
    smallest = np.bincount(labels, minlength=2).min()
    if n_folds > smallest:
        raise TheraError(f"{n_folds} is more than the {smallest} images of the rarer class: each fold needs one", param='folds')
    from sklearn.model_selection import StratifiedKFold
    skf = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(labels)), labels))


def class_weights(labels, power=1.0):
    """Per-row sampling weights, the row's class frequency to the power `-power`: 1 brings the classes out balanced,
    0 leaves them as they are, 0.5 meets them halfway on a log scale."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return (counts ** -float(power))[labels]


def sample_rows(labels, n, seed):
    "A stratified subset of `n` rows (all rows when `n` is None), sorted."
    rows = np.arange(len(labels))
    if n is None or n == len(labels): return rows
    if n > len(labels): raise TheraError(f"{n} is larger than the {len(labels)} labelled images", param='sample')
    if n < 4: raise TheraError(f"{n} is too small to split into folds", param='sample')
    from sklearn.model_selection import train_test_split
    sub, _ = train_test_split(rows, train_size=n, stratify=labels, random_state=seed)
    return np.sort(sub)


def data_key(images_key, labels, rows, excluded=()):
    "A hash of the training data a fit saw: the cache key, the labels, the rows used and those left out of training."
    parts = [images_key.encode(), np.ascontiguousarray(labels, dtype=np.int8).tobytes(), np.ascontiguousarray(rows, dtype=np.int64).tobytes()]
    if len(excluded): parts.append(np.ascontiguousarray(excluded, dtype=np.int64).tobytes())
    return short_hash(*parts)


def fold_train_rows(rows, labels, folds, seed, fold, excluded=()):
    """(training rows, held-out rows) of fold `fold` of the `rows` used: the one place the split is made, so the fit, a
    rebuilt learner and a teacher all see the same rows; `excluded` rows are left out of training only."""
    tr, va = fold_splits(np.asarray(labels)[rows], folds, seed)[fold]
    return np.setdiff1d(rows[tr], excluded), rows[va]
