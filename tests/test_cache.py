"""The decoded cache: built once, reused while the source is unchanged, rebuilt when it changes or is corrupt."""
import os

import numpy as np
import pytest

from conftest import jpeg
from thera_fastai.cache import cached_images
from thera_fastai.source import open_dataset


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
