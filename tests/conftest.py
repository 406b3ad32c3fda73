"""Fixtures: small generated datasets (folder and zip) and, where present, a slice of the real exercise zip."""
import os, subprocess, sys, zipfile
from pathlib import Path

import numpy as np
import pytest
import simplejpeg

REAL_ZIP = Path(__file__).resolve().parents[1].parent/'shared'/'data'/'ml_exercise_therapanacea.zip'
ROOT = 'ml_exercise_therapanacea'


def synthetic_images(labels, seed=0, size=64):
    "Noisy 64x64 RGB images; class 0 gets a dark band across the top, like a hat."
    rng = np.random.default_rng(seed)
    imgs = rng.integers(90, 200, (len(labels), size, size, 3), dtype=np.uint8)
    imgs[np.asarray(labels) == 0, :18] //= 4
    return imgs


def jpeg(img): return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=95, colorspace='RGB')


def write_dataset(folder, n_train=96, n_val=24, seed=0, p0=0.3):
    "Writes the exercise layout (train_img/, label_train.txt, val_img/) with generated images; returns the labels."
    rng = np.random.default_rng(seed)
    labels = (rng.random(n_train) >= p0).astype(int)
    labels[:2] = [0, 1]
    folder = Path(folder)
    (folder/'train_img').mkdir(parents=True); (folder/'val_img').mkdir()
    for i, img in enumerate(synthetic_images(labels, seed)): (folder/'train_img'/f"{i + 1:06d}.jpg").write_bytes(jpeg(img))
    val_labels = (rng.random(n_val) >= p0).astype(int)
    for i, img in enumerate(synthetic_images(val_labels, seed + 1)): (folder/'val_img'/f"{i + 1:06d}.jpg").write_bytes(jpeg(img))
    (folder/'label_train.txt').write_text(''.join(f"{v}\n" for v in labels))
    np.savetxt(folder/'val_truth.txt', val_labels, fmt='%d')
    return labels


def zip_folder(folder, zip_path, root=ROOT, skip=()):
    "Zips `folder` under `root/`, storing the JPEGs as the real exercise zip does."
    with zipfile.ZipFile(zip_path, 'w') as zf:
        for p in sorted(Path(folder).rglob('*')):
            rel = p.relative_to(folder).as_posix()
            if p.is_file() and rel not in skip and rel != 'val_truth.txt': zf.write(p, f"{root}/{rel}")
    return zip_path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('THERA_CACHE', str(tmp_path/'cache'))
    monkeypatch.setenv('THERA_COMPILE', '0')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "A 96-image generated dataset shared by a module's in-process fits."
    root = tmp_path_factory.mktemp('data')
    write_dataset(root/'data', n_train=96, n_val=8)
    return root/'data'


@pytest.fixture
def tiny_folder(tmp_path):
    folder = tmp_path/'data'
    write_dataset(folder)
    return folder


@pytest.fixture
def tiny_zip(tiny_folder, tmp_path): return zip_folder(tiny_folder, tmp_path/'tiny.zip')


@pytest.fixture(scope='session')
def real_slice(tmp_path_factory):
    "A zip with the real exercise's first 400 train and 50 val images (skipped where the data is absent)."
    if not REAL_ZIP.exists(): pytest.skip(f"real exercise zip not found at {REAL_ZIP}")
    out = tmp_path_factory.mktemp('real')/'slice.zip'
    with zipfile.ZipFile(REAL_ZIP) as src, zipfile.ZipFile(out, 'w') as dst:
        labels = src.read(f"{ROOT}/label_train.txt").decode().splitlines()[:400]
        dst.writestr(f"{ROOT}/label_train.txt", '\n'.join(labels) + '\n')
        for sub, n in (('train_img', 400), ('val_img', 50)):
            for i in range(1, n + 1): dst.writestr(f"{ROOT}/{sub}/{i:06d}.jpg", src.read(f"{ROOT}/{sub}/{i:06d}.jpg"))
    return out


def run_cli(prog, *args, env=None, timeout=600, cwd=None):
    "Runs an installed console script (thera-fit, thera-predict, thera-explore) in a fresh process."
    exe = Path(sys.executable).parent/prog
    if not exe.exists(): pytest.fail(f"{exe} not found: install the package (pip install -e .)")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)
