"""Data-parallel training of one fold: 2 processes under torchrun with gloo on this CPU."""
import json, os, re, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip('accelerate')
pytestmark = pytest.mark.slow

from conftest import write_dataset  # noqa: E402
import thera_fastai as tf  # noqa: E402


def _torchrun(tmp_path, *extra, wait=True):
    exe = Path(sys.executable).parent
    args = [str(exe/'torchrun'), '--standalone', '--nproc_per_node', '2', str(exe/'thera-fit'), '--data', tmp_path/'data',
            '--out', tmp_path/'run', '--arch', 'simple', '--fold', 0, '--folds', 2, '--bs', 16, '--tta', 1, '--precision', 'fp32', '--threads', 1, *extra]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, 'THERA_CACHE': str(tmp_path/'cache'), 'ACCELERATE_USE_CPU': '1'})
    return proc.communicate(timeout=600) + (proc.returncode,) if wait else proc


@pytest.fixture
def data(tmp_path):
    labels = write_dataset(tmp_path/'data', n_train=240, n_val=10)
    flip = np.random.default_rng(1).random(len(labels)) < 0.15      # some label noise, so AUC is below 1 and tells rows apart
    (tmp_path/'data'/'label_train.txt').write_text(''.join(f"{int(v)}\n" for v in np.where(flip, 1 - labels, labels)))
    return tmp_path/'data'


def test_two_process_fit_writes_once_agrees_and_predicts(data, tmp_path):
    out, err, code = _torchrun(tmp_path, '--epochs', 2)
    assert code == 0, err[-3000:]
    # searched in the whole output: the two ranks share one pipe, so another process's text can land on the same line
    hashes = dict(re.findall(r'rank (\d) of 2: weights ([0-9a-f]{16})', out))
    assert sorted(hashes) == ['0', '1'] and hashes['0'] == hashes['1']       # both ranks ended with the same weights
    assert out.count('fold 0: HTER') == 1 and out.count('pooled out-of-fold') == 1
    run = tmp_path/'run'
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob('*') if not p.name.startswith('.'))
    assert files == ['config.json', 'confusion.png', 'fold0', 'fold0/fold.json', 'fold0/history.csv', 'fold0/model.safetensors',
                     'fold0/oof.csv', 'history.png', 'report.json', 'report.md', 'roc.png']
    assert not list(run.rglob('*.tmp'))
    info = json.loads((run/'fold0'/'fold.json').read_text())
    oof, history = pd.read_csv(run/'fold0'/'oof.csv'), pd.read_csv(run/'fold0'/'history.csv')
    assert info['runtime']['world_size'] == 2 and list(history['epoch']) == [0, 1]
    assert len(oof) == info['n_valid'] == oof['row'].nunique()                # every validation row scored once
    assert abs(history['auc'].iloc[-1] - tf.error_rates(oof['prob'], oof['label'])['auc']) < 1e-3  # the gathered metric saw them all
    labels = tf.predict(run, data, partial=True)
    assert len(labels) == 10


def test_killed_data_parallel_run_resumes(data, tmp_path):
    proc = _torchrun(tmp_path, '--epochs', 60, wait=False)
    deadline = time.time() + 300
    while not list((tmp_path/'run'/'fold0').glob('ckpt-e*.pth')) and proc.poll() is None and time.time() < deadline: time.sleep(0.05)
    subprocess.run(['pkill', '-9', '-f', str(tmp_path/'run')])   # the launcher and its workers (in process groups of their own)
    proc.communicate()
    assert not (tmp_path/'run'/'fold0'/'fold.json').exists()
    _, err, code = _torchrun(tmp_path, '--epochs', 60)
    assert code == 0, err[-3000:]
    info = json.loads((tmp_path/'run'/'fold0'/'fold.json').read_text())
    assert info['resumed_from_epoch'] >= 1 and list(pd.read_csv(tmp_path/'run'/'fold0'/'history.csv')['epoch']) == list(range(60))
