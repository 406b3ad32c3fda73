"""The fast paths compute what the plain ones do: batch gather vs per item, torch.compile vs eager (in fp32, where
equal means equal; bf16 is checked against fp32 in test_training)."""
import warnings

import numpy as np
from fastai.torch_core import set_seed

from conftest import synthetic_images
from thera_fastai.data.loaders import fold_dataloaders, fold_splits
from thera_fastai.infer.inference import predict_probs
from thera_fastai.config import FitConfig
from thera_fastai.train.learner import thera_learner


def _learner(tmp_path, fast):
    labels = (np.random.default_rng(0).random(200) > 0.3).astype(np.int8)
    tr, va = fold_splits(labels, 2)[0]
    set_seed(0)
    dls = fold_dataloaders(synthetic_images(labels), labels, tr, va, bs=32, fast=fast)
    set_seed(0)
    return thera_learner(dls, FitConfig(arch='simple'), tmp_path, runtime=dict(device='cpu', precision='fp32', channels_last=True))


def test_cache_gather_and_per_item_paths_predict_the_same(tmp_path):
    fast, plain = _learner(tmp_path, True), _learner(tmp_path, False)
    plain.model.load_state_dict(fast.model.state_dict())
    a, b = predict_probs(fast, fast.dls.valid), predict_probs(plain, plain.dls.valid)
    assert a.shape == (100,) and np.array_equal(a, b)
    ta, tb = predict_probs(fast, fast.dls.valid, tta=2), predict_probs(plain, plain.dls.valid, tta=2)
    assert np.allclose(ta, tb, atol=1e-6) and not np.allclose(ta, a, atol=1e-6)


def test_tta_is_seeded_and_leaves_the_global_generators_alone(tmp_path):
    import torch
    learn = _learner(tmp_path, True)
    torch.manual_seed(7); before = torch.rand(1)
    torch.manual_seed(7)
    a, b = predict_probs(learn, learn.dls.valid, tta=3), predict_probs(learn, learn.dls.valid, tta=3)
    assert np.array_equal(a, b) and torch.equal(torch.rand(1), before)
    assert not np.array_equal(a, predict_probs(learn, learn.dls.valid, tta=3, seed=1))


def test_compiled_and_eager_predict_the_same(tmp_path, monkeypatch):
    learn = _learner(tmp_path, True)
    eager = predict_probs(learn, learn.dls.valid)
    monkeypatch.setenv('THERA_COMPILE', '1')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        compiled = predict_probs(learn, learn.dls.valid)
    assert not [w for w in caught if 'torch.compile failed' in str(w.message)]
    assert np.allclose(eager, compiled, atol=1e-5) and learn.model.__class__.__name__ == 'SimpleCNN'
