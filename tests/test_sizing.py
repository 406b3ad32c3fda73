"""`--widths auto` on generated data: the widest net of the ladder whose budget holds `AUTO_MIN_EPOCHS`, timed by the
budget's probe; the choice is the run's config, kept on resume without timing again."""
import json

import numpy as np
import pytest

import thera_fastai as tf
from conftest import synthetic_images
from thera_fastai.api import default_out
from thera_fastai.cli import parse_widths
from thera_fastai.config import AUTO_MIN_EPOCHS, AUTO_WIDTHS, WIDTHS_LADDER, FitConfig, Runtime
from thera_fastai.errors import TheraError
from thera_fastai.models import model_profile
from thera_fastai.train import sizing
from thera_fastai.train.budget import plan_steps

FIT = dict(folds=2, bs=16, tta=0, precision='fp32')


def _speed_by_flops(seconds_per_gflop, calls):
    "A probe whose step costs `seconds_per_gflop` for each training GFLOP of the model it times (evaluation free)."
    def measure(learn):
        calls.append(model_profile(learn.model)['train_gflop'])
        return dict(step_s=seconds_per_gflop * calls[-1], eval_img_s=0.0, aug_img_s=0.0, epoch_s=0.0)
    return measure


def _epochs(budget, step_s, steps_per_epoch=3):
    plan = plan_steps(budget, 0.0, dict(step_s=step_s, eval_img_s=0.0, aug_img_s=0.0, epoch_s=0.0), steps_per_epoch, 48, 0)
    return plan['steps'] / steps_per_epoch


def test_auto_is_the_default_and_sizes_only_a_budgeted_airbench_fit():
    cfg = FitConfig(budget=60)
    assert cfg.widths == AUTO_WIDTHS and cfg.to_dict()['widths'] == 'auto' and cfg.sized_to_budget
    with pytest.raises(TheraError, match='chosen when the run starts'): cfg.model_kwargs()
    for unsized in (dict(), dict(widths='auto'), dict(arch='simple', budget=60), dict(arch='resnet18', budget=60)):
        plain = FitConfig(**unsized)  # nothing to size: the arch's own widths, as before `auto` was the default
        assert plain.widths is None and not plain.sized_to_budget and 'widths' not in plain.model_kwargs()
    saved = {**FitConfig(budget=60).to_dict(), 'widths': None}  # a budgeted run saved before: the default net, as it trained
    assert FitConfig.from_dict(saved).widths is None
    assert FitConfig(budget=60, widths=(32, 128, 128)).widths == (32, 128, 128)
    assert parse_widths('auto', 'airbench') == parse_widths(' AUTO ', 'airbench') == AUTO_WIDTHS
    assert default_out(FitConfig(budget=600)).name == 'airbench-budget10m'  # the default is not a variant
    assert FitConfig.from_dict({k: v for k, v in saved.items() if k != 'widths'}).widths is None  # nor one saved before widths


def test_a_data_parallel_fit_keeps_the_arch_widths_untimed(monkeypatch):
    monkeypatch.setattr(sizing, 'world_size', lambda: 2)
    monkeypatch.setattr(sizing, 'measure_speed', None)
    lines = []
    sized = sizing.size_for_budget(FitConfig(budget=60), '/nonexistent/run', None, None, None, None, None, lines.append)
    assert sized.widths is None and sized.model_kwargs() == {} and 'not timed' in lines[0]


@pytest.mark.parametrize('seconds_per_gflop, chosen', [(10.0, WIDTHS_LADDER[1]), (40.0, WIDTHS_LADDER[-1]), (1.0, WIDTHS_LADDER[0])])
def test_auto_takes_the_widest_net_whose_budget_holds_its_epochs(monkeypatch, seconds_per_gflop, chosen):
    calls, lines = [], []
    monkeypatch.setattr(sizing, 'measure_speed', _speed_by_flops(seconds_per_gflop, calls))
    labels = np.arange(64) % 3 == 0
    images, rows = synthetic_images(labels.astype(int)), np.arange(64)
    cfg = FitConfig(widths='auto', budget=60, **{k: v for k, v in FIT.items() if k != 'precision'})
    sized = sizing.size_for_budget(cfg, '/nonexistent/run', images, labels.astype(int), rows[:48], rows[48:], Runtime(precision='fp32').resolved(), lines.append)
    assert sized.widths == chosen and sized.budget == 60 and sized.to_dict() == {**cfg.to_dict(), 'widths': list(chosen)}
    want = AUTO_MIN_EPOCHS
    held = [_epochs(60, seconds_per_gflop * g) for g in calls]  # what each timed net's plan holds, as the fit would plan it
    assert len(calls) == WIDTHS_LADDER.index(chosen) + 1  # widest first, stopping at the first that holds the epochs
    assert all(e < want for e in held[:-1]) and (held[-1] >= want or chosen == WIDTHS_LADDER[-1])
    assert calls == sorted(calls, reverse=True) and f"widths auto: {'/'.join(map(str, chosen))}" in lines[0]


def test_an_auto_sized_run_keeps_its_widths_on_resume_without_timing_again(data, tmp_path, monkeypatch):
    calls, lines = [], []
    monkeypatch.setattr(sizing, 'measure_speed', _speed_by_flops(1.6, calls))  # in 10 s the default net holds 2 epochs, 48/192/192 3.7
    s = tf.fit(data, tmp_path/'run', fold=0, budget=10, widths='auto', log=lines.append, **FIT)
    run = json.loads((tmp_path/'run'/'config.json').read_text())
    assert run['config']['widths'] == list(WIDTHS_LADDER[1]) and len(calls) == 2 and s['config']['widths'] == list(WIDTHS_LADDER[1])
    learn = tf.load_fold_learner(tmp_path/'run'/'fold0')  # the saved weights load strictly into the chosen net
    assert model_profile(learn.model)['train_gflop'] == pytest.approx(calls[1])
    monkeypatch.setattr(sizing, 'measure_speed', None)  # a second start on a machine of any speed does not time again
    written_before = {**run, 'config': {k: v for k, v in run['config'].items() if k != 'mixup'}}  # as before the field existed
    (tmp_path/'run'/'config.json').write_text(json.dumps(written_before))
    again = []
    s2 = tf.fit(data, tmp_path/'run', budget=10, widths='auto', log=again.append, **FIT)  # fold 1 too, in the same run
    assert any(f"as the run in {tmp_path/'run'} started" in line for line in again) and len(s2['folds']) == 2
    assert json.loads((tmp_path/'run'/'config.json').read_text())['run_id'] == run['run_id']
    assert json.loads((tmp_path/'run'/'fold1'/'fold.json').read_text())['config']['widths'] == list(WIDTHS_LADDER[1])
