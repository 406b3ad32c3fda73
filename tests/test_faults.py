"""A full disk: one clear error naming the path, no traceback, no temporary file left; stale temporary files cleaned."""
import os, subprocess

import pytest

from conftest import run_cli, write_dataset
import thera_fastai as tf
from thera_fastai.errors import TheraError
from thera_fastai.files import atomic_write, clean_stale_temps


def _tmpfs(where, options):
    "A tmpfs mounted at `where` for the test (skipped where this process may not mount one)."
    where.mkdir()
    res = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(where)], capture_output=True, text=True)
    if res.returncode: pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()})")
    yield where
    subprocess.run(['umount', str(where)])


@pytest.fixture
def small_disk(tmp_path):
    "A 3 MiB tmpfs."
    yield from _tmpfs(tmp_path/'disk', 'size=3m')


@pytest.fixture
def read_only(tmp_path):
    "A read-only tmpfs: even root cannot write there."
    yield from _tmpfs(tmp_path/'ro', 'size=1m,ro')


def test_every_output_on_a_read_only_file_system_is_one_line(read_only, tmp_path):
    from thera_fastai.infer.export import export_run
    write_dataset(tmp_path/'data', n_train=200, n_val=6)
    tf.fit(tmp_path/'data', tmp_path/'run', arch='simple', folds=2, epochs=3, bs=16, tta=0, precision='fp32', log=lambda *_: None)
    ro = read_only
    calls = {'fit': lambda: tf.fit(tmp_path/'data', ro/'run', arch='simple', folds=2, epochs=1, log=lambda *_: None),
             'cache': lambda: tf.cached_images(tf.open_dataset(tmp_path/'data').train, ro/'cache'),
             'compare': lambda: tf.compare([tmp_path/'run'], ro/'cmp'), 'audit': lambda: tf.audit(tmp_path/'run', ro/'audit'),
             'explore': lambda: tf.explore(tmp_path/'data', ro/'x'), 'export': lambda: export_run(tmp_path/'run', ro/'exp')}
    for what, call in calls.items():
        with pytest.raises(TheraError) as e: call()
        message = e.value.cli_message()
        assert str(ro) in message and ('(read-only file system)' in message or 'not writable' in message), (what, message)
    r = run_cli('thera-predict', '--models', tmp_path/'run', '--data', tmp_path/'data', '--out', ro/'label_val.txt', '--tta', 0)
    assert r.returncode == 2 and r.stderr.strip() == f"thera-predict: error: {ro}: output folder is not writable", r.stderr
    assert not list(ro.iterdir())


def test_cache_on_a_full_disk_is_one_error_and_leaves_nothing(small_disk, tmp_path):
    write_dataset(tmp_path/'data', n_train=300, n_val=4)
    with pytest.raises(TheraError, match=r'not enough space to decode 300 images into the cache: needs 3\.5 MiB, 3\.0 MiB free'):
        tf.cached_images(tf.open_dataset(tmp_path/'data').train, small_disk/'cache')
    assert not list((small_disk/'cache').iterdir())  # no array, no temporary file, no lock file


def test_a_write_that_fills_the_disk_is_one_error_and_leaves_nothing(small_disk):
    with pytest.raises(TheraError, match=r'label_val.txt: cannot write \(no space left on the device\)'):
        atomic_write(small_disk/'label_val.txt', lambda tmp: tmp.write_bytes(os.urandom(4 << 20)))
    assert not list(small_disk.iterdir())


def test_a_run_folder_that_fills_up_during_the_fit_is_one_error(small_disk, tmp_path):
    write_dataset(tmp_path/'data', n_train=60, n_val=4)
    (small_disk/'filler').write_bytes(b'0' * (2900 << 10))     # about 100 KiB left: config.json fits, a checkpoint does not
    with pytest.raises(TheraError) as e:
        tf.fit(tmp_path/'data', small_disk/'run', fold=0, arch='simple', folds=2, epochs=2, bs=16, tta=0, precision='fp32', log=lambda *_: None)
    assert e.value.cli_message().endswith('cannot write (no space left on the device)') and 'fold0' in e.value.cli_message()
    assert not list(small_disk.rglob('*.tmp'))


def test_memory_mapped_cache_reserves_its_blocks_first(tmp_path, monkeypatch):
    "A sparse memory-mapped file on a full disk ends in SIGBUS: the blocks are reserved, and a refusal is an error."
    import errno, thera_fastai.data.cache as cache
    write_dataset(tmp_path/'data', n_train=20, n_val=4)
    def no_space(fd, offset, length): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(cache.os, 'posix_fallocate', no_space)
    with pytest.raises(TheraError, match=r'images-\w+\.npy: cannot write \(no space left on the device\)'):
        tf.cached_images(tf.open_dataset(tmp_path/'data').train, tmp_path/'cache')
    assert not list((tmp_path/'cache').glob('*.tmp')) and not list((tmp_path/'cache').glob('*.npy'))


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    host = os.uname().nodename.replace('.', '_')
    dead = subprocess.run(['true']).returncode or 2**22 + 7   # a pid no process holds
    mine = tmp_path/f".model.safetensors.{host}-{os.getpid()}.abc.tmp"
    stale = tmp_path/f".model.safetensors.{host}-{dead}.abc.tmp"
    other = tmp_path/".oof.csv.otherhost-12.abc.tmp"
    for p in (mine, stale, other): p.write_text('x')
    assert clean_stale_temps(tmp_path) == [stale]
    assert mine.exists() and other.exists() and not stale.exists()   # another host's file is kept until it is old
    os.utime(other, (0, 0))
    assert clean_stale_temps(tmp_path) == [other]
