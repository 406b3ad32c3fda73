"""DataBlock, folds, weighted sampling and batch augmentation over the cache."""
import numpy as np
import pytest
import torch
from fastai.torch_core import TensorCategory, TensorImage, set_seed

from conftest import synthetic_images
from thera_fastai.data.loaders import class_weights, fold_dataloaders, fold_splits, images_dl, shift_mat
from thera_fastai.errors import TheraError


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    labels = (rng.random(400) > 0.12).astype(np.int8)
    return synthetic_images(labels), labels


def test_folds_are_stratified_disjoint_and_seeded(arrays):
    _, labels = arrays
    splits = fold_splits(labels, 5, seed=1)
    valid = np.concatenate([v for _, v in splits])
    assert sorted(valid) == list(range(len(labels)))
    share = labels.mean()
    for tr, va in splits:
        assert not set(tr) & set(va)
        assert abs(labels[va].mean() - share) < 0.02
    assert all((a[1] == b[1]).all() for a, b in zip(splits, fold_splits(labels, 5, seed=1)))
    assert not all((a[1] == b[1]).all() for a, b in zip(splits, fold_splits(labels, 5, seed=2)))


def test_fold_count_is_checked():
    with pytest.raises(TheraError, match='at least 2'): fold_splits([0, 1, 1], 1)
    with pytest.raises(TheraError, match='more than the 2 images of the rarer class'): fold_splits([0, 0, 1, 1, 1], 3)


def test_weighted_dl_oversamples_class_0(arrays):
    imgs, labels = arrays
    tr, va = fold_splits(labels, 4)[0]
    set_seed(0)
    dls = fold_dataloaders(imgs, labels, tr, va, bs=50)
    ys = torch.cat([y for _ in range(3) for _, y in dls.train])
    assert 0.4 < (ys == 0).float().mean() < 0.6      # ~12% in the data, ~50% sampled
    plain = fold_dataloaders(imgs, labels, tr, va, bs=50, weighted=False)
    assert (torch.cat([y for _, y in plain.train]) == 0).float().mean() < 0.2
    w = class_weights(labels)
    assert np.isclose(w[labels == 0].sum(), w[labels == 1].sum())


def test_balance_strength_meets_the_classes_part_way(arrays):
    imgs, labels = arrays
    tr, va = fold_splits(labels, 4)[0]
    n0, n1 = np.bincount(labels[tr], minlength=2)
    half = np.sqrt(n0) / (np.sqrt(n0) + np.sqrt(n1))  # class 0's share at weights n^-0.5: n0 * n0^-0.5 of the total
    assert n0 / (n0 + n1) < half < 0.5
    w = class_weights(labels[tr], 0.5)
    assert np.isclose(w[labels[tr] == 0].sum() / w.sum(), half)
    assert np.allclose(class_weights(labels[tr], 1.0), class_weights(labels[tr]))
    set_seed(0)
    dls = fold_dataloaders(imgs, labels, tr, va, bs=50, power=0.5)
    ys = torch.cat([y for _ in range(20) for _, y in dls.train])
    share = (ys == 0).float().mean().item()
    assert abs(share - half) < 4 * np.sqrt(half * (1 - half) / len(ys)), (share, half)  # within 4 standard errors


def test_fast_and_plain_paths_yield_the_same_batches(arrays):
    imgs, labels = arrays
    tr, va = fold_splits(labels, 4)[0]
    kw = dict(bs=64, flip=False, max_rotate=0, max_shift_px=0)
    set_seed(3); fast = fold_dataloaders(imgs, labels, tr, va, **kw)
    set_seed(3); plain = fold_dataloaders(imgs, labels, tr, va, fast=False, **kw)
    for dl_fast, dl_plain in ((fast.valid, plain.valid), (fast.train, plain.train)):
        set_seed(5); a = list(dl_fast)
        set_seed(5); b = list(dl_plain)
        assert len(a) == len(b) > 0
        for (xa, ya), (xb, yb) in zip(a, b):
            assert type(xa) is TensorImage and type(ya) is TensorCategory
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_augmentation_on_train_only(arrays):
    imgs, labels = arrays
    tr, va = fold_splits(labels, 4)[0]
    dls = fold_dataloaders(imgs, labels, tr, va, bs=len(va))
    x, _ = dls.valid.one_batch()
    raw = torch.from_numpy(imgs[va]).permute(0, 3, 1, 2).float() / 255
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    stats = dls.valid.after_batch.fs[-1]
    assert torch.allclose(x * stats.std + stats.mean, raw, atol=1e-5)   # validation: normalization only
    with dls.train.dataset.set_split_idx(0):
        xt = dls.train.after_batch(TensorImage(torch.from_numpy(imgs[tr[:64]]).permute(0, 3, 1, 2)))
    raw_t = torch.from_numpy(imgs[tr[:64]]).permute(0, 3, 1, 2).float() / 255
    assert (xt * stats.std + stats.mean - raw_t).abs().mean() > 1e-3    # training: augmented
    assert mean.abs().max() < 0.5 and (std - 1).abs().max() < 0.5


def test_shift_matrix_translates_up_to_max():
    torch.manual_seed(0)
    m = shift_mat(torch.zeros(1000, 3, 8, 8), max_shift=2 / 64, p=1.0)
    assert torch.equal(m[:, :2, :2], torch.eye(2).expand(1000, 2, 2))
    assert m[:, :2, 2].abs().max() <= 2 * 2 / 64 + 1e-6 and m[:, :2, 2].abs().max() > 0.05


def test_images_dl_predicts_another_cache(arrays):
    imgs, labels = arrays
    tr, va = fold_splits(labels, 4)[0]
    dls = fold_dataloaders(imgs, labels, tr, va, bs=32)
    other = synthetic_images(np.array([0, 1, 1, 0, 1]), seed=9)
    dl = images_dl(dls, other, bs=2)
    xs = torch.cat([b[0] for b in dl])
    stats = dls.valid.after_batch.fs[-1]
    assert torch.allclose(xs * stats.std + stats.mean, torch.from_numpy(other).permute(0, 3, 1, 2).float() / 255, atol=1e-5)
