"""The demo page: served on a free local port, called through gradio_client, and seen in headless Chromium."""
import os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('gradio')


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
    assert not list(Path(os.environ.get('TMPDIR', '/tmp')).glob(f"thera-demo-{tf.report(root/'run')['run_id']}-*"))  # examples removed


@pytest.mark.slow
def test_page_classifies_an_image_with_each_folds_vote(served):
    from gradio_client import Client, handle_file
    url, data = served
    label, table, cam = Client(url, verbose=False).predict(handle_file(str(data/'val_img'/'000001.jpg')), api_name='/predict')
    truth = int(np.loadtxt(data/'val_truth.txt', dtype=int)[0])
    assert label.startswith(f"{truth}: ") and 'folds say clean' in label
    assert [r[0] for r in table['data']] == ['fold 0', 'fold 1'] and all(0 <= r[1] <= 1 for r in table['data'])


@pytest.mark.slow
def test_page_without_an_image_says_what_to_do_instead_of_an_error(served):
    from gradio_client import Client
    label, table, cam = Client(served[0], verbose=False).predict(None, api_name='/predict')
    assert label.startswith('Upload a face') and cam is None


@pytest.mark.slow
def test_a_larger_picture_is_cropped_and_resized_not_refused(served, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image
    url, data = served
    face = Image.open(data/'val_img'/'000001.jpg').resize((200, 160))
    face.save(tmp_path/'big.png')
    label, table, cam = Client(url, verbose=False).predict(handle_file(str(tmp_path/'big.png')), api_name='/predict')
    assert label[0] in '01' and 'folds say' in label and len(table['data']) == 2 and cam is not None


@pytest.mark.slow
def test_page_shows_the_grad_cam_overlay_and_the_whole_vote_in_a_real_browser(served, tmp_path):
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    if not chromium: pytest.skip("headless Chromium not installed (Debian package chromium)")
    sync_api = pytest.importorskip('playwright.sync_api')
    url, data = served
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=['--no-sandbox', '--disable-gpu'])
        page = browser.new_page(viewport={'width': 1200, 'height': 1000})
        page.goto(url); page.wait_for_selector('button:has-text("Classify")', timeout=60000)
        page.locator('input[type=file]').first.set_input_files(str(data/'val_img'/'000001.jpg'))
        page.wait_for_timeout(1500)
        page.get_by_role('button', name='Classify').click()
        page.wait_for_function("document.querySelectorAll('img').length >= 2 && "
                               "[...document.querySelectorAll('textarea')].some(t => t.value.includes('folds say'))", timeout=120000)
        vote = [t for t in page.locator('textarea').all() if 'folds say' in t.input_value()][0].input_value()
        overlay = page.locator('img').nth(1)
        overlay.screenshot(path=str(tmp_path/'overlay.png'))
        page.screenshot(path=str(tmp_path/'page.png'), full_page=True)
        browser.close()
    from PIL import Image
    assert vote.startswith(('0: occluded (hat, cap, glasses or other occlusion).', '1: clean face.')) and 'threshold' in vote
    pixels = np.asarray(Image.open(tmp_path/'overlay.png').convert('RGB')).astype(int)
    blue = ((pixels[..., 2] - pixels[..., :2].max(-1)) > 60).mean()   # the jet colours of the map over the face
    assert min(pixels.shape[:2]) >= 200 and blue > 0.05, (pixels.shape, blue)


@pytest.mark.slow
def test_bad_run_folder_is_one_line(tmp_path):
    res = run_cli('thera-demo', '--models', tmp_path, '--port', _free_port(), timeout=120)
    assert res.returncode == 2 and 'not a thera-fit output folder' in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_classify_explains_the_vote_and_each_folds_margin(tmp_path):
    from thera_fastai.infer.demo import classify, explain, overlay, to_model_image
    write_dataset(tmp_path/'data', n_train=96, n_val=4)
    tf.fit(tmp_path/'data', tmp_path/'run', arch='simple', folds=2, epochs=1, bs=16, tta=0, precision='fp32', log=lambda *_: None)
    from thera_fastai.infer.ensemble import load_fold_models
    models, _ = load_fold_models(tmp_path/'run', 'cpu')
    from PIL import Image
    img = np.asarray(Image.open(tmp_path/'data'/'val_img'/'000001.jpg'))
    label, rows = classify(models, img, 0)
    assert [r[0] for r in rows] == ['fold 0', 'fold 1'] and all(abs(r[3] - (r[1] - r[2])) < 1e-3 for r in rows)
    assert all(r[4] == ('clean' if r[1] >= r[2] else 'occluded') for r in rows)
    assert classify(models, np.asarray(Image.fromarray(img).resize((128, 128))), 0)[1][0][0] == 'fold 0'
    assert to_model_image(np.zeros((90, 120, 4), np.uint8)).shape == (64, 64, 3)
    assert 'Hard vote: a tie (1 of 2 folds say clean), broken by the mean margin +0.050' in explain([1, 0], [0.7, 0.5], [0.6, 0.5], 'hard')
    assert '2 of 3 folds say occluded' in explain([0, 0, 1], [0.2, 0.3, 0.9], [0.5] * 3, 'hard')
    assert "Soft vote: the mean margin over the folds' thresholds is -0.033 (1 of 3 folds say clean)" in explain([0, 0, 1], [0.2, 0.3, 0.9], [0.5] * 3)
    assert 'within 0.01 of its threshold' in explain([1], [0.505], [0.5])
    big = overlay(img, np.linspace(0, 1, 64 * 64).reshape(64, 64))
    assert big.shape == (320, 320, 3) and big.dtype == np.uint8


@pytest.mark.slow
def test_a_port_in_use_is_one_line(served):
    port = int(served[0].rsplit(':', 1)[1].strip('/'))
    res = run_cli('thera-demo', '--models', served[1].parent/'run', '--port', port, timeout=120)
    assert res.returncode == 2 and f"127.0.0.1:{port} cannot be served" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
