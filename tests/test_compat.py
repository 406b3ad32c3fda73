"""Each touch point on fastai's or torch's internals (`thera_fastai.compat`) still does what the package relies on:
an upgrade that moves one fails here first."""
import os, random

import numpy as np
import torch
from fastai.learner import Learner

from conftest import synthetic_images
from thera_fastai import compat
from thera_fastai.data.folds import fold_splits
from thera_fastai.data.loaders import CachedImages, RowLabels, fold_dataloaders


def _dls(**kwargs):
    labels = (np.random.default_rng(0).random(48) > 0.3).astype(np.int8)
    tr, va = fold_splits(labels, 2)[0]
    return fold_dataloaders(synthetic_images(labels), labels, tr, va, bs=8, **kwargs)


def test_the_bf16_probe_answers_a_bool():
    assert isinstance(compat.mkldnn_bf16_supported(), bool)


def test_draw_mask_draws_per_item_where_p_says():
    x = torch.zeros(64, 3, 8, 8)
    drawn = compat.draw_mask(x, lambda x: torch.ones(x.size(0)), p=1.0)
    never = compat.draw_mask(x, lambda x: torch.ones(x.size(0)), p=0.0)
    assert drawn.shape == (64,) and bool((drawn == 1).all()) and bool((never == 0).all())


def test_a_datasets_pipelines_and_items_are_found():
    dls = _dls()
    assert any(isinstance(f, CachedImages) for f in compat.item_pipeline(dls.train_ds))
    assert any(isinstance(f, RowLabels) for f in compat.item_pipeline(dls.train_ds, 1))
    assert compat.item_pipeline(dls.train_ds, 5) == []
    assert len(compat.dataset_items(dls.train_ds)) == len(dls.train_ds)


def test_a_loaders_random_state_can_be_read_and_replaced():
    dl = _dls().train
    compat.set_loader_rng(dl, random.Random(3))
    assert compat.loader_rng(dl).getstate() == random.Random(3).getstate()
    assert dl.shuffle_fn(list(range(10))) == random.Random(3).sample(range(10), 10)  # the generator fastai's loader draws from


def test_the_recorder_exposes_its_row_and_its_cancel_flag():
    from thera_fastai.train.learner import BalancedBCELoss
    learn = Learner(_dls(), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 1)), loss_func=BalancedBCELoss())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    names, values = compat.recorder_row(learn.recorder)
    assert list(names)[:3] == ['epoch', 'train_loss', 'valid_loss'] and len(values) == len(names) and values[0] == 0
    learn.recorder.cancel_train = True
    compat.keep_cancelled_train_metrics(learn.recorder)
    assert learn.recorder.cancel_train is False


def test_fastai_sees_one_process_inside_the_block():
    from fastai.torch_core import num_distrib
    before = os.environ.get('WORLD_SIZE')
    os.environ['WORLD_SIZE'] = '2'
    try:
        with compat.fastai_world_size_1(): assert num_distrib() == 1
        assert num_distrib() == 2
    finally:
        if before is None: os.environ.pop('WORLD_SIZE')
        else: os.environ['WORLD_SIZE'] = before
