"""Every place the package reaches into fastai's or torch's internals, one small function each, so an upgrade that
moves one breaks here and in `tests/test_compat.py`, not somewhere in a fit. torch and fastai are imported inside the
functions: the modules that only read runs import this one too."""
import os
from contextlib import contextmanager

__all__ = ['mkldnn_bf16_supported', 'draw_mask', 'item_pipeline', 'dataset_items', 'loader_rng', 'set_loader_rng',
           'keep_cancelled_train_metrics', 'recorder_row', 'fastai_world_size_1']


def mkldnn_bf16_supported():
    "Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX): torch's private probe, the only one it has."
    import torch
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def draw_mask(x, draw, p):
    "fastai's per-item draw for a batch augmentation (`fastai.vision.augment._draw_mask`): `draw()` where the item is drawn, else 0."
    from fastai.vision.augment import _draw_mask
    return _draw_mask(x, draw, p=p)


def item_pipeline(dataset, i=0):
    "The transforms of a fastai `Datasets`' `i`-th tuple element (0: x, 1: y), as a list of functions (`tls[i].tfms.fs`)."
    return list(dataset.tls[i].tfms.fs) if len(dataset.tls) > i else []


def dataset_items(dataset):
    "The items a fastai `Datasets` (or a `TfmdLists`) was built on."
    return dataset.items if hasattr(dataset, 'items') else dataset.tls[0].items


def loader_rng(dl):
    "The `random.Random` a fastai `DataLoader` shuffles and samples with (of the loader a data-parallel wrapper holds)."
    return getattr(dl, 'dl', dl).rng


def set_loader_rng(dl, rng):
    "Gives a fastai `DataLoader` (or the one a data-parallel wrapper holds) its own `random.Random`."
    getattr(dl, 'dl', dl).rng = rng


def keep_cancelled_train_metrics(recorder):
    "Makes fastai's `Recorder` keep the training metrics of a training phase that a `CancelTrainException` ended."
    recorder.cancel_train = False


def recorder_row(recorder):
    "(names, values) of the epoch fastai's `Recorder` has just logged."
    return recorder.metric_names, recorder.log


@contextmanager
def fastai_world_size_1():
    """fastai decides whether to gather predictions across processes from `$WORLD_SIZE` alone: inside the block it sees
    one process, so rank 0 of a data-parallel fit predicts by itself."""
    saved = os.environ.get('WORLD_SIZE')
    os.environ['WORLD_SIZE'] = '1'
    try: yield
    finally:
        if saved is None: os.environ.pop('WORLD_SIZE', None)
        else: os.environ['WORLD_SIZE'] = saved
