"""Fit configuration, class balancing by loss, cross-fitted thresholds."""
import numpy as np
import pandas as pd
import pytest
import torch
from fastai.torch_core import set_seed

from conftest import synthetic_images
from thera_fastai.cv import cv_summary
from thera_fastai.data import fold_dataloaders, fold_splits
from thera_fastai.errors import TheraError
from thera_fastai.inference import predict_probs
from thera_fastai.callbacks import native_bf16
from thera_fastai.training import FitConfig, RECIPES, BalancedBCELoss, balanced_loss, sample_rows, step_schedule, thera_learner


def test_config_defaults_come_from_the_recipe_and_bad_values_are_refused():
    cfg = FitConfig(arch='resnet18')
    assert (cfg.lr, cfg.bs, cfg.epochs) == tuple(RECIPES['resnet18'][k] for k in ('lr', 'bs', 'epochs'))
    assert FitConfig(epochs=2).epochs == 2 and FitConfig().epochs == RECIPES['simple']['epochs']
    with pytest.raises(TheraError, match='--balance must be'): FitConfig(balance='oversample')
    with pytest.raises(TheraError, match='--epochs must be at least 1'): FitConfig(epochs=0)


def test_precision_auto_follows_the_hardware():
    assert FitConfig().precision == ('bf16' if native_bf16() else 'fp32')
    assert FitConfig(precision='fp32').precision == 'fp32'
    with pytest.raises(TheraError, match='--precision must be'): FitConfig(precision='fp16')


def _conv_dtypes_in_fit(tmp_path, precision):
    labels = (np.random.default_rng(0).random(96) > 0.3).astype(np.int8)
    tr, va = fold_splits(labels, 2)[0]
    set_seed(0)
    learn = thera_learner(fold_dataloaders(synthetic_images(labels), labels, tr, va, bs=16), FitConfig(precision=precision), tmp_path)
    seen = set()
    learn.model[0][0].register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    return learn, seen


def test_bf16_trains_under_autocast_with_fp32_weights(tmp_path):
    bf16, seen_bf16 = _conv_dtypes_in_fit(tmp_path, 'bf16')
    fp32, seen_fp32 = _conv_dtypes_in_fit(tmp_path, 'fp32')
    assert seen_bf16 == {torch.bfloat16} and seen_fp32 == {torch.float32}
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    fp32.model.load_state_dict(bf16.model.state_dict())
    a, b = predict_probs(bf16, bf16.dls.valid), predict_probs(fp32, fp32.dls.valid)
    assert a.dtype == b.dtype == np.float32 and 0 < np.abs(a - b).max() < 0.05  # same weights, bf16 rounding only


def test_balanced_loss_weighs_both_classes_equally():
    labels = np.array([0] * 10 + [1] * 90)
    loss = balanced_loss(labels)
    logits, targs = torch.zeros(100, 1), torch.tensor(labels)
    per_class = [loss(logits[labels == c], targs[labels == c]).item() * (labels == c).sum() for c in (0, 1)]
    assert np.isclose(per_class[0], per_class[1], rtol=1e-5)


def test_label_smoothing_moves_the_loss_minimum():
    loss = BalancedBCELoss(smoothing=0.2)
    for p, targ in ((0.9, 1), (0.1, 0)):  # targets 1 and 0 become 0.9 and 0.1: the loss is flat there
        logit = torch.tensor([[np.log(p / (1 - p))]], requires_grad=True)
        loss(logit, torch.tensor([targ])).backward()
        assert abs(logit.grad.item()) < 1e-6
    with pytest.raises(TheraError, match='--label-smoothing must be'): FitConfig(label_smoothing=1.0)


def test_step_schedule_drops_the_lr_like_steplr(tmp_path):
    labels = (np.random.default_rng(0).random(96) > 0.3).astype(np.int8)
    tr, va = fold_splits(labels, 2)[0]
    learn = thera_learner(fold_dataloaders(synthetic_images(labels), labels, tr, va, bs=16), FitConfig(precision='fp32'), tmp_path)
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3, cbs=step_schedule(1e-3, 2, step_epochs=1))
    per_epoch = np.array_split(np.array(learn.recorder.lrs), 2)
    assert np.allclose(per_epoch[0], 1e-3) and np.allclose(per_epoch[1], 1e-4)


def test_sample_rows_is_stratified_and_checked():
    labels = np.array([0] * 100 + [1] * 900)
    rows = sample_rows(labels, 200, seed=0)
    assert len(rows) == 200 and labels[rows].mean() == 0.9 and (np.diff(rows) > 0).all()
    with pytest.raises(TheraError, match='larger than the 1000 labelled images'): sample_rows(labels, 1001, 0)


def test_cross_fitted_threshold_uses_other_rows_only():
    rng = np.random.default_rng(0)
    label = (rng.random(4000) > 0.2).astype(int)
    oof = pd.DataFrame(dict(row=np.arange(4000), label=label, fold=np.arange(4000) % 4,
                            prob_tta=np.clip(0.25 * label + rng.normal(0.5, 0.15, 4000), 0, 1)))
    s = cv_summary(oof)
    assert s['at_best_in_sample']['hter'] <= s['cross_fitted']['hter'] < s['at_05']['hter']
    one = cv_summary(oof.assign(fold=0))          # one fold: halves by row parity
    assert one['at_best_in_sample']['hter'] <= one['cross_fitted']['hter']


def test_learners_exported_before_the_callbacks_module_still_load():
    "Exports of thera_fastai 0.1 name thera_fastai.training.BF16Autocast; unpickling them must still find it."
    import pickle
    from thera_fastai.callbacks import BF16Autocast
    old = pickle.dumps(BF16Autocast(), protocol=0).replace(b'thera_fastai.callbacks', b'thera_fastai.training')
    assert b'thera_fastai.training' in old and type(pickle.loads(old)) is BF16Autocast
