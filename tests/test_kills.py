"""A kill at the worst moment of every command that writes files: just before one of its atomic renames, with the
temporary file complete. Every file left is whole, the rerun finishes, and no temporary file or folder stays."""
import json, os, subprocess, sys

import pandas as pd
import pytest
from PIL import Image

from conftest import write_dataset
import thera_fastai as tf

# Runs a console script in this process with os.replace/os.rename counting the atomic writers' renames (their source
# is a temporary name) and killing the process with SIGKILL just before the one numbered $KILL_AT.
KILLER = """
import os, signal, sys
from importlib.metadata import entry_points
kill_at, seen = int(os.environ['KILL_AT']), [0]
def counted(rename):
    def call(src, dst, *a, **k):
        if '.tmp' in os.path.basename(os.fsdecode(src)):
            seen[0] += 1
            with open(os.environ['COUNT_FILE'], 'w') as f: f.write(str(seen[0]))
            if seen[0] == kill_at: os.kill(os.getpid(), signal.SIGKILL)
        return rename(src, dst, *a, **k)
    return call
os.replace, os.rename = counted(os.replace), counted(os.rename)
prog = sys.argv[1]
sys.argv = sys.argv[1:]
entry_points(group='console_scripts')[prog].load()()
"""


@pytest.fixture(scope='module')
def learned(tmp_path_factory):
    "Two 2-fold runs that learned, on 200 generated images."
    root = tmp_path_factory.mktemp('kills')
    write_dataset(root/'data', n_train=200, n_val=6)
    for name, seed in (('a', 0), ('b', 1)):
        tf.fit(root/'data', root/name, arch='simple', folds=2, epochs=3, bs=16, tta=0, seed=seed, precision='fp32', log=lambda *_: None)
    return root


def _run(root, kill_at, args, count_file):
    killer = count_file.parent/'killer.py'  # a file: fastcore's call_parse parses the command line of a script run directly
    killer.write_text(KILLER)
    env = {**os.environ, 'KILL_AT': str(kill_at), 'COUNT_FILE': str(count_file), 'THERA_CACHE': str(root/'cache')}
    return subprocess.run([sys.executable, killer, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def _whole(folder):
    "Every file under `folder` that is not a temporary one reads as what its name says; the temporary ones."
    temps = []
    for p in folder.rglob('*'):
        if '.tmp' in p.name or p.name.endswith('.old'): temps.append(p); continue
        if p.is_dir(): continue
        if p.suffix == '.json': json.loads(p.read_text())
        elif p.suffix == '.csv': pd.read_csv(p)
        elif p.suffix == '.png': Image.open(p).verify()
        elif p.suffix in ('.md', '.txt', '.py'): assert p.read_text().strip(), p
    return temps


COMMANDS = {  # what each command writes, and the file that must come out as an uninterrupted run's
    'report': (lambda r, o: ['thera-report', r/'a'], lambda r, o: r/'a', 'report.json'),
    'compare': (lambda r, o: ['thera-compare', r/'a', r/'b', '--out', o, '--n', 2], lambda r, o: o, 'compare.csv'),
    'audit': (lambda r, o: ['thera-audit', '--models', r/'a', '--out', o, '--n', 2], lambda r, o: o, 'label_issues.csv'),
    'export': (lambda r, o: ['thera-export', '--models', r/'a', '--out', o], lambda r, o: o, 'ensemble.json'),
}


@pytest.mark.slow
@pytest.mark.parametrize('command', list(COMMANDS))
def test_a_command_killed_before_any_of_its_renames_leaves_whole_files_and_reruns(command, learned, tmp_path):
    if command == 'export': pytest.importorskip('onnx')
    args, where, key = COMMANDS[command]
    ref_out, out = tmp_path/'ref', tmp_path/'out'
    for folder in (ref_out, tmp_path/'count'):  # the second counts the renames of a run whose inputs are as the kills see them
        r = _run(learned, 0, args(learned, folder), tmp_path/'n')
        assert r.returncode == 0, r.stderr
    reference, renames = (where(learned, ref_out)/key).read_bytes(), int((tmp_path/'n').read_text())
    assert renames >= 1
    for kill_at in sorted({1, renames // 2 + 1, renames}):
        r = _run(learned, kill_at, args(learned, out), tmp_path/'n')
        assert r.returncode == -9, (kill_at, r.stderr)
        if where(learned, out).exists(): _whole(where(learned, out))
    r = _run(learned, 0, args(learned, out), tmp_path/'n')
    assert r.returncode == 0, r.stderr
    assert _whole(where(learned, out)) == [] and not [p for p in where(learned, out).parent.iterdir() if '.tmp' in p.name]
    assert (where(learned, out)/key).read_bytes() == reference
