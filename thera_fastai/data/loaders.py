"""fastai DataBlocks over the uint8 image cache: batch augmentation, a weighted DataLoader (the rows come from `folds`)."""
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from fastai.callback.data import WeightedDL
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.core import Datasets
from fastai.data.transforms import IndexSplitter, IntToFloatTensor, Normalize
from fastai.torch_core import TensorCategory, TensorImage
from fastai.vision.augment import AffineCoordTfm, affine_mat, aug_transforms
from fasttransform import Transform

from ..compat import dataset_items, draw_mask, item_pipeline
from .cache import IMAGE_SHAPE, IMAGE_SIZE, decode_jpeg
from .folds import class_weights, data_key, fold_splits, sample_rows  # noqa: F401  (the DataBlock's rows)

__all__ = ['CachedImages', 'RowLabels', 'CacheDL', 'RandomShift', 'fold_splits', 'class_weights', 'image_stats',
           'batch_augmentations', 'thera_datablock', 'fold_dataloaders', 'images_dl', 'placeholder_dataloaders',
           'sample_rows', 'data_key', 'without_cache']


class CachedImages(Transform):
    """Row index -> `TensorImage` (C, H, W) uint8 from an (N, H, W, C) array.

    A JPEG path or an (H, W, C) uint8 array is taken as the image itself: `learn.predict('face.jpg', rm_type_tfms=0)`."""
    def __init__(self, images): self.images = images

    def encodes(self, item):
        if isinstance(item, (str, Path)): img = decode_jpeg(Path(item).read_bytes(), item)
        elif isinstance(item, np.ndarray) and item.ndim == 3: img = item
        else: img = self.images[item]
        return TensorImage(torch.from_numpy(np.array(img)).permute(2, 0, 1))

    def gather(self, rows):
        "A whole batch at once: (B, C, H, W) uint8, laid out channels-last like the cache, without a copy per item."
        return TensorImage(torch.from_numpy(self.images[np.asarray(rows)]).permute(0, 3, 1, 2))


@contextmanager
def without_cache(dls):
    "Inside the block, `dls`' image transforms hold an empty cache: what `learn.export()` pickles (files and arrays still predict)."
    tfms = {id(t): t for ds in (dls.train_ds, dls.valid_ds) if ds is not None and (t := _find_tfm(item_pipeline(ds), CachedImages))}
    held = {k: t.images for k, t in tfms.items()}
    for t in tfms.values(): t.images = np.zeros((0, *t.images.shape[1:]), t.images.dtype)
    try: yield dls
    finally:
        for k, t in tfms.items(): t.images = held[k]


class RowLabels(Transform):
    "Row index -> its 0/1 label."
    def __init__(self, labels): self.labels = labels
    def encodes(self, row): return int(self.labels[row])


def _find_tfm(funcs, cls):
    return next((f for f in funcs if isinstance(f, cls)), None)


class CacheDL(WeightedDL):
    """`WeightedDL` that gathers each batch with one fancy index into the cache instead of item by item.

    Yields exactly what the per-item path yields (same rows, same uint8 values, `TensorImage` and
    `TensorCategory`), so fastai's batch transforms, `Learner`, `get_preds` and `tta` work unchanged."""
    def create_batches(self, samps):
        items = np.asarray(dataset_items(self.dataset))
        get_x = _find_tfm(item_pipeline(self.dataset), CachedImages)
        get_y = _find_tfm(item_pipeline(self.dataset, 1), RowLabels)
        if get_x is None or items.ndim != 1 or items.dtype.kind not in 'iu': yield from super().create_batches(samps); return
        samps = np.fromiter(samps, dtype=np.int64)
        stop = len(samps) - len(samps) % self.bs if self.drop_last else len(samps)
        for start in range(0, stop, self.bs):
            rows = items[samps[start:start + self.bs]]
            self.batch_rows = rows  # the cache rows of the batch being yielded, for per-row targets (distillation)
            x = get_x.gather(rows)
            yield (x,) if get_y is None else (x, TensorCategory(torch.from_numpy(get_y.labels[rows].astype(np.int64))))


STATS_IMAGES = 5000  # rows the normalization statistics are computed over, at most


def image_stats(images, rows=None, n=STATS_IMAGES, seed=0):
    "Per-channel mean and std (0-1 scale) over up to `n` rows of the cache (all rows when `rows` is None)."
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    if len(rows) > n: rows = np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))
    x = images[rows].reshape(-1, images.shape[-1]).astype(np.float64) / 255
    return x.mean(0).tolist(), x.std(0).tolist()


def shift_mat(x, max_shift=0.0625, p=0.75):
    "Random translation matrices, up to `max_shift` of the half-width (0.0625 = 2 px at 64 px), applied with probability `p`."
    def draw(x): return x.new_empty(x.size(0)).uniform_(-max_shift, max_shift)
    tx, ty = (draw_mask(x, draw, p) * 2 for _ in range(2))
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    return affine_mat(one, zero, tx, zero, one, ty)


class RandomShift(AffineCoordTfm):
    "Shifts each image by up to `max_px` pixels in x and y; fuses with fastai's Flip and Rotate into one resample."
    def __init__(self, max_px=2, size=IMAGE_SIZE, p=0.75, **kwargs):
        super().__init__(aff_fs=partial(shift_mat, max_shift=max_px / size, p=p), **kwargs)


def batch_augmentations(flip=True, max_rotate=5.0, max_shift_px=2, size=IMAGE_SIZE):
    "The light affine augmentation of the spec: rotation up to 5 degrees, small shifts, optional flip; all on the batch."
    xtra = [RandomShift(max_shift_px, size)] if max_shift_px else []
    return aug_transforms(do_flip=flip, max_rotate=max_rotate, max_zoom=1.0, max_warp=0, max_lighting=0,
                          xtra_tfms=xtra)


def thera_datablock(images, labels, valid_idx, stats, flip=True, max_rotate=5.0, max_shift_px=2):
    "A `DataBlock` over cache rows: uint8 `TensorImage` in, 0/1 category out, augmentation and normalization on batches."
    aug = batch_augmentations(flip, max_rotate, max_shift_px, images.shape[1]) if (flip or max_rotate or max_shift_px) else []
    return DataBlock(blocks=(TransformBlock(batch_tfms=IntToFloatTensor), CategoryBlock(vocab=[0, 1])),
                     get_x=CachedImages(images), get_y=RowLabels(labels), splitter=IndexSplitter(valid_idx),
                     batch_tfms=[*aug, Normalize.from_stats(*stats, cuda=False)])


def fold_dataloaders(images, labels, train_idx, valid_idx, bs=128, weighted=True, stats=None, fast=True, device=None, power=1.0, **aug):
    """Train/valid `DataLoaders` for one fold over `train_idx + valid_idx` rows.

    `weighted` samples the training rows with their class frequency to the power `-power` (1: inverse frequency,
    the classes balanced; with replacement, one epoch = the train size); `fast` gathers batches from the cache (`CacheDL`), else fastai's
    per-item path (`WeightedDL`), which yields the same batches."""
    rows = np.concatenate([train_idx, valid_idx])
    stats = stats or image_stats(images, train_idx)
    dblock = thera_datablock(images, labels, np.arange(len(train_idx), len(rows)), stats, **aug)
    wgts = class_weights(np.asarray(labels)[train_idx], power) if weighted else None
    return dblock.dataloaders(rows.tolist(), bs=bs, dl_type=CacheDL if fast else WeightedDL, dl_kwargs=[{'wgts': wgts}, {}],
                              num_workers=0, device=device, pin_memory=str(device).startswith('cuda'))


def placeholder_dataloaders(stats, bs=128, device=None, **aug):
    """Fold `DataLoaders` with a fold's transforms and normalization `stats` over two blank images.

    What a rebuilt learner holds when no training data is given: enough for `predict`, `tta`,
    `get_preds` and `test_dl` on new images, which bring their own."""
    images, labels = np.zeros((2, *IMAGE_SHAPE), np.uint8), np.array([0, 1], np.int8)
    return fold_dataloaders(images, labels, np.array([0]), np.array([1]), bs=bs, weighted=False, stats=stats,
                            device=device, **aug)


def images_dl(dls, images, bs=None):
    "A labelless DataLoader over another cache (`images`) with `dls`' transforms, for `get_preds` and `tta`."
    valid_ds = dls.valid_ds
    x_tfms = [CachedImages(images) if isinstance(f, CachedImages) else f for f in item_pipeline(valid_ds)]
    ds = Datasets(list(range(len(images))), tfms=[x_tfms], split_idx=1, n_inp=1)
    return dls.valid.new(ds, bs=bs or dls.valid.bs, shuffle=False, drop_last=False)
