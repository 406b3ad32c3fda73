"""Fit configuration, class balancing by loss, cross-fitted thresholds."""
import numpy as np
import pandas as pd
import pytest
import torch

from thera_fastai.cv import cv_summary
from thera_fastai.errors import TheraError
from thera_fastai.training import FitConfig, RECIPES, balanced_loss, sample_rows


def test_config_defaults_come_from_the_recipe_and_bad_values_are_refused():
    cfg = FitConfig(arch='resnet18')
    assert (cfg.lr, cfg.bs) == (RECIPES['resnet18']['lr'], RECIPES['resnet18']['bs'])
    with pytest.raises(TheraError, match='--balance must be'): FitConfig(balance='oversample')
    with pytest.raises(TheraError, match='--epochs must be at least 1'): FitConfig(epochs=0)


def test_balanced_loss_weighs_both_classes_equally():
    labels = np.array([0] * 10 + [1] * 90)
    loss = balanced_loss(labels)
    logits, targs = torch.zeros(100, 1), torch.tensor(labels)
    per_class = [loss(logits[labels == c], targs[labels == c]).item() * (labels == c).sum() for c in (0, 1)]
    assert np.isclose(per_class[0], per_class[1], rtol=1e-5)


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
