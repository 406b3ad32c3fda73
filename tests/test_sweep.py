"""Optuna sweeps: two workers share one study through a journal file; a bad trial is pruned; the best trial predicts."""
import json, re, os, subprocess, sys
from pathlib import Path

import pytest

from conftest import run_cli, write_dataset
from thera_fastai.errors import TheraError
from thera_fastai.train.sweep import DEFAULT_SPACE, _suggest, open_study, read_space

pytest.importorskip('optuna')


def test_space_files_are_read_and_checked(tmp_path):
    (tmp_path/'s.yaml').write_text("folds: 2\nlr: {low: 0.001, high: 0.01, log: true}\n")
    assert read_space(tmp_path/'s.yaml') == {'folds': 2, 'lr': {'low': 0.001, 'high': 0.01, 'log': True}}
    (tmp_path/'bad.json').write_text('{"lr": {"low": 1}}')
    with pytest.raises(TheraError, match='lr: a searched value needs low and high, or choices'): read_space(tmp_path/'bad.json')
    (tmp_path/'broken.json').write_text('{"lr": ')
    with pytest.raises(TheraError, match='search space is not valid JSON'): read_space(tmp_path/'broken.json')


def test_conditional_values_are_drawn_only_when_they_apply():
    import optuna
    study = optuna.create_study()
    seen = [_suggest(study.ask(), DEFAULT_SPACE) for _ in range(12)]
    archs = {v['arch'] for v in seen}
    assert all(('stem' in v) == (v['arch'] == 'resnet18') for v in seen) and len(archs) >= 2 and archs <= set(DEFAULT_SPACE['arch']['choices'])
    assert all(v['folds'] == 5 and 2 <= v['epochs'] <= 6 and isinstance(v['max_shift_px'], int) for v in seen)


@pytest.mark.slow
def test_two_workers_share_a_study_prune_a_bad_trial_and_the_best_predicts(tmp_path):
    import optuna
    from thera_fastai.train.sweep import open_study
    write_dataset(tmp_path/'data', n_train=160, n_val=12)
    (tmp_path/'space.json').write_text(json.dumps({'folds': 2, 'epochs': 2, 'bs': 16, 'tta': 0, 'lr': {'low': 1e-7, 'high': 1e-2, 'log': True}}))
    journal = tmp_path/'study.journal'
    study = open_study(tmp_path/'sweep', storage=journal)
    for lr in (1e-7, 3e-3, 5e-3, 8e-3): study.enqueue_trial({'lr': lr})   # a known bad trial among good ones
    exe = Path(sys.executable).parent/'thera-sweep'
    args = ['--data', tmp_path/'data', '--out', tmp_path/'sweep', '--trials', 2, '--space', tmp_path/'space.json',
            '--storage', journal, '--prune-above', 0.4, '--precision', 'fp32', '--threads', 1]
    workers = [subprocess.Popen([str(exe), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, 'THERA_CACHE': str(tmp_path/'cache')}) for _ in range(2)]
    outs = [w.communicate(timeout=900) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    study = open_study(tmp_path/'sweep', storage=journal)
    states = {t.params['lr']: t.state for t in study.trials}
    assert len(study.trials) == 4 and states[1e-7] == optuna.trial.TrialState.PRUNED
    bad = next(t for t in study.trials if t.params['lr'] == 1e-7)
    assert bad.intermediate_values.keys() == {0}                       # stopped after fold 0
    complete = sum(s == optuna.trial.TrialState.COMPLETE for s in states.values())
    assert complete >= 1 and set(states.values()) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    shown = run_cli('thera-sweep', '--out', tmp_path/'sweep', '--storage', journal, '--show')
    assert shown.returncode == 0 and f"{complete} complete, {4 - complete} pruned, 4 in all" in shown.stdout
    res = run_cli('thera-predict', '--models', study.best_trial.user_attrs['run'], '--data', tmp_path/'data',
                  '--out', tmp_path/'label_val.txt', env={'THERA_CACHE': str(tmp_path/'cache')})
    assert res.returncode == 0 and len((tmp_path/'label_val.txt').read_text().splitlines()) == 12, res.stderr


def test_the_default_space_fits_data_smaller_than_its_sample_and_bad_fixed_values_stop_before_a_trial(tmp_path):
    from thera_fastai.train.sweep import fit_space, sweep
    said = []
    space = fit_space(DEFAULT_SPACE, 1000, said.append)
    assert space['sample'] is None and DEFAULT_SPACE['sample'] == 20000 and '1,000 labelled images' in said[0]
    assert fit_space(DEFAULT_SPACE, 50000, said.append)['sample'] == 20000 and len(said) == 1
    write_dataset(tmp_path/'data', n_train=40, n_val=4)
    with pytest.raises(TheraError, match='--folds|folds must be'):
        sweep(tmp_path/'data', tmp_path/'sweep', trials=1, space={'folds': 1, 'lr': {'low': 1e-3, 'high': 1e-2}}, log=said.append)
    assert not (tmp_path/'sweep').exists()


@pytest.mark.parametrize('storage, says', [
    ('bogus://x', "cannot open the study storage bogus://x (NoSuchModuleError"),
    ('{tmp}/missing/x.log', "No such file or directory"),
    ('sqlite:///{tmp}/missing/x.db', "unable to open database file"),
    ('plain-name', "is neither a database URL nor a .log/.journal file")])
def test_a_bad_storage_is_one_line_and_leaves_no_folder(storage, says, tmp_path):
    storage = storage.format(tmp=tmp_path)
    with pytest.raises(TheraError, match=re.escape(says)) as e: open_study(tmp_path/'sweep', storage=storage)
    assert e.value.param == 'storage' and not (tmp_path/'sweep').exists()


@pytest.mark.parametrize('text, says', [
    ('{"nosuch": 1}', "'nosuch' is not a fit parameter (known: arch,"),
    ('{"lr": {"low": 0.1, "high": 0.01}}', "lr: low and high must be numbers with low <= high (got 0.1, 0.01)"),
    ('{"lr": {"low": "a", "high": 1}}', "lr: low and high must be numbers"),
    ('{"bs": {"choices": []}}', "bs: choices must be a non-empty list"),
    ('{"bs": {"choices": 16}}', "bs: choices must be a non-empty list"),
    ('lr: [a', "search space is not valid YAML (while parsing a flow sequence")])
def test_a_malformed_space_file_is_one_line_naming_it(text, says, tmp_path):
    path = tmp_path/('s.yaml' if text.startswith('lr:') else 's.json')
    path.write_text(text)
    with pytest.raises(TheraError, match=re.escape(says)) as e: read_space(path)
    assert e.value.path == path and '\n' not in str(e.value)


def test_a_budget_replaces_the_spaces_own_and_takes_out_what_it_sets():
    from thera_fastai.api import make_config
    from thera_fastai.train.sweep import fit_space
    said = []
    space = fit_space(DEFAULT_SPACE, 50000, said.append, budget=600.0)
    assert space['budget'] == 600.0 and 'epochs' not in space and 'resize_from' not in space and 'epochs' in DEFAULT_SPACE
    assert said == ['epochs: a budget of 10 min per fold sets the steps, so epochs leaves the search space',
                    'resize_from: a budget of 10 min per fold sets the steps, so resize_from leaves the search space']
    with pytest.raises(TheraError, match='give --budget or --epochs, not both'): make_config(epochs=3, budget=600.0)  # what the drop avoids
    own = fit_space({'folds': 2, 'epochs': 3, 'budget': 300.0}, 1000, said.append)        # a budget the space file fixes
    assert own == {'folds': 2, 'budget': 300.0} and said[-1].startswith('epochs: a budget of 5 min per fold')
    assert fit_space({'folds': 2, 'budget': 300.0}, 1000, said.append, budget=60.0)['budget'] == 60.0   # the command's wins
    searched = fit_space({'folds': 2, 'epochs': 3, 'budget': {'choices': [60.0, 120.0]}}, 1000, said.append)
    assert 'epochs' not in searched and said[-1] == 'epochs: a searched budget sets the steps, so epochs leaves the search space'
    assert len(said) == 4 and fit_space({'folds': 2, 'epochs': 3}, 1000, said.append) == {'folds': 2, 'epochs': 3}


def _study_with(trials):
    import optuna
    study = optuna.create_study()
    dist = {'lr': optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    for lr, value, attrs in trials:
        study.add_trial(optuna.trial.create_trial(params={'lr': lr}, distributions=dist, value=value, user_attrs=attrs))
    return study


def test_the_leaderboard_says_the_budget_its_trials_share_and_their_minutes():
    from thera_fastai.train.sweep import leaderboard
    shared = leaderboard(_study_with([(1e-3, 0.12, dict(run='a', budget=600.0, minutes=19.5)),
                                      (1e-2, 0.10, dict(run='b', budget=600.0, minutes=20.25))]))
    lines = shared.splitlines()
    assert lines[0].endswith('2 complete, 0 pruned, 2 in all; every fold at a budget of 10 min')
    assert lines[1] == '| trial | pooled HTER, cross-fitted | fit minutes | params | run |'
    assert lines[3] == '| 1 | 0.1000 | 20.2 | {"lr": 0.01} | b |' and lines[4].startswith('| 0 | 0.1200 | 19.5 |')
    mixed = leaderboard(_study_with([(1e-3, 0.12, dict(run='a', budget=600.0, minutes=19.5)), (1e-2, 0.10, dict(run='b', budget=None))]))
    assert 'every fold at a budget' not in mixed and '| budget per fold |' in mixed.splitlines()[1]
    assert '| 1 | 0.1000 | - | none |' in mixed and '| 0 | 0.1200 | 19.5 | 10 min |' in mixed
    older = leaderboard(_study_with([(1e-3, 0.12, dict(run='a'))]))         # a study from before the budget was recorded
    assert 'budget' not in older and '| 0 | 0.1200 | - |' in older
    joined = leaderboard(_study_with([(1e-3, 0.12, dict(run='a')), (1e-2, 0.10, dict(run='b', budget=600.0, minutes=9.9))]))
    assert 'every fold at a budget' not in joined and '| 0 | 0.1200 | - | ? |' in joined and '| 1 | 0.1000 | 9.9 | 10 min |' in joined


def test_a_budgeted_sweep_gives_every_fold_of_every_trial_the_same_time_and_net(tmp_path, monkeypatch):
    from thera_fastai.config import WIDTHS_LADDER
    from thera_fastai.runs import open_run
    from thera_fastai.train import sizing
    from thera_fastai.train.sweep import leaderboard, sweep
    timings = iter([9.0])   # the first sizing finds the widest net holds 9 epochs; any later one would find none does
    monkeypatch.setattr(sizing, 'budget_epochs', lambda *a, **k: next(timings, 0.0))
    write_dataset(tmp_path/'data', n_train=96, n_val=4)
    said = []
    space = {'folds': 2, 'epochs': 3, 'bs': 16, 'tta': 0, 'arch': 'airbench', 'lr': {'low': 1e-3, 'high': 1e-2, 'log': True}}
    study = sweep(tmp_path/'data', tmp_path/'sweep', trials=2, space=space, budget=12.0, log=said.append, precision='fp32',
                  threads=1, cache=tmp_path/'cache')
    assert said[0] == 'epochs: a budget of 0.2 min per fold sets the steps, so epochs leaves the search space'
    widest = '/'.join(map(str, WIDTHS_LADDER[0]))
    assert said[1].startswith(f"widths auto: {widest}, sized by trial 0 for 0.2 min a fold") and len(said) == 4   # and a line per trial
    assert 'every airbench trial at this budget trains this net' in said[1]
    assert study.user_attrs == {'widths_at_12s': list(WIDTHS_LADDER[0])}
    for trial in study.trials:
        run = open_run(trial.user_attrs['run'])
        assert run['config']['budget'] == 12.0 and run['config']['epochs'] is None and trial.user_attrs['budget'] == 12.0
        assert run['config']['widths'] == list(WIDTHS_LADDER[0])      # trial 1 kept trial 0's net, not one sized on its own timing
        folds = [json.loads((Path(trial.user_attrs['run'])/f'fold{k}'/'fold.json').read_text()) for k in (0, 1)]
        assert [f['steps']['budget'] for f in folds] == [12.0, 12.0] and all(f['steps']['steps'] >= 1 for f in folds)
        assert trial.user_attrs['minutes'] == pytest.approx(sum(f['fit_seconds'] for f in folds) / 60)
    assert leaderboard(study).splitlines()[0].endswith(f"every fold at a budget of 0.2 min; airbench widths {widest} sized once for 12 s a fold")


def test_workers_that_start_together_size_the_shared_net_once(tmp_path, monkeypatch):
    "Two workers' first trials ask for the net at once: one sizes it while the other waits, and both train it."
    import threading, time
    import optuna
    from thera_fastai.train import sizing
    from thera_fastai.train.sweep import _shared_widths, open_study
    from thera_fastai.api import make_config
    calls = []
    def slow_sizing(data, cfg, runtime, cache=None, log=None):
        calls.append(threading.get_ident()); time.sleep(1.0)  # the time a real sizing takes, in which a second worker asks
        return (32, 128, 128) if len(calls) == 1 else (64, 256, 256)  # a second timing, under the first's load, would differ
    monkeypatch.setattr(sizing, 'sized_widths', slow_sizing)
    open_study(tmp_path/'sweep', 'study')
    cfg, got, said = make_config(arch='airbench', budget=60.0), {}, []
    def worker(name):  # a worker of its own: its own study object on the shared storage
        study = optuna.load_study(study_name='study', storage=f"sqlite:///{tmp_path/'sweep'/'study.db'}")
        got[name] = _shared_widths(study.ask(), tmp_path/'data', tmp_path/'sweep', cfg, {'threads': 1}, said.append)
    threads = [threading.Thread(target=worker, args=(n,)) for n in 'ab']
    for t in threads: t.start()
    for t in threads: t.join()
    assert len(calls) == 1 and got['a'] == got['b'] == [32, 128, 128] and len(said) == 1
    assert optuna.load_study(study_name='study', storage=f"sqlite:///{tmp_path/'sweep'/'study.db'}").user_attrs == {'widths_at_60s': [32, 128, 128]}


def test_a_trial_is_said_in_one_line_with_where_it_stopped():
    import optuna
    from thera_fastai.train.sweep import _trial_line
    dist = {'lr': optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    done = optuna.trial.create_trial(params={'lr': 0.01}, distributions=dist, value=0.1234, intermediate_values={0: 0.2, 1: 0.1234})
    stopped = optuna.trial.create_trial(params={'lr': 0.01}, distributions=dist, value=0.3, intermediate_values={0: 0.3},
                                        state=optuna.trial.TrialState.PRUNED)
    assert _trial_line(done).split(';')[0].endswith(': complete, HTER 0.1234')
    assert _trial_line(stopped).split(';')[0].endswith(': pruned after fold 0 at HTER 0.3000') and _trial_line(stopped).endswith('{"lr": 0.01}')
