"""The run folder: weights and JSON only, a fold rebuilt from them, resume to the same files, runs shared across machines."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastai.callback.core import Callback
from fastai.learner import Learner

import thera_fastai as tf
import thera_fastai.train.training as training
from conftest import write_dataset
from thera_fastai.errors import TheraError
from thera_fastai.runs import fold_lock

FIT = dict(arch='simple', folds=2, epochs=3, bs=16, tta=2, precision='fp32', log=lambda *_: None)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('runs')
    write_dataset(root/'data', n_train=120, n_val=16)
    return root/'data'


@pytest.fixture(scope='module')
def reference(data, tmp_path_factory):
    "Fold 0 of a 2-fold fp32 run, never interrupted."
    out = tmp_path_factory.mktemp('ref')/'run'
    tf.fit(data, out, fold=0, **FIT)
    return out


def _same_fold(a, b):
    ha, hb = (pd.read_csv(r/'fold0'/'history.csv') for r in (a, b))
    assert list(ha['epoch']) == list(range(FIT['epochs'])) and ha.drop(columns='time').equals(hb.drop(columns='time'))
    assert (a/'fold0'/'oof.csv').read_bytes() == (b/'fold0'/'oof.csv').read_bytes()
    assert (a/'fold0'/'model.safetensors').read_bytes() == (b/'fold0'/'model.safetensors').read_bytes()


def test_run_folder_holds_weights_and_json_only(reference):
    files = sorted(p.relative_to(reference).as_posix() for p in reference.rglob('*') if p.is_file() and not p.name.startswith('.'))
    assert 'fold0/model.safetensors' in files and 'fold0/fold.json' in files and not [f for f in files if f.endswith(('.pkl', '.pth'))]
    info = json.loads((reference/'fold0'/'fold.json').read_text())
    assert set(info) >= {'config', 'stats', 'threshold', 'versions', 'runtime'} and info['runtime']['precision'] == 'fp32'
    record = json.loads((reference/'config.json').read_text())
    assert 'precision' not in record['config']
    import re, subprocess, sys
    in_checkout = subprocess.run(['git', '-C', str(Path(tf.__file__).parent), 'rev-parse', 'HEAD'], capture_output=True).returncode == 0
    for made in (record, info):  # which code and which command made the run and each fold
        assert made['command'] == [Path(sys.argv[0]).name, *sys.argv[1:]]
        assert re.fullmatch(r'[0-9a-f]{40}(\+changes)?', made['versions']['commit']) if in_checkout else made['versions']['commit'] is None


def test_rebuilt_fold_predicts_what_it_predicted_in_training(reference, data):
    learn = tf.load_fold_learner(reference/'fold0', device='cpu')
    oof = pd.read_csv(reference/'fold0'/'oof.csv')
    images = tf.cached_images(tf.open_dataset(data).train)[oof['row'].to_numpy()]
    from thera_fastai.data.loaders import images_dl
    from thera_fastai.infer.inference import predict_probs
    assert np.abs(predict_probs(learn, images_dl(learn.dls, images)) - oof['prob'].to_numpy()).max() < 1e-6
    assert np.abs(predict_probs(learn, images_dl(learn.dls, images), 2, seed=42) - oof['prob_tta'].to_numpy()).max() < 1e-6
    _, _, probs = learn.predict(str(data/'val_img'/'000001.jpg'), rm_type_tfms=0)   # fastai's own API on a JPEG path
    assert probs.shape == (2,) and 0 <= float(probs[1]) <= 1


def test_rebuilt_fold_with_data_has_the_folds_rows(reference, data):
    learn = tf.load_fold_learner(reference/'fold0', data=data)
    oof = pd.read_csv(reference/'fold0'/'oof.csv')
    assert len(learn.dls.valid_ds) == len(oof) and len(learn.dls.train_ds) == 120 - len(oof)
    probs, targs = learn.get_preds()
    assert np.array_equal(targs.view(-1).numpy(), oof['label'].to_numpy())


def test_weights_that_do_not_fit_the_config_are_one_error(reference, tmp_path):
    import shutil
    run = tmp_path/'run'; shutil.copytree(reference, run)
    info = json.loads((run/'fold0'/'fold.json').read_text())
    info['config']['widths'] = [[8], [16]]
    (run/'fold0'/'fold.json').write_text(json.dumps(info))
    with pytest.raises(TheraError, match=r'model.safetensors: weights do not fit the run.s config'): tf.load_fold_learner(run/'fold0')


class _Stop(Callback):
    "Raises KeyboardInterrupt, as a kill would stop the process, at one moment of the fit."
    order = 99
    def __init__(self, when): self.when = when
    def after_batch(self):
        if self.when == 'mid-epoch' and self.training and self.epoch == 1 and self.iter == 2: raise KeyboardInterrupt
    def after_epoch(self):
        if self.when == 'between-epochs' and self.epoch == 1: raise KeyboardInterrupt


def _raise(*_, **__): raise KeyboardInterrupt


@pytest.mark.parametrize('when, resumes_at', [('mid-epoch', 1), ('between-epochs', 2), ('oof-prediction', 3), ('saving-weights', 3)])
def test_interrupted_fold_resumes_to_the_same_files(when, resumes_at, data, reference, tmp_path, monkeypatch):
    cbs = [_Stop(when)] if when in ('mid-epoch', 'between-epochs') else []
    if when == 'oof-prediction': monkeypatch.setattr(training, 'write_oof', _raise)
    elif not cbs: monkeypatch.setattr(training, 'save_weights', _raise)
    with pytest.raises(KeyboardInterrupt): tf.fit(data, tmp_path/'run', fold=0, cbs=cbs, **FIT)
    assert not (tmp_path/'run'/'fold0'/'fold.json').exists()
    monkeypatch.undo()
    summary = tf.fit(data, tmp_path/'run', fold=0, **FIT)
    assert summary['folds'][0]['resumed_from_epoch'] == resumes_at
    _same_fold(reference, tmp_path/'run')
    assert not list((tmp_path/'run').rglob('*.tmp')) and not list((tmp_path/'run').rglob('ckpt-*'))


def test_a_run_is_extended_on_a_machine_with_another_precision(data, tmp_path, monkeypatch):
    import thera_fastai.config as config
    monkeypatch.setattr(config, 'native_bf16', lambda device='cpu': True)   # a CPU with bf16: auto resolves to bf16
    monkeypatch.setattr(config, 'cpu_model', lambda: 'Zen 4, avx512f avx512_bf16')
    args = dict(FIT, epochs=1, tta=0, precision='auto')
    tf.fit(data, tmp_path/'run', fold=0, **args)
    monkeypatch.setattr(config, 'native_bf16', lambda device='cpu': False)
    monkeypatch.setattr(config, 'cpu_model', lambda: 'Zen 2, avx2')
    summary = tf.fit(data, tmp_path/'run', fold=1, **{**args, 'precision': 'fp32'})
    assert summary['complete'] and [summary['folds'][k]['runtime']['precision'] for k in (0, 1)] == ['bf16', 'fp32']
    report = (tmp_path/'run'/'report.md').read_text()
    assert '(cpu bf16)' in report and '(cpu fp32)' in report
    threads = summary['folds'][0]['runtime']['threads']
    machine = report.split('## Machine\n\n')[1].split('\n\n')[0].splitlines()
    assert [l.split('; host')[0] for l in machine] == [f"- fold 0: Zen 4, avx512f avx512_bf16; cpu, {threads} threads",
                                                       f"- fold 1: Zen 2, avx2; cpu, {threads} threads"]


def test_another_config_in_the_same_folder_is_refused_before_anything_is_written(reference, data):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob('*')}
    with pytest.raises(TheraError, match=r'holds a run with another config \(epochs differ\)'): tf.fit(data, reference, **{**FIT, 'epochs': 1})
    assert {p: p.stat().st_mtime_ns for p in reference.rglob('*')} == before


def test_a_fold_held_by_another_process_is_refused(data, reference, tmp_path):
    import shutil
    run = tmp_path/'run'; shutil.copytree(reference, run)
    with fold_lock(run, 1):
        with pytest.raises(TheraError, match=r'fold 1 is being trained by \S+ pid \d+; wait for it'): tf.fit(data, run, fold=1, **FIT)


def test_predict_refuses_missing_folds_unless_partial(reference, data):
    with pytest.raises(TheraError, match='fold 1 of 2 not finished'): tf.predict(reference, data)
    a = tf.predict(reference, data, partial=True)
    b = tf.predict(reference, data, partial=True)
    assert list(a.columns) == ['image', 'prob_fold0', 'vote_fold0', 'mean_prob', 'label'] and len(a) == 16
    assert a.equals(b)   # TTA is seeded: the same call gives the same labels
    plain = tf.predict(reference, data, partial=True, tta=0)   # TTA's draws follow the batch, so `first` is checked plainly
    head = tf.predict(reference, data, partial=True, tta=0, first=3)
    # oneDNN's summation order follows the batch size (AVX-512 kernels): the same within float32 rounding, not bit for bit
    assert list(head['image']) == list(plain['image'][:3]) and (head['label'] == plain['label'][:3]).all()
    assert np.abs(head['prob_fold0'] - plain['prob_fold0'][:3]).max() < 1e-5


def test_the_soft_vote_is_the_mean_probability_at_the_mean_threshold_and_the_hard_one_the_majority(reference, data):
    from thera_fastai.infer.ensemble import vote
    probs, thresholds = np.array([[0.6, 0.9, 0.95], [0.6, 0.2, 0.45], [0.1, 0.2, 0.55]]), [0.5, 0.5, 0.6]
    assert vote(probs, thresholds, 'hard').tolist() == [1, 0, 0]  # image 0: two of three folds say clean
    assert vote(probs, thresholds, 'soft').tolist() == [0, 0, 1]  # its mean probability 0.433 is under the mean threshold 0.533
    assert (vote(probs, thresholds, 'soft') == (probs.mean(0) >= np.mean(thresholds))).all()
    tie = np.array([[0.9, 0.52], [0.1, 0.4]])
    assert vote(tie, [0.5, 0.5], 'hard').tolist() == vote(tie, [0.5, 0.5], 'soft').tolist() == [1, 0]  # a tie goes to the mean margin
    with pytest.raises(ValueError, match='soft, hard'): vote(probs, thresholds, 'mean')
    with pytest.raises(TheraError, match="^vote must be one of soft, hard"): tf.predict(reference, data, partial=True, vote='mean')
    assert tf.predict(reference, data, partial=True, tta=0, vote='hard').attrs['vote'] == 'hard'


def test_library_errors_name_parameters(data, tmp_path):
    with pytest.raises(TheraError, match="^epoch is not a fit parameter"): tf.fit(data, tmp_path/'r', epoch=3)
    with pytest.raises(TheraError, match="^fold 2 is out of range for 2 folds"): tf.fit(data, tmp_path/'r', fold=2, **FIT)
    assert not (tmp_path/'r').exists()


def _mutate(path, change):
    if change == 'truncate': path.write_text(path.read_text()[:len(path.read_text()) // 2]); return
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


FOLD_MUTATIONS = {f"fold.json: {name}": change for name, change in {
    **{f"without {k}": (lambda o, k=k: o.pop(k)) for k in ('run_id', 'config', 'stats', 'threshold', 'files', 'at_05', 'fit_seconds')},
    'threshold a string': lambda o: o.update(threshold='0.5'), 'threshold above 1': lambda o: o.update(threshold=2.0),
    'stats of one channel': lambda o: o.update(stats=[[0.5], [0.2]]), 'stats a dict': lambda o: o.update(stats={}),
    'config a list': lambda o: o.update(config=[]), 'run_id a number': lambda o: o.update(run_id=7),
    'files a list': lambda o: o.update(files=[]), 'truncated': 'truncate'}.items()}
RUN_MUTATIONS = {f"config.json: {name}": change for name, change in {
    'without config': lambda o: o.pop('config'), 'without run_id': lambda o: o.pop('run_id'),
    'config a list': lambda o: o.update(config=[1]), 'config without folds': lambda o: o['config'].pop('folds'),
    'config with a string for folds': lambda o: o['config'].update(folds='2'), 'truncated': 'truncate'}.items()}


@pytest.mark.parametrize('case', [*FOLD_MUTATIONS, *RUN_MUTATIONS])
def test_a_damaged_run_file_is_one_error_naming_it_before_any_prediction(case, reference, data, tmp_path, monkeypatch):
    import shutil
    import thera_fastai.infer.ensemble as ensemble
    run = tmp_path/'run'; shutil.copytree(reference, run)
    file = run/'fold0'/'fold.json' if case.startswith('fold.json') else run/'config.json'
    _mutate(file, {**FOLD_MUTATIONS, **RUN_MUTATIONS}[case])
    calls = []
    monkeypatch.setattr(ensemble, 'predict_folds', lambda *a, **k: calls.append(1))
    with pytest.raises(TheraError) as e: tf.predict(run, data, partial=True)
    assert file.name in str(e.value) and '\n' not in str(e.value) and not calls, str(e.value)


def test_a_fold_of_another_run_or_with_changed_files_is_refused_by_predict(reference, data, tmp_path):
    import shutil
    run = tmp_path/'run'; shutil.copytree(reference, run)
    oof = run/'fold0'/'oof.csv'
    oof.write_text(oof.read_text())  # rewritten with the same bytes (a new mtime): still the finished fold
    tf.predict(run, data, partial=True, tta=0, first=2)
    for name in ('oof.csv', 'history.csv', 'model.safetensors'):  # each file fold.json vouches for, truncated
        shutil.rmtree(run); shutil.copytree(reference, run)
        (run/'fold0'/name).write_bytes((run/'fold0'/name).read_bytes()[:-10])
        with pytest.raises(TheraError, match=r"fold0/fold.json: fold's files changed since it finished"): tf.predict(run, data, partial=True)
    shutil.rmtree(run); shutil.copytree(reference, run)
    record = json.loads((run/'config.json').read_text()); record['run_id'] = 'another'
    (run/'config.json').write_text(json.dumps(record))
    with pytest.raises(TheraError, match='fold0/fold.json: fold comes from another run than config.json'): tf.predict(run, data, partial=True)


def test_a_fold_taken_a_moment_ago_still_names_its_holder(tmp_path):
    "The race of two jobs started together: the lock is taken, its holder file not yet written."
    import threading
    from filelock import FileLock
    folder = tmp_path/'run'/'fold0'; folder.mkdir(parents=True)
    lock = FileLock(folder/'.lock'); lock.acquire()
    threading.Timer(0.3, lambda: (folder/'.holder').write_text('hostA pid 42\n')).start()
    with pytest.raises(TheraError, match='fold 0 is being trained by hostA pid 42'):
        with fold_lock(tmp_path/'run', 0): pass
    lock.release()


def _count_plain_reuse(monkeypatch):
    "Records, for each out-of-fold prediction, whether it was handed the fit's last validation as its plain pass."
    handed, real = [], training.predict_probs
    monkeypatch.setattr(training, 'predict_probs', lambda *a, **k: handed.append(k.get('plain') is not None) or real(*a, **k))
    return handed


def _fresh_oof(run, data, tta):
    "What the fold's saved weights predict for its held-out rows, in the out-of-fold file's order, with its TTA seed."
    from thera_fastai.infer.ensemble import FoldModel
    learn = tf.load_fold_learner(run/'fold0')
    cfg = tf.FitConfig(**learn.fold_info['config'])
    images, _, _, valid = tf.fold_rows(data, cfg, 0)
    return FoldModel(0, learn, 0.5).predict(images[valid], tta=tta, bs=learn.dls.valid.bs, seed=cfg.seed)


@pytest.mark.parametrize('tta', [0, 2])
def test_the_last_validation_is_the_out_of_fold_plain_pass_even_after_a_resume(data, tmp_path, monkeypatch, tta):
    fit = {**FIT, 'tta': tta}
    handed, passes = _count_plain_reuse(monkeypatch), []
    real_get = Learner.get_preds
    monkeypatch.setattr(Learner, 'get_preds', lambda self, *a, **k: passes.append(1) or real_get(self, *a, **k))
    tf.fit(data, tmp_path/'ref', fold=0, **fit)
    assert handed == [True] and len(passes) == tta  # the last validation was handed over: only the augmented passes ran
    oof = pd.read_csv(tmp_path/'ref'/'fold0'/'oof.csv')
    np.testing.assert_allclose(oof['prob_tta'].to_numpy(), _fresh_oof(tmp_path/'ref', data, tta), atol=1e-6)  # what the saved weights predict
    monkeypatch.setattr(training, 'write_oof', _raise)
    with pytest.raises(KeyboardInterrupt): tf.fit(data, tmp_path/'run', fold=0, **fit)
    monkeypatch.setattr(training, 'write_oof', real_write_oof)
    assert tf.fit(data, tmp_path/'run', fold=0, **fit)['folds'][0]['resumed_from_epoch'] == fit['epochs']
    assert handed == [True, True, True]  # the kept pass rode in the last checkpoint
    _same_fold(tmp_path/'ref', tmp_path/'run')
    tf.fit(data, tmp_path/'ahead', fold=0, method='airbench', **{k: v for k, v in fit.items() if k != 'arch'})
    assert handed[-1] is False  # Lookahead's last pull moves the weights after the last validation: predicted in full


def test_a_budget_fit_that_a_re_plan_ends_at_an_epoch_end_reuses_that_epochs_validation(data, tmp_path, monkeypatch):
    from thera_fastai.train import budget
    real_plan = budget.plan_steps
    def spent_after_the_first_epoch(*a, **k):
        if (a[8] if len(a) > 8 else k.get('done_epochs', 0)) >= 1: raise TheraError('the budget is spent', param='budget')
        return real_plan(*a, **k)
    monkeypatch.setattr(budget, 'plan_steps', spent_after_the_first_epoch)  # the re-plan after epoch 0 ends the fit there
    handed = _count_plain_reuse(monkeypatch)
    fit = {k: v for k, v in FIT.items() if k != 'epochs'}
    tf.fit(data, tmp_path/'run', fold=0, budget=600, **fit)
    plan = json.loads((tmp_path/'run'/'fold0'/'fold.json').read_text())['steps']
    assert plan['epochs'] == 1 and plan['steps'] == plan['steps_per_epoch'] and plan['replans'][0]['epoch'] == 0
    assert handed == [True]  # epoch 0's validation, kept though it was not planned as the last, is the plain pass
    oof = pd.read_csv(tmp_path/'run'/'fold0'/'oof.csv')
    np.testing.assert_allclose(oof['prob_tta'].to_numpy(), _fresh_oof(tmp_path/'run', data, fit['tta']), atol=1e-6)


real_write_oof = training.write_oof


def test_the_ids_of_runs_written_before_the_latest_fields_still_hold():
    "Run ids 0.22.0 wrote (computed with its code): a field added since is left out while unset, or every finished fold would train again."
    from thera_fastai.runs import run_id
    assert run_id(tf.FitConfig(), 'dkey') == 'bfab4d0e49c77470'
    assert run_id(tf.FitConfig(method='airbench', folds=2), 'dkey') == '288412fa57077a8b'


def test_the_report_groups_folds_by_the_machine_they_ran_on():
    from thera_fastai.analysis.report import _machines
    here = dict(cpu='Zen 4, avx512f avx512_bf16', device='cpu', threads=2, world_size=1, host='a')
    folds = {0: dict(runtime=here), 2: dict(runtime=here), 1: dict(runtime={**here, 'world_size': 2, 'host': 'b'}),
             3: dict(runtime={k: v for k, v in here.items() if k != 'cpu'})}     # a fold from before the CPU was recorded
    assert _machines(folds) == ['- folds 0, 2: Zen 4, avx512f avx512_bf16; cpu, 2 threads; host a',
                                '- fold 1: Zen 4, avx512f avx512_bf16; cpu, 2 threads, 2 processes; host b',
                                '- fold 3: CPU not recorded; cpu, 2 threads; host a']
    assert _machines({}) == ['- no fold finished']
