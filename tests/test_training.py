"""Fit configuration and its checks, class balancing by loss, schedules, cross-fitted thresholds."""
import numpy as np
import pandas as pd
import pytest
import torch
from fastai.torch_core import set_seed

from conftest import synthetic_images
from thera_fastai.config import RECIPES, FitConfig, Runtime, cpu_model, native_bf16
from thera_fastai.data.loaders import fold_dataloaders, fold_splits, sample_rows
from thera_fastai.errors import TheraError
from thera_fastai.infer.inference import predict_probs
from thera_fastai.train.learner import BalancedBCELoss, balanced_loss, step_schedule, thera_learner
from thera_fastai.analysis.report import cross_fitted_decisions, cv_summary

FP32 = dict(device='cpu', precision='fp32', channels_last=True)


def test_config_defaults_come_from_the_recipe():
    cfg = FitConfig(arch='resnet18')
    assert (cfg.lr, cfg.bs, cfg.epochs, cfg.stem) == tuple(RECIPES['resnet18'][k] for k in ('lr', 'bs', 'epochs', 'stem'))
    assert FitConfig(epochs=2).epochs == 2 and FitConfig().epochs == RECIPES['airbench']['epochs']
    assert FitConfig().arch == 'airbench' and FitConfig().label_smoothing == 0.2   # airbench's recipe
    assert FitConfig(arch='simple').label_smoothing == 0.0 and FitConfig(label_smoothing=0.1).label_smoothing == 0.1
    assert FitConfig.from_dict(FitConfig(arch='resnet18').to_dict()) == FitConfig(arch='resnet18')


@pytest.mark.parametrize('kwargs, message', [
    (dict(balance='oversample'), "balance must be one of sampler, loss, none (got 'oversample')"),
    (dict(epochs=0), 'epochs must be an integer of at least 1 (got 0)'),
    (dict(bs=0), 'bs must be an integer of at least 1 (got 0)'),
    (dict(tta=-1), 'tta must be an integer of at least 0 (got -1)'),
    (dict(lr=0), 'lr must be in (0, 10) (got 0)'), (dict(lr=-1.0), 'lr must be in (0, 10) (got -1.0)'),
    (dict(folds=1), 'folds must be an integer of at least 2'),
    (dict(stem='default'), 'stem applies to timm models only'),
    (dict(arch='regnetx_002', stem='nopool'), "stem must be one of default, x2, x4 (got 'nopool')"),
    (dict(arch='resnet18', widths=((8,),)), 'widths applies to --arch simple and airbench only'),
    (dict(resize_from=64), 'resize_from must be below the image size 64'),
    (dict(resize_from=8), 'resize_from must be an integer of at least 16'),
    (dict(resize_from=32, epochs=1), 'resize_from needs at least 2 epochs'),
    (dict(ema=1.0), 'ema must be in (0, 1)'), (dict(bootstrap=0.0), 'bootstrap must be in (0, 1]'),
    (dict(mixup=0.0), 'mixup must be a number above 0'), (dict(mixup=True), 'mixup must be a number above 0'),
    (dict(distill_weight=0.0), 'distill_weight must be in (0, 1]'),
    (dict(balance_strength=0.0), 'balance_strength must be in (0, 1]'), (dict(balance_strength=1.5), 'balance_strength must be in (0, 1]'),
    (dict(balance='none', balance_strength=0.5), 'balance_strength sets how far --balance sampler or loss goes'),
    (dict(arch='resnet18', stem='wide'), "stem must be one of default, nopool, conv3 (got 'wide')"),
    (dict(arch='resnet81'), "arch 'resnet81' is neither a package model (simple, resnet18, airbench) nor a timm model; closest names: resnet18"),
    (dict(arch='vgg'), "arch 'vgg' is neither a package model"),
    (dict(label_smoothing=1.0), 'label_smoothing must be in [0, 1)'),
    (dict(sample=2), 'sample must be an integer of at least 4'),
    (dict(train_seed=-1), 'train_seed must be an integer of at least 0'),
])
def test_bad_config_values_name_the_parameter(kwargs, message):
    with pytest.raises(TheraError) as e: FitConfig(**kwargs)
    assert str(e.value) == message or str(e.value).startswith(message)
    assert e.value.cli_message().startswith('--' + e.value.param.replace('_', '-'))


def test_runtime_resolves_on_this_machine_and_is_checked():
    rt = Runtime().resolved()
    assert rt['device'] == 'cpu' and rt['precision'] == ('bf16' if native_bf16() else 'fp32')
    assert Runtime(precision='fp32').resolved()['precision'] == 'fp32'
    with pytest.raises(TheraError, match='precision must be one of'): Runtime(precision='fp64')
    with pytest.raises(TheraError, match='device is cuda but no CUDA GPU is visible'): Runtime(device='cuda')
    assert rt['cpu'] == cpu_model() and rt['cpu']                        # recorded with each fold: thera-compare reads it


def test_the_cpu_is_named_by_its_model_and_the_flags_its_speed_depends_on(tmp_path):
    core = "processor\t: {n}\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\ncpu family\t: 6\nmodel\t\t: 143\nflags\t\t: fpu {flags}\n"
    (tmp_path/'amx').write_text('\n'.join(core.format(n=n, flags='avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile') for n in (0, 1)))
    assert cpu_model(tmp_path/'amx') == 'Intel(R) Xeon(R) Platinum 8480+, family 6 model 143, avx512f avx512_bf16 amx_bf16'
    (tmp_path/'avx2').write_text(core.format(n=0, flags='sse avx avx2 fma'))
    assert cpu_model(tmp_path/'avx2') == 'Intel(R) Xeon(R) Platinum 8480+, family 6 model 143, avx2'
    assert cpu_model(tmp_path/'missing')                                   # elsewhere: what platform says, never empty


def _conv_dtypes_in_fit(tmp_path, precision):
    labels = (np.random.default_rng(0).random(96) > 0.3).astype(np.int8)
    tr, va = fold_splits(labels, 2)[0]
    set_seed(0)
    learn = thera_learner(fold_dataloaders(synthetic_images(labels), labels, tr, va, bs=16), FitConfig(arch='simple'), tmp_path,
                          runtime={**FP32, 'precision': precision})
    seen = set()
    learn.model[0][0].register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    return learn, seen


@pytest.mark.parametrize('cut', ['before_batch', 'after_pred'])
def test_a_batch_or_phase_cut_short_under_autocast_leaves_none_behind(cut, tmp_path):
    # A budget's last epoch stops inside a batch (StopAtStep); an autocast entered and never left keeps its cache of the
    # weights' bf16 copies, and every later fit of the process then trains on stale weights and learns nothing.
    from fastai.callback.core import Callback, CancelBatchException
    from thera_fastai.train.methods import StopAtStep
    class _CutBatch(Callback):
        order = 20
        def after_pred(self):
            if self.training and self.iter == 1: raise CancelBatchException()
    labels = (np.random.default_rng(0).random(96) > 0.3).astype(np.int8)
    tr, va = fold_splits(labels, 2)[0]
    learn = thera_learner(fold_dataloaders(synthetic_images(labels), labels, tr, va, bs=16), FitConfig(arch='simple'), tmp_path,
                          runtime={**FP32, 'precision': 'bf16'})
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=[StopAtStep(2) if cut == 'before_batch' else _CutBatch()])
    assert not torch.is_autocast_enabled('cpu')
    before = learn.model[0][0].weight.detach().clone()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    conv, probe = learn.model[0][0], torch.randn(2, 3, 64, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16): got = conv(probe)  # the weights as they are now, not a cached copy
    want = torch.nn.functional.conv2d(probe.bfloat16(), conv.weight.bfloat16(), None, conv.stride, conv.padding)
    assert conv.bias is None and not torch.equal(before, conv.weight) and torch.allclose(got.float(), want.float(), atol=1e-2)


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


def test_balance_strength_scales_the_class_1_weight_by_a_power_of_the_ratio():
    labels = np.array([0] * 10 + [1] * 90)
    logits, targs = torch.zeros(100, 1), torch.tensor(labels)
    per_class = [balanced_loss(labels, power=0.5)(logits[labels == c], targs[labels == c]).item() * (labels == c).sum() for c in (0, 1)]
    assert np.isclose(per_class[1] / per_class[0], 9 * (1 / 9) ** 0.5, rtol=1e-5)  # 90 rows at weight sqrt(10/90) against 10 at 1


def test_a_config_s_balance_strength_reaches_its_sampler_and_its_loss():
    from thera_fastai.data.loaders import class_weights
    from thera_fastai.train.learner import _loss, config_dataloaders
    labels = (np.random.default_rng(1).random(200) > 0.12).astype(np.int8)
    tr, va = fold_splits(labels, 4)[0]
    for strength in (None, 0.5):
        cfg = FitConfig(arch='simple', bs=16, balance_strength=strength)
        dls = config_dataloaders(cfg, synthetic_images(labels), labels, tr, va, stats=None, device='cpu')
        want = class_weights(labels[tr], 1.0 if strength is None else strength)
        assert np.allclose(dls.train.wgts, want / want.sum())
    n0, n1 = np.bincount(labels[tr])
    assert np.isclose(_loss(FitConfig(arch='simple', balance='loss', balance_strength=0.5), labels[tr]).func.pos_weight.item(), (n0 / n1) ** 0.5, rtol=1e-6)


def test_label_smoothing_moves_the_loss_minimum():
    loss = BalancedBCELoss(smoothing=0.2)
    for p, targ in ((0.9, 1), (0.1, 0)):  # targets 1 and 0 become 0.9 and 0.1: the loss is flat there
        logit = torch.tensor([[np.log(p / (1 - p))]], requires_grad=True)
        loss(logit, torch.tensor([targ])).backward()
        assert abs(logit.grad.item()) < 1e-6


def test_step_schedule_drops_the_lr_like_steplr(tmp_path):
    labels = (np.random.default_rng(0).random(96) > 0.3).astype(np.int8)
    tr, va = fold_splits(labels, 2)[0]
    learn = thera_learner(fold_dataloaders(synthetic_images(labels), labels, tr, va, bs=16), FitConfig(arch='simple'), tmp_path, runtime=FP32)
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3, cbs=step_schedule(1e-3, 2, step_epochs=1))
    per_epoch = np.array_split(np.array(learn.recorder.lrs), 2)
    assert np.allclose(per_epoch[0], 1e-3) and np.allclose(per_epoch[1], 1e-4)


def test_sample_rows_is_stratified_and_checked():
    labels = np.array([0] * 100 + [1] * 900)
    rows = sample_rows(labels, 200, seed=0)
    assert len(rows) == 200 and labels[rows].mean() == 0.9 and (np.diff(rows) > 0).all()
    with pytest.raises(TheraError, match='sample 1001 is larger than the 1000 labelled images'): sample_rows(labels, 1001, 0)


def _hter_minimizing_threshold(p, t):
    "By brute force over every candidate (each distinct probability): the threshold with the lowest HTER, the highest of a tie."
    candidates = np.unique(p)[::-1]
    scores = [((p[t == 0] >= c).mean() + (p[t == 1] < c).mean()) / 2 for c in candidates]
    return candidates[int(np.argmin(scores))]


def test_cross_fitted_threshold_uses_other_rows_only():
    # The headline figure's honesty: each fold is decided at the threshold of the OTHER folds' rows. Fold 0 is shifted,
    # so a threshold that saw its rows differs from one that did not, and a leak changes the decisions.
    rng = np.random.default_rng(0)
    n = 2000
    label, fold = (rng.random(n) > 0.2).astype(int), np.arange(n) % 4
    prob = np.clip(0.25 * label + rng.normal(0.5, 0.15, n) + 0.12 * (fold == 0), 0, 1)
    oof = pd.DataFrame(dict(row=np.arange(n), label=label, fold=fold, prob_tta=prob))
    want = np.zeros(n, bool)
    for k in range(4):
        mine = fold == k
        want[mine] = prob[mine] >= _hter_minimizing_threshold(prob[~mine], label[~mine])
    leaked = prob >= _hter_minimizing_threshold(prob, label)
    assert (want != leaked).sum() > 20  # the data tells the two apart
    assert np.array_equal(cross_fitted_decisions(oof).astype(bool), want)
    s = cv_summary(oof)
    assert s['cross_fitted']['hter'] == pytest.approx(((want[label == 0]).mean() + (~want[label == 1]).mean()) / 2, abs=1e-12)
    assert s['at_best_in_sample']['hter'] <= s['cross_fitted']['hter']
    one = oof.assign(fold=0)  # one fold: the halves by row parity, each at the other's threshold
    half = np.arange(n) % 2
    want_one = np.zeros(n, bool)
    for h in (0, 1):
        mine = half == h
        want_one[mine] = prob[mine] >= _hter_minimizing_threshold(prob[~mine], label[~mine])
    assert np.array_equal(cross_fitted_decisions(one).astype(bool), want_one)


def test_a_train_seed_retrains_on_the_same_folds_and_unset_is_the_fold_seed(data, tmp_path):
    import json
    import thera_fastai as tf
    kw = dict(arch='simple', folds=2, fold=0, epochs=1, bs=16, tta=2, precision='fp32', log=lambda *_: None)
    runs = {name: tf.fit(data, tmp_path/name, **kw, **extra) and pd.read_csv(tmp_path/name/'fold0'/'oof.csv')
            for name, extra in [('default', {}), ('other', dict(train_seed=7)), ('same', dict(train_seed=42))]}
    assert all((r['row'] == runs['default']['row']).all() for r in runs.values())  # the folds stay
    assert not np.allclose(runs['other']['prob'], runs['default']['prob'])  # the initialization, batches and draws change
    assert np.array_equal(runs['same']['prob_tta'], runs['default']['prob_tta'])  # 42 is the fold seed: the same training
    ids = {name: json.loads((tmp_path/name/'config.json').read_text())['run_id'] for name in runs}
    assert len(set(ids.values())) == 3  # a train seed set is part of the run, even the fold seed's own value
