"""HTER and friends follow the seed's convention: class 1 accepted, FAR on class 0, FRR on class 1."""
import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from thera_fastai.metrics import HTER, AUC, best_threshold, error_rates, far, frr, hter


def test_far_frr_hter_by_hand():
    targs = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    probs = np.array([.9, .2, .1, .6, .8, .7, .4, .9, .95, .51])
    assert far(probs, targs) == 0.5          # 2 of 4 class-0 rows accepted
    assert frr(probs, targs) == 1 / 6        # 1 of 6 class-1 rows rejected
    assert hter(probs, targs) == (0.5 + 1 / 6) / 2
    assert np.isclose(1 - hter(probs, targs), balanced_accuracy_score(targs, probs >= 0.5))


def test_best_threshold_minimizes_hter():
    rng = np.random.default_rng(0)
    targs = (rng.random(2000) > 0.15).astype(int)
    probs = np.clip(0.3 * targs + rng.normal(0.5, 0.2, 2000), 0, 1)
    th = best_threshold(probs, targs)
    grid = np.linspace(0, 1, 501)
    assert hter(probs, targs, th) <= min(hter(probs, targs, g) for g in grid) + 1e-12
    assert error_rates(probs, targs, th)['hter'] < error_rates(probs, targs)['hter']


def test_fastai_metrics_take_logits():
    logits = torch.tensor([[2.], [-1.], [0.5], [-3.]])
    targs = torch.tensor([1, 0, 0, 1])
    m = HTER()
    assert np.isclose(m.func(logits.numpy(), targs.numpy()), (0.5 + 0.5) / 2)
    assert np.isclose(AUC().func(logits.numpy(), targs.numpy()), 0.5)


def test_top_losses_titles_do_not_overlap_the_images_above(tmp_path, monkeypatch):
    import pandas as pd
    import thera_fastai.analysis.plots as plots
    from conftest import synthetic_images
    oof = pd.DataFrame(dict(row=np.arange(16), label=np.arange(16) % 2, prob_tta=np.linspace(0.01, 0.99, 16)))
    saved = {}
    monkeypatch.setattr(plots, 'save_figure', lambda fig, path: saved.update(fig=fig))
    plots.plot_top_losses(synthetic_images(oof['label']), plots.top_losses(oof, 16), tmp_path/'t.png')
    fig = saved['fig']; fig.canvas.draw()
    r = fig.canvas.get_renderer()
    axes = np.array(fig.axes).reshape(2, 8)
    for top_ax, low_ax in zip(axes[0], axes[1]):
        assert low_ax.title.get_window_extent(r).y1 < top_ax.get_window_extent(r).y0   # second-row title below first-row image


def test_the_roc_auc_and_threshold_agree_with_scikit_learn_ties_included():
    from sklearn.metrics import roc_auc_score, roc_curve
    from thera_fastai.metrics import auc, balanced_acc, roc_points
    rng = np.random.default_rng(0)
    for n, levels in ((50, 5), (400, 40), (1000, None)):   # few distinct values: many ties
        t = (rng.random(n) > 0.3).astype(int)
        p = rng.random(n) * 0.6 + 0.4 * t
        if levels: p = np.round(p * levels) / levels
        fpr, tpr, thr = roc_points(p, t)
        sk_fpr, sk_tpr, sk_thr = roc_curve(t, p, drop_intermediate=False)
        assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr) and np.array_equal(thr[1:], sk_thr[1:]) and thr[0] == np.inf
        assert auc(p, t) == pytest.approx(roc_auc_score(t, p), abs=1e-12)
        i = int(np.argmin(sk_fpr + 1 - sk_tpr))
        assert best_threshold(p, t) == min(sk_thr[i], 1.0)
        assert balanced_acc(p, t, 0.5) == pytest.approx(balanced_accuracy_score(t, p >= 0.5), abs=1e-12)
    assert np.isnan(auc([0.2, 0.7], [1, 1]))
