"""The demo page: served on a free local port, called through gradio_client, and seen in headless Chromium."""
import os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('gradio')
pytestmark = pytest.mark.slow

from conftest import run_cli, write_dataset  # noqa: E402
import thera_fastai as tf  # noqa: E402


def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    "A small run and its demo page on 127.0.0.1; yields (url, data folder); the server is stopped after."
    root = tmp_path_factory.mktemp('demo')
    write_dataset(root/'data', n_train=160, n_val=8)
    tf.fit(root/'data', root/'run', arch='simple', folds=2, epochs=2, bs=16, tta=1, precision='fp32', cache=root/'cache', log=lambda *_: None)
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent/'thera-demo'), '--models', str(root/'run'), '--data', str(root/'data'),
                             '--port', str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'THERA_CACHE': str(root/'cache'), 'GRADIO_ANALYTICS_ENABLED': 'False'})
    url, deadline = f"http://127.0.0.1:{port}/", time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try: urllib.request.urlopen(url, timeout=2); break
        except OSError: time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    yield url, root/'data'
    proc.terminate(); proc.communicate(timeout=30)


def test_page_classifies_an_image_with_each_folds_vote(served):
    from gradio_client import Client, handle_file
    url, data = served
    label, table = Client(url, verbose=False).predict(handle_file(str(data/'val_img'/'000001.jpg')), api_name='/predict')
    truth = int(np.loadtxt(data/'val_truth.txt', dtype=int)[0])
    assert label.startswith(f"{truth}: ") and 'folds say clean' in label
    assert [r[0] for r in table['data']] == ['fold 0', 'fold 1'] and all(0 <= r[1] <= 1 for r in table['data'])


def test_page_renders_in_a_real_browser(served, tmp_path):
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    if not chromium: pytest.skip("headless Chromium not installed (Debian package chromium)")
    shot = tmp_path/'demo.png'
    subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--window-size=1100,800',
                    '--virtual-time-budget=8000', f"--screenshot={shot}", served[0]], capture_output=True, timeout=120)
    from PIL import Image
    pixels = np.asarray(Image.open(shot).convert('RGB')).astype(int)
    orange = (np.abs(pixels - [249, 115, 22]).sum(-1) < 40).sum()   # Gradio's primary button, drawn only once the app has loaded
    assert pixels.shape == (800, 1100, 3) and orange > 5000 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000


def test_bad_run_folder_is_one_line(tmp_path):
    res = run_cli('thera-demo', '--models', tmp_path, '--port', _free_port(), timeout=120)
    assert res.returncode == 2 and 'not a thera-fit output folder' in res.stderr and len(res.stderr.strip().splitlines()) == 1
