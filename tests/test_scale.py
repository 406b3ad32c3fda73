"""Several processes on one run folder: folds in parallel with one decode, one process per fold, one config per folder."""
import json, os, subprocess, sys, time
from pathlib import Path

import pytest

from conftest import run_cli, write_dataset

pytestmark = pytest.mark.slow
ARGS = ('--arch', 'simple', '--folds', 2, '--epochs', 2, '--bs', 16, '--tta', 1, '--precision', 'fp32', '--threads', 1, '--quiet')


def _popen(*args, cache):
    exe = Path(sys.executable).parent/'thera-fit'
    return subprocess.Popen([str(exe), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'THERA_CACHE': str(cache)})


@pytest.fixture
def data(tmp_path):
    write_dataset(tmp_path/'data', n_train=240, n_val=8)
    return tmp_path/'data'


def test_two_fold_jobs_share_one_decode_and_report_as_a_sequential_run(data, tmp_path):
    jobs = [_popen('--data', data, '--out', tmp_path/'par', '--fold', k, *ARGS, cache=tmp_path/'cold') for k in (0, 1)]
    outs = [j.communicate(timeout=600) for j in jobs]
    assert [j.returncode for j in jobs] == [0, 0], outs
    assert sum(o.count('decoding 240 images') for o, _ in outs) == 1          # the other process waited, then mapped it
    res = run_cli('thera-fit', '--data', data, '--out', tmp_path/'seq', *ARGS, env={'THERA_CACHE': str(tmp_path/'cold')})
    assert res.returncode == 0, res.stderr
    assert run_cli('thera-report', tmp_path/'par').returncode == 0
    par, seq = (json.loads((tmp_path/r/'report.json').read_text()) for r in ('par', 'seq'))
    assert par['complete'] and par['pooled'] == seq['pooled'] and par['run_id'] == seq['run_id']
    for k in (0, 1): assert (tmp_path/'par'/f"fold{k}"/'oof.csv').read_bytes() == (tmp_path/'seq'/f"fold{k}"/'oof.csv').read_bytes()


def test_a_second_process_on_the_same_fold_is_refused(data, tmp_path):
    args = ('--data', data, '--out', tmp_path/'run', '--fold', 0, '--folds', 2, '--epochs', 500, '--bs', 16, '--tta', 0,
            '--precision', 'fp32', '--threads', 1, '--quiet')
    first = _popen(*args, cache=tmp_path/'c')
    deadline = time.time() + 300
    while not (tmp_path/'run'/'fold0'/'history.csv').exists() and first.poll() is None and time.time() < deadline: time.sleep(0.05)
    second = run_cli('thera-fit', *args, env={'THERA_CACHE': str(tmp_path/'c')})
    still_running = first.poll() is None
    first.kill(); first.communicate()
    assert still_running and second.returncode == 2, second.stderr
    assert f"fold 0 is being trained by {os.uname().nodename} pid {first.pid}; wait for it" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


def test_two_configs_started_at_once_one_is_refused(data, tmp_path):
    run_cli('thera-explore', '--data', data, '--out', tmp_path/'e.png', env={'THERA_CACHE': str(tmp_path/'c')})  # warm cache
    jobs = [_popen('--data', data, '--out', tmp_path/'run', '--fold', 0, *ARGS[:4], '--epochs', e, *ARGS[6:], cache=tmp_path/'c')
            for e in (1, 2)]
    outs = [j.communicate(timeout=600) for j in jobs]
    codes = sorted(j.returncode for j in jobs)
    assert codes == [0, 2], outs
    assert sum('holds a run with another config (epochs differ)' in err for _, err in outs) == 1
