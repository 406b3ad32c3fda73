"""The decoded cache: built once, reused while the source is unchanged, rebuilt when it changes or is corrupt."""
import os

import numpy as np
import pytest

from conftest import jpeg
from thera_fastai.data.cache import cached_images
from thera_fastai.data.source import open_dataset


def _npy(cache_dir): return sorted(p for p in cache_dir.glob('images-*.npy'))


def test_cache_is_reused(tiny_folder, tmp_path):
    a = cached_images(open_dataset(tiny_folder).train, tmp_path/'c')
    mtime = _npy(tmp_path/'c')[0].stat().st_mtime_ns
    b = cached_images(open_dataset(tiny_folder).train, tmp_path/'c')
    assert (a == b).all() and _npy(tmp_path/'c')[0].stat().st_mtime_ns == mtime
    assert isinstance(b, np.memmap) and not b.flags.writeable


def test_changed_source_gets_a_new_cache(tiny_folder, tmp_path):
    a = np.array(cached_images(open_dataset(tiny_folder).train, tmp_path/'c'))
    img = tiny_folder/'train_img'/'000002.jpg'
    img.write_bytes(jpeg(np.zeros((64, 64, 3), np.uint8)))
    os.utime(img, ns=(1, 1))
    b = cached_images(open_dataset(tiny_folder).train, tmp_path/'c')
    assert len(_npy(tmp_path/'c')) == 2 and b[1].max() < 5 and (a[0] == b[0]).all()


def test_corrupt_cache_is_detected_and_rebuilt(tiny_folder, tmp_path):
    a = np.array(cached_images(open_dataset(tiny_folder).train, tmp_path/'c'))
    npy = _npy(tmp_path/'c')[0]
    with open(npy, 'r+b') as f: f.seek(-100, 2); f.write(b'\xff' * 50)
    with pytest.warns(UserWarning, match='cache is corrupt'):
        b = cached_images(open_dataset(tiny_folder).train, tmp_path/'c')
    assert (a == b).all()


def test_truncated_cache_is_rebuilt(tiny_folder, tmp_path):
    a = np.array(cached_images(open_dataset(tiny_folder).train, tmp_path/'c'))
    npy = _npy(tmp_path/'c')[0]
    npy.write_bytes(npy.read_bytes()[:5000])
    assert (cached_images(open_dataset(tiny_folder).train, tmp_path/'c') == a).all()


def test_no_temp_files_left(tiny_folder, tmp_path):
    cached_images(open_dataset(tiny_folder).train, tmp_path/'c')
    assert not list((tmp_path/'c').glob('.*tmp'))


def test_cache_of_an_older_version_is_still_trusted(tiny_folder, tmp_path):
    "Caches written before per-chunk checksums (one whole-array CRC) are reused, not decoded again."
    import json, zlib
    a = cached_images(open_dataset(tiny_folder).train, tmp_path/'c')
    npy = _npy(tmp_path/'c')[0]
    meta_path = npy.with_suffix('.json')
    meta = json.loads(meta_path.read_text())
    meta['crc32'] = zlib.crc32(np.ascontiguousarray(a))
    del meta['crc32_chunks']
    meta_path.write_text(json.dumps(meta))
    mtime = npy.stat().st_mtime_ns
    assert (cached_images(open_dataset(tiny_folder).train, tmp_path/'c') == a).all() and npy.stat().st_mtime_ns == mtime
    meta['crc32'] ^= 1
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match='cache is corrupt'): cached_images(open_dataset(tiny_folder).train, tmp_path/'c')


def test_checksums_cover_every_chunk(tiny_folder, tmp_path):
    from thera_fastai.data.cache import _chunk_crcs
    a = np.array(cached_images(open_dataset(tiny_folder).train, tmp_path/'c'))
    crcs = _chunk_crcs(a, chunk=4096)
    assert len(crcs) == -(-a.size // 4096)
    b = a.copy(); b.reshape(-1)[-1] ^= 1
    c = a.copy(); c.reshape(-1)[4096] ^= 1
    assert _chunk_crcs(b, chunk=4096)[:-1] == crcs[:-1] and _chunk_crcs(b, chunk=4096)[-1] != crcs[-1]
    assert _chunk_crcs(c, chunk=4096)[1] != crcs[1]


_DECODER = """
import sys, time, numpy as np
import thera_fastai.data.cache as cache
from thera_fastai.data.source import open_dataset
if sys.argv[3] == 'stall':  # decodes, then hangs inside its write, holding the lock, until it is killed
    decode = cache._decode_all
    def stall(*a): decode(*a); open(sys.argv[4], 'w').close(); time.sleep(600)
    cache._decode_all = stall
arr = cache.cached_images(open_dataset(sys.argv[1]).train, sys.argv[2])
np.save(sys.argv[4], np.asarray(arr))
"""


def test_a_decode_killed_with_others_waiting_is_done_by_one_of_them(tiny_folder, tmp_path):
    import signal, subprocess, sys, time
    def start(mode, out):
        return subprocess.Popen([sys.executable, '-c', _DECODER, str(tiny_folder), str(tmp_path/'c'), mode, str(out)])
    first = start('stall', tmp_path/'stalled')
    for _ in range(600):
        if (tmp_path/'stalled').exists(): break
        time.sleep(0.1)
    assert list((tmp_path/'c').glob('.*tmp')), 'the first process should be in the middle of its write'
    waiters = [start('plain', tmp_path/f'got{i}.npy') for i in range(2)]
    time.sleep(2)  # both wait on the lock
    assert all(w.poll() is None for w in waiters)
    first.send_signal(signal.SIGKILL); first.wait()
    assert all(w.wait(timeout=120) == 0 for w in waiters)
    want = np.array(cached_images(open_dataset(tiny_folder).train, tmp_path/'direct'))
    assert all((np.load(tmp_path/f'got{i}.npy') == want).all() for i in range(2))
    assert len(_npy(tmp_path/'c')) == 1 and not list((tmp_path/'c').glob('.*tmp'))  # the dead process's temporary file is gone


def test_an_empty_thera_cache_means_the_default_folder_not_the_working_one(monkeypatch, tmp_path):
    from thera_fastai.data.cache import default_cache_dir
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv('THERA_CACHE', '')
    assert default_cache_dir() == tmp_path/'.cache'/'thera_fastai'
    monkeypatch.setenv('THERA_CACHE', str(tmp_path/'c'))
    assert default_cache_dir() == tmp_path/'c'
