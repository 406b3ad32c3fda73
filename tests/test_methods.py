"""airbench's training method and time-budgeted fits on generated data: the whitening layer, the schedule over the
fit's steps, Lookahead's resume, the budget's plan, and the paired interval that says whether a difference is noise."""
import json, math, time

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from safetensors.torch import load_file

import thera_fastai as tf
from conftest import synthetic_images, write_dataset
from thera_fastai.train.budget import eval_seconds, plan_steps
from thera_fastai.train.methods import fit_step
from thera_fastai.cli import parse_duration, parse_hyp
from thera_fastai.config import AIRBENCH, FitConfig
from thera_fastai.errors import TheraError
from thera_fastai.models import airbench_64, whiten_init
from thera_fastai.analysis.paired import cross_fitted_hter_of, paired_difference, verdict
from thera_fastai.analysis.report import cv_summary

FIT = dict(method='airbench', folds=2, bs=16, tta=0, precision='fp32', log=lambda *_: None)


def test_whitening_decorrelates_the_patches_of_the_images_it_is_set_from():
    labels = np.arange(300) % 2
    x = torch.from_numpy(synthetic_images(labels)).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1) - 0.5  # neighbouring pixels strongly correlated
    model = airbench_64(whiten=True, bn_momentum=0.6, bn_weight=False)
    whiten_init(model[0], x, eps=1e-6)
    out = torch.nn.functional.conv2d(x, model[0].weight, stride=2)
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = half.T @ half / len(half)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=0.02)
    assert torch.equal(out[:, 12:], -out[:, :12])  # the second half are the negated filters
    raw = torch.nn.functional.unfold(x, 2, stride=2).transpose(1, 2).reshape(-1, 12).double()
    assert (raw.T @ raw / len(raw) - torch.diag((raw.T @ raw / len(raw)).diag())).abs().max() > 0.01  # the input was not white


def test_whitening_weights_come_from_the_training_rows_only_and_never_train(data, tmp_path):
    tf.fit(data, tmp_path/'a', fold=0, epochs=1, **FIT)
    other = tmp_path/'other'
    write_dataset(other, n_train=96, n_val=8)  # same labels and so the same folds; now change the held-out images only
    oof = (tmp_path/'a'/'fold0'/'oof.csv').read_text().splitlines()[1:]
    held = [int(line.split(',')[0]) for line in oof]
    for r in held: (other/'train_img'/f"{r + 1:06d}.jpg").write_bytes((other/'train_img'/f"{(r + 1) % 96 + 1:06d}.jpg").read_bytes())
    tf.fit(other, tmp_path/'b', fold=0, epochs=1, **FIT)
    wa, wb = (load_file(tmp_path/r/'fold0'/'model.safetensors') for r in 'ab')
    assert torch.equal(wa['0.weight'], wb['0.weight'])
    fresh = airbench_64(whiten=True)
    assert not torch.equal(wa['0.weight'], fresh[0].weight.detach())
    assert not torch.equal(wa['0.bias'], torch.zeros_like(wa['0.bias']))  # the bias trains for the first steps


class _Rates(Callback):
    "Records the lr of every parameter group at every training step."
    order = 61
    def __init__(self): self.lrs = []
    def before_batch(self):
        if self.training: self.lrs.append([pg['lr'] for pg in self.opt.opt.param_groups] if hasattr(self.opt, 'opt') else [self.opt.hypers[-1]['lr']])


def test_airbench_schedule_warms_up_then_falls_to_zero_with_biases_at_64x(data, tmp_path):
    rates = _Rates()
    s = tf.fit(data, tmp_path/'run', fold=0, epochs=3, cbs=[rates], **FIT)
    lrs = np.array(rates.lrs)
    steps = 3 * (48 // 16)
    assert lrs.shape == (steps, 2) and s['folds'][0]['images_seen'] == steps * 16
    assert np.allclose(lrs[:, 0], 64 * lrs[:, 1])
    peak = int(np.argmax(lrs[:, 1]))
    assert 0 < peak < steps - 1 and np.all(np.diff(lrs[:peak + 1, 1]) > 0) and np.all(np.diff(lrs[peak:, 1]) < 0)
    assert lrs[-1, 1] == 0 and lrs[0, 1] == pytest.approx(AIRBENCH['lr_start'] * lrs[peak, 1], rel=0.2)


def test_a_budget_fit_plans_its_steps_ends_its_schedule_and_stays_in_budget(data, tmp_path):
    rates = _Rates()
    s = tf.fit(data, tmp_path/'run', fold=0, budget=25, cbs=[rates], **{**FIT, 'method': 'adam', 'arch': 'airbench'})
    info = json.loads((tmp_path/'run'/'fold0'/'fold.json').read_text())
    plan = info['steps']
    assert plan['budget'] == 25 and 1 <= plan['steps'] <= plan['epochs'] * plan['steps_per_epoch']
    assert len(rates.lrs) == plan['steps']
    # The plan is the promise a test can check: wall time on a shared machine is bench/method_study.py's to report.
    assert plan['planned_seconds'] <= 25 * 0.95 and info['fold_seconds'] > 0
    assert rates.lrs[-1][0] == pytest.approx(FitConfig(arch='airbench').lr / 1e5)  # one-cycle's end, at the last planned step
    assert s['config']['budget'] == 25 and s['config']['epochs'] is None
    assert info['epochs_run'] == pytest.approx(plan['steps'] / plan['steps_per_epoch'])


class _Slow(Callback):
    "Makes every training step take `seconds` more, so that the fit's own steps are slower than its probe's."
    def __init__(self, seconds): self.seconds = seconds
    def after_batch(self):
        if self.training: time.sleep(self.seconds)


def _misjudged_probe(monkeypatch, step_s):
    from thera_fastai.train import budget, training
    monkeypatch.setattr(budget, 'REPLAN_MIN_STEPS', 4); monkeypatch.setattr(budget, 'REPLAN_AT', 0.0)  # 12 steps an epoch: after 4
    real = training.measure_speed
    monkeypatch.setattr(training, 'measure_speed', lambda learn: {**real(learn), 'step_s': step_s})


SLOW_FIT = {**FIT, 'method': 'adam', 'arch': 'simple', 'bs': 4}  # 48 training rows: 12 steps an epoch


@pytest.mark.parametrize('probe_step_s', [0.01, 1.0])
def test_a_budget_fit_replans_on_its_own_steps_where_the_probe_misjudged_them(data, tmp_path, monkeypatch, probe_step_s):
    _misjudged_probe(monkeypatch, probe_step_s)  # the fit's steps take about 0.1 s: the probe says 10x faster, or 10x slower
    rates, lines = _Rates(), []
    tf.fit(data, tmp_path/'run', fold=0, budget=12, cbs=[rates, _Slow(0.1)], **{**SLOW_FIT, 'log': lines.append})
    info = json.loads((tmp_path/'run'/'fold0'/'fold.json').read_text())
    plan = info['steps']
    assert plan['probe_step_seconds'] == probe_step_s and plan['replanned_at'] == 4 and 0.1 <= plan['step_seconds'] < 0.5
    assert any('re-planned after 4 steps' in line for line in lines)
    assert len(rates.lrs) == plan['steps'] and rates.lrs[-1][0] == pytest.approx(FitConfig(arch='simple').lr / 1e5)  # the schedule ends there
    history = (tmp_path/'run'/'fold0'/'history.csv').read_text().splitlines()[1:]
    assert len(history) == plan['epochs'] == math.ceil(plan['steps'] / 12) and plan['planned_seconds'] <= 12 * 0.95
    if probe_step_s < 0.1: assert plan['steps'] < plan['probe_steps'] / 3 and info['fold_seconds'] < 12 * 1.5  # not the probe's 7x overrun
    else: assert plan['steps'] > 3 * plan['probe_steps'] and plan['epochs'] > 1 >= math.ceil(plan['probe_steps'] / 12)  # more epochs than planned


def test_the_probe_takes_the_best_of_its_tta_calls_not_a_slow_first_one(data, tmp_path, monkeypatch):
    "A first TTA call that pays one-time costs must not enter the estimate of the fold's final passes."
    from fastai.learner import Learner
    from thera_fastai.config import Runtime
    from thera_fastai.data.cache import cached_images
    from thera_fastai.data.loaders import image_stats
    from thera_fastai.data.source import open_dataset
    from thera_fastai.train.budget import measure_speed
    from thera_fastai.train.learner import config_dataloaders, thera_learner
    ds = open_dataset(data)
    images, train, valid = cached_images(ds.train, tmp_path/'cache'), np.arange(64), np.arange(64, 96)
    cfg, runtime = FitConfig(arch='simple', bs=16, tta=1, budget=60), Runtime(precision='fp32').resolved()
    dls = config_dataloaders(cfg, images, ds.labels, train, valid, image_stats(images, train), runtime['device'])
    learn = thera_learner(dls, cfg, tmp_path, ds.labels[train], runtime)
    real, calls = Learner.tta, []
    def first_slow(self, *args, **kwargs):
        calls.append(time.perf_counter())
        if len(calls) == 1: time.sleep(1.0)  # what a first pass can pay once: kernels chosen, buffers allocated
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Learner, 'tta', first_slow)
    speed = measure_speed(learn)
    assert len(calls) == 4 and 0 < speed['aug_img_s'] < 0.25 / 16  # the second of sleep a batch of 16 would be 1/16 s an image
    assert speed['aug_img_s'] >= speed['eval_img_s']


class _StopAfter(Callback):
    "Interrupts the fit after epoch `epoch`'s checkpoint, as Ctrl-C would."
    order = 99
    def __init__(self, epoch): self.stop_epoch = epoch
    def after_epoch(self):
        if self.epoch == self.stop_epoch: raise KeyboardInterrupt


def test_a_replanned_fit_resumes_to_its_replanned_steps(data, tmp_path, monkeypatch):
    _misjudged_probe(monkeypatch, 1.0)
    with pytest.raises(KeyboardInterrupt): tf.fit(data, tmp_path/'run', fold=0, budget=12, cbs=[_Slow(0.1), _StopAfter(1)], **SLOW_FIT)
    monkeypatch.setattr('thera_fastai.train.training.measure_speed', None)  # a resumed fit does not probe again
    rates = _Rates()
    s = tf.fit(data, tmp_path/'run', fold=0, budget=12, cbs=[rates, _Slow(0.1)], **SLOW_FIT)
    info = json.loads((tmp_path/'run'/'fold0'/'fold.json').read_text())
    plan = info['steps']
    assert s['folds'][0]['resumed_from_epoch'] == 2 and plan['replanned_at'] == 4 and plan['steps'] > 24
    assert len(rates.lrs) == plan['steps'] - 24 and rates.lrs[-1][0] == pytest.approx(FitConfig(arch='simple').lr / 1e5)
    assert 24 * 0.1 < info['seconds_before_resume'] < info['fold_seconds'] < 12 * 1.5  # the fold's time counts both processes


def test_a_fit_resumed_on_a_slower_machine_replans_to_keep_its_budget(data, tmp_path, monkeypatch):
    """Planned on fast steps, interrupted after its second epoch, resumed where each step takes 0.15 s more: the resumed
    process times its own first steps and plans again from the seconds its checkpoint says were spent."""
    from thera_fastai.train import budget
    monkeypatch.setattr(budget, 'REPLAN_MIN_STEPS', 4); monkeypatch.setattr(budget, 'REPLAN_AT', 0.0)
    first, lines = _Rates(), []
    with pytest.raises(KeyboardInterrupt): tf.fit(data, tmp_path/'run', fold=0, budget=12, cbs=[first, _Slow(0.02), _StopAfter(1)], **SLOW_FIT)
    ckpt_path = tmp_path/'run'/'fold0'/'ckpt-e1.pth'
    ckpt = torch.load(ckpt_path, weights_only=True)
    fast = ckpt['state']['plan']  # the plan it was interrupted on
    assert 0 < ckpt['state']['spent_seconds'] < 6
    ckpt['state']['spent_seconds'] = 6.0  # as if its first two epochs had taken half the budget
    torch.save(ckpt, ckpt_path)
    monkeypatch.setattr('thera_fastai.train.training.measure_speed', None)  # a resumed fit does not probe again
    rest = _Rates()
    tf.fit(data, tmp_path/'run', fold=0, budget=12, cbs=[rest, _Slow(0.17)], **{**SLOW_FIT, 'log': lines.append})
    info = json.loads((tmp_path/'run'/'fold0'/'fold.json').read_text())
    plan, lrs = info['steps'], [r[0] for r in first.lrs + rest.lrs]
    resumed = [r for r in plan['replans'] if r['when'] == 'resume']
    assert len(resumed) == 1 and resumed[0]['step'] == 24 + 4 and resumed[0]['step_seconds'] >= 0.17
    assert resumed[0]['steps_from'] == fast['steps'] and plan['steps'] < 0.7 * fast['steps']  # fewer steps at the slower pace
    assert any('resuming after epoch 1' in line and 'min budget spent' in line for line in lines)
    assert any(f"re-planned after step 28 (resume of epoch 2)" in line for line in lines)
    assert info['seconds_before_resume'] == 6.0 and info['fold_seconds'] < 12 * 1.25  # kept planned at the first pace: about 2x
    assert info['fold_seconds'] > 6.0 + 0.17 * len(rest.lrs)  # the 6 s spent before count: this process planned what was left
    assert len(lrs) == plan['steps'] and lrs[-1] == pytest.approx(FitConfig(arch='simple').lr / 1e5)  # the schedule still ends at zero
    assert _bends_without_a_jump(lrs, 24) and _bends_without_a_jump(lrs, 28)  # the resume, and the bend after it


class _SlowFrom(Callback):
    """Makes every training step take `before` seconds more until epoch `epoch`, and `after` seconds more from it on;
    `paces` holds the median seconds a step took before and from that epoch."""
    def __init__(self, before, after, epoch): self.before, self.after, self.epoch_from, self.times = before, after, epoch, ([], [])
    def before_batch(self): self.t0 = time.perf_counter()
    def after_batch(self):
        if not self.training: return
        slow = self.epoch >= self.epoch_from
        time.sleep(self.after if slow else self.before)
        self.times[slow].append(time.perf_counter() - self.t0)
    @property
    def paces(self): return tuple(float(np.median(t)) for t in self.times)


def _bends_without_a_jump(lrs, at):
    "Whether the lr at step `at` follows on from the steps before it as smoothly as the steps after it follow on from it."
    step = lambda i: abs(lrs[i] - lrs[i - 1])
    return step(at) <= 2 * max(step(at - 1), step(at + 1)) + 1e-12


def _slowing_fit(monkeypatch):
    "A fit planned at 0.05 s a step (the probe's word, no early re-plan) whose steps take 0.05 s in epoch 0, 0.15 s after."
    from thera_fastai.train import budget, training
    monkeypatch.setattr(budget, 'REPLAN_MIN_STEPS', 100)  # past the 12-step epoch: no early re-plan, no window of steps
    real = training.measure_speed
    monkeypatch.setattr(training, 'measure_speed', lambda learn: {**real(learn), 'step_s': 0.05})
    return _SlowFrom(0.05, 0.15, 1)


def test_a_budget_fit_whose_steps_slow_down_for_good_replans_at_epoch_ends_and_keeps_its_budget(data, tmp_path, monkeypatch):
    rates, lines, slowing = _Rates(), [], _slowing_fit(monkeypatch)
    tf.fit(data, tmp_path/'run', fold=0, budget=12, cbs=[rates, slowing], **{**SLOW_FIT, 'log': lines.append})
    info = json.loads((tmp_path/'run'/'fold0'/'fold.json').read_text())
    plan, lrs = info['steps'], [r[0] for r in rates.lrs]
    later = [r for r in plan['replans'] if r['epoch'] >= 1]
    assert 'replanned_at' not in plan and later and later[0]['step_seconds'] >= 0.15 and {r['when'] for r in plan['replans']} == {'epoch end'}
    # a load: planned at the pace before it, with an expected cost that grows as long as it lasts
    before, after = slowing.paces
    assert all(r['plan_step_seconds'] < (before + after) / 2 for r in later) and later[0]['steps_to'] < later[0]['steps_from']
    assert 0 < later[0]['load_seconds'] < later[-1]['load_seconds'] and plan['steps'] < later[0]['steps_to']
    assert any(f"re-planned after step {later[0]['step']} (epoch end of epoch {later[0]['epoch']}) at" in line and 'a load' in line for line in lines)
    assert plan['planned_seconds'] <= 12 * 0.95 and info['fold_seconds'] < 12 * 1.5  # the first plan would have taken 2-3x
    assert len(lrs) == plan['steps'] and lrs[-1] == pytest.approx(FitConfig(arch='simple').lr / 1e5)  # the schedule ends there
    assert all(r['step'] == (r['epoch'] + 1) * 12 and _bends_without_a_jump(lrs, r['step']) for r in plan['replans'])
    history = (tmp_path/'run'/'fold0'/'history.csv').read_text().splitlines()[1:]
    assert len(history) == plan['epochs'] == math.ceil(plan['steps'] / 12)
    report = (tmp_path/'run'/'report.md').read_text()
    assert f"budget 0.2 min: the fold took {info['fold_seconds'] / 60:.1f}, {plan['steps']} steps" in report
    assert f"re-planned {len(plan['replans'])}x" in report


class _PassingLoad(Callback):
    """Makes every training step take `base` seconds more, and from `start` to `end` seconds into the fit `factor` times
    as long as it then would: a load defined in time and as a share of the pace, so it weighs the same on a fast or a
    slow machine. Records the steps it slowed in `slowed`."""
    def __init__(self, base, factor, start, end): self.base, self.factor, self.start, self.end, self.slowed = base, factor, start, end, []
    def before_fit(self): self.fit_t0 = time.perf_counter()
    def before_batch(self): self.step_t0 = time.perf_counter()
    def after_batch(self):
        if not self.training: return
        time.sleep(self.base)
        if self.start <= time.perf_counter() - self.fit_t0 < self.end:
            time.sleep((self.factor - 1) * (time.perf_counter() - self.step_t0))
            self.slowed.append(fit_step(self.learn))


def test_a_load_that_comes_and_goes_within_epochs_moves_the_end_while_it_lasts(data, tmp_path, monkeypatch):
    from thera_fastai.train import budget, training
    monkeypatch.setattr(budget, 'REPLAN_MIN_STEPS', 4)  # windows of 0.6 s: 15 steps at the base pace, 4-5 at the slow one
    real = training.measure_speed
    monkeypatch.setattr(training, 'measure_speed', lambda learn: {**real(learn), 'step_s': 0.04})
    rates, load = _Rates(), _PassingLoad(0.03, 4, 2.5, 5.0)
    tf.fit(data, tmp_path/'run', fold=0, budget=12, cbs=[rates, load], **SLOW_FIT)
    info = json.loads((tmp_path/'run'/'fold0'/'fold.json').read_text())
    plan, lrs = info['steps'], [r[0] for r in rates.lrs]
    first, last = load.slowed[0], load.slowed[-1]
    windows = [r for r in plan['replans'] if r['when'] == 'window']
    cut = [r for r in windows if first < r['step'] <= last + 1 and r['step'] % 12 and r['steps_to'] < 0.9 * r['steps_from']]
    grown = [r for r in plan['replans'] if r['step'] > last + 1 and r['steps_to'] > r['steps_from']]
    assert cut and grown, plan['replans']  # cut within an epoch while the steps were slow, grown again once they were not
    assert plan['steps'] > min(r['steps_to'] for r in plan['replans'] if r['step'] <= last + 1)  # the load's pace was not taken as lasting
    assert plan['planned_seconds'] <= 12 * 0.95 and info['fold_seconds'] < 12 * 1.5
    assert len(lrs) == plan['steps'] and lrs[-1] == pytest.approx(FitConfig(arch='simple').lr / 1e5)
    assert all(_bends_without_a_jump(lrs, r['step']) for r in windows if r['step'] + 1 < len(lrs))


def test_the_pace_outlook_follows_a_drift_and_expects_a_load_to_last_as_long_again_as_it_has():
    from thera_fastai.train.budget import pace_outlook
    steady = [(30.0 * i, pace) for i, pace in enumerate([0.24, 0.25, 0.24, 0.30, 0.26, 0.25])]
    assert pace_outlook(steady, 180, 300) == (0.25, 0.0)  # the median of the latest five: a slow window does not move it
    drift = [(30.0 * i, 0.24 * 1.02 ** i) for i in range(8)]
    assert pace_outlook(drift, 240, 300) == (drift[5][1], 0.0)  # 2% a window: followed, not taken for a load
    loaded = steady + [(180.0, 0.72)]
    base, loss = pace_outlook(loaded, 210, 300)  # on for 30 s, at a third of the pace
    assert base == 0.25 and loss == pytest.approx(30 * (1 - 0.25 / 0.72))
    base, loss = pace_outlook(loaded + [(210.0, 0.70), (240.0, 0.75)], 270, 60)  # on for 90 s, 60 s left
    assert base == 0.25 and loss == pytest.approx(60 * (1 - 0.25 / 0.75))  # taken as lasting: all 60 s at 0.75 s a step
    assert pace_outlook(loaded + [(210.0, 0.24)], 240, 300) == (0.25, 0.0)  # passed: the machine's pace again
    assert pace_outlook([(0.0, 0.72)], 30, 300) == (0.72, 0.0)  # one window: nothing to compare it with


def test_a_fit_replanned_at_an_epoch_end_resumes_on_its_bent_schedule(data, tmp_path, monkeypatch):
    first = _Rates()
    with pytest.raises(KeyboardInterrupt): tf.fit(data, tmp_path/'run', fold=0, budget=12, cbs=[first, _slowing_fit(monkeypatch), _StopAfter(2)], **SLOW_FIT)
    monkeypatch.setattr('thera_fastai.train.training.measure_speed', None)  # a resumed fit does not probe again
    rest = _Rates()
    s = tf.fit(data, tmp_path/'run', fold=0, budget=12, cbs=[rest], **SLOW_FIT)
    plan = json.loads((tmp_path/'run'/'fold0'/'fold.json').read_text())['steps']
    lrs = [r[0] for r in first.lrs + rest.lrs]
    assert s['folds'][0]['resumed_from_epoch'] == 3 and any(r['epoch'] == 1 for r in plan['replans'])
    assert len(first.lrs) == 36 and len(lrs) == plan['steps'] and lrs[-1] == pytest.approx(FitConfig(arch='simple').lr / 1e5)
    assert _bends_without_a_jump(lrs, 24) and _bends_without_a_jump(lrs, 36)  # the bend, and the resume after it


def test_a_new_end_bends_the_schedules_at_the_step_they_are_at():
    from thera_fastai.train.methods import Lookahead, StepSchedule, anchored
    assert [anchored(s, 10) for s in (0, 5, 10, 12)] == [0.0, 0.5, 1.0, 1.0]
    sched = StepSchedule({'lr': lambda pos: pos}, 101)
    before = sched.position(40)
    sched.retarget(61, at=40)
    assert sched.position(40) == pytest.approx(before) and sched.position(60) == 1.0
    assert sched.position(50) == pytest.approx(before + (1 - before) / 2)  # a straight line from the bend to the new end
    again = StepSchedule({'lr': lambda pos: pos}, 7)
    again.load_checkpoint_state(sched.checkpoint_state())
    assert [again.position(s) for s in (40, 50, 60)] == [sched.position(s) for s in (40, 50, 60)]
    look = Lookahead(100)
    decay = look._decay(40)
    look.retarget(60, at=40)
    assert look._decay(40) == pytest.approx(decay) and look._decay(60) == pytest.approx(0.95 ** 5)
    old = Lookahead(100)
    old.load_checkpoint_state({'w': torch.ones(2)})  # the average alone, as 0.18.0 saved it
    assert old.total == 100 and torch.equal(old.pending['w'], torch.ones(2))


def test_the_plan_fits_steps_and_evaluation_into_what_is_left():
    speed = dict(step_s=2.0, eval_img_s=0.01, aug_img_s=0.02, epoch_s=1.0)
    p = plan_steps(600, 30, speed, 100, 1000, 4)
    used = 30 + p['steps'] * 2.0 + 1000 * ((p['epochs'] + 1) * 0.01 + 4 * 0.02) + p['epochs'] * 1.0
    assert used <= 600 * 0.95 and used == pytest.approx(p['planned_seconds'])
    assert (p['epochs'] - 1) * 100 < p['steps'] <= p['epochs'] * 100 and p['epochs'] >= 2
    assert eval_seconds(2, 4, 1000, 0.01, 0.02, 1.0) == pytest.approx(30 + 80 + 2)
    assert p['steps'] < plan_steps(1200, 30, speed, 100, 1000, 4)['steps']
    # A re-plan after the first epoch: one more validation and the final passes are what is left to evaluate.
    q = plan_steps(600, 300, speed, 100, 1000, 4, done_steps=100, done_epochs=1)
    assert q['epochs'] == 2 and 100 < q['steps'] <= 200
    assert q['planned_seconds'] == pytest.approx(300 + (q['steps'] - 100) * 2.0 + 1000 * (2 * 0.01 + 4 * 0.02) + 1.0)
    assert q['planned_seconds'] <= 600 * 0.95
    assert plan_steps(600, 470, speed, 100, 1000, 4, done_steps=100, done_epochs=1)['steps'] == 100  # room for the final passes only
    with pytest.raises(TheraError): plan_steps(600, 500, speed, 100, 1000, 4, done_steps=100, done_epochs=1)
    # Within the second epoch (a window of steps): that epoch's validation is still to pay, and no plan ends before it.
    m = plan_steps(600, 400, speed, 100, 1000, 4, done_steps=150, done_epochs=1)
    assert m['epochs'] == 2 and 150 < m['steps'] <= 200 and m['eval_seconds'] == pytest.approx(q['eval_seconds'])
    assert m['planned_seconds'] == pytest.approx(400 + (m['steps'] - 150) * 2.0 + m['eval_seconds']) and m['planned_seconds'] <= 600 * 0.95
    with pytest.raises(TheraError): plan_steps(600, 475, speed, 100, 1000, 4, done_steps=120, done_epochs=1)  # not a plan ending at step 100
    with pytest.raises(TheraError, match=r'holds no training step.*its 4 TTA passes take 80 s of that \(--tta 0 drops them\)'):
        plan_steps(100, 5, speed, 100, 1000, 4)
    assert plan_steps(100, 5, speed, 100, 1000, 0)['steps'] > 0  # the advice holds: without TTA the same budget trains
    # A fit that reuses its last validation as the out-of-fold plain pass pays one plain pass less, with TTA or without.
    for tta in (0, 4): assert eval_seconds(2, tta, 1000, 0.01, 0.02, 1.0, reuse_last=True) == pytest.approx(eval_seconds(2, tta, 1000, 0.01, 0.02, 1.0) - 10)
    assert plan_steps(100, 5, speed, 100, 1000, 0, reuse_last=True)['steps'] == plan_steps(100, 5, speed, 100, 1000, 0)['steps'] + 5


def test_lookahead_and_the_plan_resume_to_the_same_weights(data, tmp_path):
    tf.fit(data, tmp_path/'ref', fold=0, epochs=3, **FIT)

    class _Stop(Callback):
        order = 99
        def after_epoch(self):
            if self.epoch == 1: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): tf.fit(data, tmp_path/'resumed', fold=0, epochs=3, cbs=[_Stop()], **FIT)
    s = tf.fit(data, tmp_path/'resumed', fold=0, epochs=3, **FIT)
    assert s['folds'][0]['resumed_from_epoch'] == 2
    assert (tmp_path/'resumed'/'fold0'/'model.safetensors').read_bytes() == (tmp_path/'ref'/'fold0'/'model.safetensors').read_bytes()


def test_each_piece_of_the_method_is_a_switch(data, tmp_path):
    s = tf.fit(data, tmp_path/'plain', fold=0, epochs=1, hyp=dict(whiten=False, lookahead=False, alt_flip=False), **FIT)
    assert s['config']['hyp']['whiten'] is False and s['config']['hyp']['momentum'] == AIRBENCH['momentum']
    w = load_file(tmp_path/'plain'/'fold0'/'model.safetensors')
    assert '1.weight' in w and w['1.weight'].shape == (24,)  # the patch conv keeps its BatchNorm without whitening


def test_only_lookahead_declares_that_it_moves_the_weights_after_the_last_validation():
    from thera_fastai.train.methods import moves_weights_after_validation
    from thera_fastai.train.training import ends_on_validated_weights
    cases = [(FitConfig(), False), (FitConfig(method='airbench'), True), (FitConfig(method='airbench', hyp=dict(lookahead=False)), False)]
    assert [moves_weights_after_validation(c) for c, _ in cases] == [moved for _, moved in cases]
    assert [ends_on_validated_weights(c) for c, _ in cases] == [not moved for _, moved in cases]


@pytest.mark.parametrize('kwargs, message', [
    (dict(method='airbench', arch='simple'), 'method the airbench method trains --arch airbench only'),
    (dict(budget=60, epochs=3), 'budget sets the steps itself'),
    (dict(budget=60, resize_from=32), 'resize_from needs --epochs'),
    (dict(budget=0.5), 'budget must be a number of at least 1'),
    (dict(method='airbench', hyp=dict(lookahed=False)), 'hyp unknown airbench settings lookahed'),
    (dict(method='airbench', hyp=dict(lookahead=1)), 'hyp lookahead must be true or false'),
    (dict(hyp=dict(lookahead=False)), 'hyp applies to --method airbench only'),
    (dict(method='sgd'), 'method must be one of adam, airbench'),
])
def test_bad_method_settings_name_the_parameter(kwargs, message):
    with pytest.raises(TheraError) as e: FitConfig(**kwargs)
    assert str(e.value).startswith(message)
    assert e.value.cli_message().startswith('--' + e.value.param.replace('_', '-'))


def test_configs_written_before_the_method_existed_read_as_adam():
    old = FitConfig().to_dict()
    del old['method'], old['hyp'], old['budget']
    cfg = FitConfig.from_dict(old)
    assert cfg.method == 'adam' and cfg.to_dict() == FitConfig().to_dict()
    assert FitConfig(method='airbench').lr == AIRBENCH['lr'] and FitConfig().wd == 0.01


def test_durations_and_settings_parse_from_the_command_line():
    assert parse_duration('10m') == 600 and parse_duration('90s') == 90 and parse_duration('1.5h') == 5400 and parse_duration('45') == 45
    with pytest.raises(TheraError, match='budget is not a duration'): parse_duration('ten minutes')
    assert parse_hyp('lookahead=false,bias_scaler=32,warmup=0.1') == dict(lookahead=False, bias_scaler=32, warmup=0.1)
    with pytest.raises(TheraError, match='hyp .lookahead. is not k=v'): parse_hyp('lookahead')


def _scores(rng, labels, strength):
    return 1 / (1 + np.exp(-(strength * (2 * labels - 1) + rng.normal(0, 1, len(labels)))))


def test_the_paired_interval_covers_a_known_difference_and_says_so():
    rng = np.random.default_rng(0)
    big = (rng.random(200_000) > 0.15).astype(int)
    groups_big = np.arange(len(big)) % 2
    weak, strong = _scores(rng, big, 1.0), _scores(rng, big, 1.3)
    truth = cross_fitted_hter_of(strong, big, groups_big) - cross_fitted_hter_of(weak, big, groups_big)
    assert truth < -0.02
    covered, said_better = 0, 0
    for seed in range(10):
        rows = np.random.default_rng(seed).choice(len(big), 3000, replace=False)
        d = paired_difference(weak[rows], strong[rows], big[rows], rows % 2, n_boot=150, seed=seed)
        covered += d['lo'] <= truth <= d['hi']
        said_better += verdict(d, 'weak', 'strong') == 'strong is better than weak'
    assert covered >= 8 and said_better >= 5
    rows = np.arange(3000)
    same = paired_difference(weak[rows], weak[rows], big[rows], rows % 2, n_boot=100)
    assert same['diff'] == same['lo'] == same['hi'] == 0 and verdict(same) == 'within the noise'


def test_the_auc_interval_covers_a_known_ranking_difference_and_shows_a_small_one_the_hter_misses():
    from thera_fastai.analysis.paired import ranking_verdict
    from thera_fastai.metrics import auc
    rng = np.random.default_rng(4)
    big = (rng.random(200_000) > 0.15).astype(int)
    weak, strong = _scores(rng, big, 1.0), _scores(rng, big, 1.3)
    hard = rng.normal(0, 1, len(big))  # each row's difficulty: two runs of one family share most of their errors
    def sharing(strength): return 1 / (1 + np.exp(-(strength * (2 * big - 1) + hard + rng.normal(0, 0.4, len(big)))))
    base, closer = sharing(1.0), sharing(1.06)
    truth = auc(strong, big) - auc(weak, big)
    covered, ranked, small_auc, small_hter = 0, 0, 0, 0
    for seed in range(10):
        rows = np.random.default_rng(seed).choice(len(big), 3000, replace=False)
        d = paired_difference(weak[rows], strong[rows], big[rows], rows % 2, n_boot=150, seed=seed)
        assert d['auc_diff'] == pytest.approx(auc(strong[rows], big[rows]) - auc(weak[rows], big[rows]), abs=1e-12)
        covered += d['auc_lo'] <= truth <= d['auc_hi']
        ranked += ranking_verdict(d, 'weak', 'strong') == 'strong ranks better than weak'
        near = paired_difference(base[rows], closer[rows], big[rows], rows % 2, n_boot=150, seed=seed)  # a small gain
        small_auc += ranking_verdict(near) == 'b ranks better than a'
        small_hter += verdict(near) == 'b is better than a'
    assert covered >= 8 and ranked == 10
    assert small_auc >= small_hter + 4  # the ranking shows the small gain on more of the same draws than the HTER does
    rows = np.arange(3000)
    swapped = paired_difference(strong[rows], weak[rows], big[rows], rows % 2, n_boot=100)
    assert swapped['auc_hi'] < 0 and ranking_verdict(swapped, 'strong', 'weak') == 'weak ranks worse than strong'
    same = paired_difference(weak[rows], weak[rows], big[rows], rows % 2, n_boot=100)
    assert same['auc_diff'] == same['auc_lo'] == same['auc_hi'] == 0 and ranking_verdict(same) == 'within the noise'


def test_the_paired_interval_at_fixed_thresholds_covers_a_known_difference_of_decisions():
    from thera_fastai.metrics import hter
    rng = np.random.default_rng(3)
    big = (rng.random(200_000) > 0.15).astype(int)
    weak, strong = _scores(rng, big, 1.0), _scores(rng, big, 1.3)
    at = (0.55, 0.6)  # each model's own threshold, picked on other rows
    truth = hter(strong, big, at[1]) - hter(weak, big, at[0])
    assert truth < -0.02
    covered, said_better = 0, 0
    for seed in range(10):
        rows = np.random.default_rng(seed).choice(len(big), 3000, replace=False)
        d = paired_difference(weak[rows], strong[rows], big[rows], n_boot=150, seed=seed, thresholds=at)
        assert d['diff'] == pytest.approx(hter(strong[rows], big[rows], at[1]) - hter(weak[rows], big[rows], at[0]), abs=1e-12)
        covered += d['lo'] <= truth <= d['hi']
        said_better += verdict(d, 'weak', 'strong') == 'strong is better than weak'
    assert covered >= 8 and said_better >= 5
    votes = (strong >= 0.6).astype(float)[:3000]  # decisions compare at 0.5
    same = paired_difference(strong[:3000], votes, big[:3000], n_boot=50, thresholds=(0.6, 0.5))
    assert same['diff'] == same['lo'] == same['hi'] == 0


def test_the_blend_is_compared_with_the_first_run_and_with_the_best():
    import pandas as pd
    from thera_fastai.analysis.comparison import paired_markdown
    from thera_fastai.analysis.paired import paired_differences
    rng = np.random.default_rng(2)
    labels = (rng.random(3000) > 0.2).astype(int)
    joint = pd.DataFrame(dict(row=np.arange(3000), label=labels, fold=np.arange(3000) % 3,
                              prob_weak=_scores(rng, labels, 0.8), prob_strong=_scores(rng, labels, 1.4)))
    joint['prob_blend'] = joint[['prob_weak', 'prob_strong']].mean(axis=1)
    paired = paired_differences(joint, ['weak', 'strong'], n_boot=50)
    assert list(zip(paired['baseline'], paired['run'])) == [('weak', 'strong'), ('weak', 'blend'), ('strong', 'blend')]
    hter = {n: cross_fitted_hter_of(joint[f'prob_{n}'].to_numpy(), labels, joint['fold'].to_numpy()) for n in ('weak', 'strong', 'blend')}
    assert paired['diff'].tolist() == pytest.approx([hter['strong'] - hter['weak'], hter['blend'] - hter['weak'], hter['blend'] - hter['strong']])
    assert '| blend minus strong |' in paired_markdown(paired) and '| blend |' in paired_markdown(paired)
    assert list(paired_differences(joint.assign(prob_weak=joint['prob_strong'] * 0.9), ['strong', 'weak'], n_boot=5)['run']) == ['weak', 'blend']  # the first is the best


def test_the_comparison_says_where_the_ranking_differs_beyond_the_noise_and_the_hter_does_not():
    import pandas as pd
    from thera_fastai.analysis.comparison import paired_markdown
    rows = [dict(run='wide', baseline='def', diff=0.0017, lo=-0.0024, hi=0.0073, se=0.0024, n_rows=20000, n_boot=1000,
                 auc_diff=-0.0004, auc_lo=-0.0014, auc_hi=0.0006, verdict='within the noise', ranking='within the noise'),
            dict(run='blend', baseline='def', diff=0.0006, lo=-0.0046, hi=0.0030, se=0.0020, n_rows=20000, n_boot=1000,
                 auc_diff=0.0009, auc_lo=0.0003, auc_hi=0.0015, verdict='within the noise', ranking='blend ranks better than def')]
    text = paired_markdown(pd.DataFrame(rows))
    assert '| blend | +0.0006 | [-0.0046, +0.0030] | 0.0020 | within the noise | +0.0009 [+0.0003, +0.0015] | blend ranks better than def |' in text
    assert text.rstrip().splitlines()[-1].startswith('blend: the AUC difference is beyond the noise and the HTER difference is not.')
    assert 'beyond the noise and the HTER' not in paired_markdown(pd.DataFrame(rows[:1]))


def test_the_paired_point_estimate_is_the_reports_cross_fitted_hter():
    import pandas as pd
    rng = np.random.default_rng(1)
    labels = (rng.random(2000) > 0.2).astype(int)
    a, b = _scores(rng, labels, 1.0), _scores(rng, labels, 1.2)
    oof = pd.DataFrame(dict(row=np.arange(2000), label=labels, fold=np.arange(2000) % 4))
    d = paired_difference(a, b, labels, oof['fold'].to_numpy(), n_boot=10)
    report = [cv_summary(oof.assign(prob_tta=p))['cross_fitted']['hter'] for p in (a, b)]
    assert d['diff'] == pytest.approx(report[1] - report[0], abs=1e-12)


def test_newton_schulz_keeps_the_singular_vectors_and_brings_the_values_near_one():
    from thera_fastai.train.methods import newton_schulz
    g = torch.randn(16, 40, generator=torch.Generator().manual_seed(0)) * torch.logspace(-1, 1, 40)
    x = newton_schulz(g)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    core = u.T @ x @ vh.T  # diagonal where x keeps g's singular vectors
    assert torch.allclose(core, torch.diag(torch.diagonal(core)), atol=1e-4)
    assert torch.diagonal(core).min() > 0.3 and torch.diagonal(core).max() < 1.3  # airbench: near Uniform(0.5, 1.5)
    assert newton_schulz(g.T).shape == (40, 16) and torch.allclose(newton_schulz(g.T), x.T, atol=1e-5)


def test_muon_steps_the_filters_along_orthogonalized_momentum_and_the_rest_as_torch_sgd():
    from thera_fastai.train.methods import MuonSGD, newton_schulz
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(8, 4, 3, 3, generator=gen), torch.randn(8, generator=gen)
    w_opt, b_opt, b_ref = w.clone().requires_grad_(), b.clone().requires_grad_(), b.clone().requires_grad_()
    opt = MuonSGD([{'params': [b_opt]}, {'params': [w_opt]}], lr=0.1, momentum=0.85, weight_decay=0.01, muon_momentum=0.6)
    opt.param_groups[1]['muon'] = True
    ref = torch.optim.SGD([b_ref], lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    grads = [(torch.randn(8, 4, 3, 3, generator=gen), torch.randn(8, generator=gen)) for _ in range(3)]
    buf = torch.zeros_like(w)
    for gw, gb in grads:
        w_opt.grad, b_opt.grad, b_ref.grad = gw.clone(), gb.clone(), gb.clone()
        before = w_opt.detach().clone()
        opt.step(); ref.step()
        buf = 0.6 * buf + gw
        rescaled = before * 8 ** 0.5 / before.norm()
        want = rescaled - 0.1 * newton_schulz((gw + 0.6 * buf).reshape(8, -1)).view_as(gw)
        assert torch.allclose(w_opt.detach(), want, atol=1e-5)
    assert torch.allclose(b_opt, b_ref, atol=1e-6)


def test_muon_is_a_switch_whose_filters_follow_the_schedule_and_resume_to_the_same_weights(data, tmp_path):
    rates = _Rates()
    kw = dict(fold=0, epochs=3, hyp=dict(muon=True), **FIT)
    s = tf.fit(data, tmp_path/'ref', cbs=[rates], **kw)
    lrs = np.array(rates.lrs)
    assert lrs.shape[1] == 3 and 0.9 * AIRBENCH['muon_lr'] < lrs[:, 2].max() <= AIRBENCH['muon_lr'] and lrs[-1, 2] == 0
    assert np.allclose(lrs[:, 2] / lrs[:, 2].max(), lrs[:, 1] / lrs[:, 1].max())  # the SGD groups' schedule
    plain = tf.fit(data, tmp_path/'plain', fold=0, epochs=3, **FIT)
    assert s['run_id'] != plain['run_id'] and plain['config']['hyp']['muon'] is False

    class _Stop(Callback):
        order = 99
        def after_epoch(self):
            if self.epoch == 1: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): tf.fit(data, tmp_path/'resumed', cbs=[_Stop()], **kw)
    tf.fit(data, tmp_path/'resumed', **kw)
    assert (tmp_path/'resumed'/'fold0'/'model.safetensors').read_bytes() == (tmp_path/'ref'/'fold0'/'model.safetensors').read_bytes()


def test_at_32px_the_whitening_layer_is_set_from_the_downsampled_patches_it_will_see(data, tmp_path):
    from thera_fastai.data.cache import decode_jpeg
    from thera_fastai.models import Downsample
    tf.fit(data, tmp_path/'low', fold=0, epochs=1, resolution=32, **{**FIT, 'hyp': dict(whiten_eps=1e-9)})
    w = load_file(tmp_path/'low'/'fold0'/'model.safetensors')
    assert w['1.weight'].shape == (24, 3, 2, 2)  # the whitening conv, one index behind the Downsample (no weights)
    record = json.loads((tmp_path/'low'/'fold0'/'fold.json').read_text())
    assert record['config']['resolution'] == 32
    held = {int(line.split(',')[0]) for line in (tmp_path/'low'/'fold0'/'oof.csv').read_text().splitlines()[1:]}
    train = [r for r in range(96) if r not in held]
    images = np.stack([decode_jpeg((data/'train_img'/f"{r + 1:06d}.jpg").read_bytes(), r) for r in train])
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in record['stats'])
    x = Downsample(2)((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std)
    out = torch.nn.functional.conv2d(x, w['1.weight'], stride=2)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    assert torch.allclose(out.T @ out / len(out), torch.eye(12, dtype=torch.float64), atol=0.02)  # white at 32 px


def test_resolution_must_divide_the_image_size_and_a_full_size_run_keeps_its_id():
    from thera_fastai.runs import run_id
    for bad in (48, 64, 8, 20):
        with pytest.raises(TheraError, match='resolution'): FitConfig(resolution=bad)
    with pytest.raises(TheraError, match='resolution'): FitConfig(arch='simple', epochs=4, resize_from=32, resolution=32)
    full = FitConfig()
    assert 'resolution' in full.to_dict() and run_id(full, 'k') != run_id(FitConfig(resolution=32), 'k')
    legacy = {k: v for k, v in full.to_dict().items() if k != 'resolution'}  # a config written before the field existed
    assert run_id(FitConfig.from_dict(legacy), 'k') == run_id(full, 'k')
