"""The label audit (cleanlab over out-of-fold probabilities) and Grad-CAM saliency, on generated data."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import thera_fastai as tf
from conftest import jpeg, run_cli, synthetic_images
from thera_fastai.errors import TheraError
from thera_fastai.analysis.saliency import cam_layer, grad_cam

FIT = dict(arch='simple', bs=32, tta=0, precision='fp32', log=lambda *_: None)


def _write(folder, images, labels):
    (folder/'train_img').mkdir(parents=True); (folder/'val_img').mkdir()
    for i, img in enumerate(images): (folder/'train_img'/f"{i + 1:06d}.jpg").write_bytes(jpeg(img))
    (folder/'val_img'/'000001.jpg').write_bytes(jpeg(images[0]))
    (folder/'label_train.txt').write_text(''.join(f"{v}\n" for v in labels))


@pytest.fixture(scope='module')
def flipped(tmp_path_factory):
    "A 2-fold run on 400 generated images whose labels have 20 injected flips; (run folder, flipped rows)."
    root = tmp_path_factory.mktemp('audit')
    rng = np.random.default_rng(0)
    truth = (rng.random(400) >= 0.3).astype(int)
    flips = rng.choice(400, 20, replace=False)
    given = truth.copy(); given[flips] ^= 1
    _write(root/'data', synthetic_images(truth), given)
    tf.fit(root/'data', root/'run', folds=2, epochs=3, **FIT)
    return root/'run', set(flips.tolist())


def test_audit_finds_most_injected_label_flips(flipped, tmp_path):
    run, flips = flipped
    a, issues = tf.audit(run, tmp_path/'audit', n=4, device='cpu')
    found = set(issues['row']) & flips
    assert len(found) / len(flips) >= 0.6 and len(found) / len(issues) >= 0.6  # chance would find about 1 of 20
    assert a['n_flagged'] == len(issues) == sum(a['flagged_by_label'].values())
    assert list(issues['rank']) == list(range(1, len(issues) + 1)) and issues['quality'].is_monotonic_increasing
    csv = pd.read_csv(tmp_path/'audit'/'label_issues.csv')
    assert list(csv.columns) == ['name', 'row', 'label', 'p_clean', 'p_label', 'quality', 'rank']
    assert all(n == f"{r + 1:06d}.jpg" for n, r in zip(csv['name'], csv['row']))
    oof = pd.concat([pd.read_csv(run/f'fold{k}'/'oof.csv') for k in (0, 1)]).set_index('row')
    assert np.allclose(csv['p_clean'], oof.loc[csv['row'], 'prob_tta'], atol=1e-5)   # P(clean face), whatever the label
    assert np.allclose(csv['p_label'], np.where(csv['label'] == 1, csv['p_clean'], 1 - csv['p_clean']), atol=1e-5)
    assert 0 < a['noise']['hter_floor'] < 0.2 and a['hter_unflagged'] <= a['hter_all']
    md = (tmp_path/'audit'/'audit.md').read_text()
    assert f"{a['noise']['hter_floor']:.4f}" in md and (tmp_path/'audit'/'suspects_label0.png').stat().st_size > 1000


def test_grad_cam_peaks_on_the_marked_region(tmp_path):
    rng = np.random.default_rng(1)
    labels = (rng.random(320) >= 0.4).astype(int)
    images = rng.integers(90, 200, (len(labels), 64, 64, 3), dtype=np.uint8)
    corners = rng.integers(0, 44, (len(labels), 2))
    for img, lab, (y, x) in zip(images, labels, corners):
        if lab == 0: img[y:y + 20, x:x + 20] //= 4  # the occlusion: a dark square anywhere
    _write(tmp_path/'data', images, labels)
    tf.fit(tmp_path/'data', tmp_path/'run', fold=0, folds=2, epochs=4, **FIT)
    learn = tf.load_fold_learner(tmp_path/'run'/'fold0')
    convs = [m for m in learn.model.modules() if isinstance(m, nn.Conv2d)]
    assert cam_layer(learn.model) is convs[2]  # the second block's last conv, at 32x32
    test = rng.integers(90, 200, (24, 64, 64, 3), dtype=np.uint8)
    where = rng.integers(0, 44, (24, 2))
    for img, (y, x) in zip(test, where): img[y:y + 20, x:x + 20] //= 4
    maps = grad_cam(learn, test, target=0)
    assert maps.shape == (24, 64, 64) and maps.max() <= 1 + 1e-6
    peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
    inside = [y - 4 <= py < y + 24 and x - 4 <= px < x + 24 for (py, px), (y, x) in zip(peaks, where)]
    assert np.mean(inside) >= 0.8


def test_cam_layer_is_the_last_conv_at_half_the_image_size():
    air = tf.create_model('airbench')
    sizes = {}
    for m in air.modules():
        if isinstance(m, nn.Conv2d): m.register_forward_hook(lambda mod, i, o: sizes.__setitem__(mod, o.shape[-1]) or None)
    air(torch.zeros(1, 3, 64, 64))
    convs = list(sizes)
    assert sizes[convs[-1]] == 4 and sizes[cam_layer(air)] == 32 and sizes[cam_layer(air, min_map=8)] == 8
    assert cam_layer(air) is [c for c in convs if sizes[c] == 32][-1]


def test_audit_refuses_what_is_not_a_finished_run(tmp_path, flipped):
    with pytest.raises(TheraError, match='run folder does not exist'): tf.audit(tmp_path/'nothing')
    run, _ = flipped
    empty = tmp_path/'empty'; empty.mkdir()
    (empty/'config.json').write_bytes((run/'config.json').read_bytes())
    with pytest.raises(TheraError, match='holds no finished fold'): tf.audit(empty)


def _at_chance(run, folder):
    "A copy of `run` whose out-of-fold probabilities are replaced by noise (re-sealed): a model that has not learned."
    import json, shutil
    from thera_fastai.files import file_hash
    shutil.copytree(run, folder)
    rng = np.random.default_rng(0)
    for fold in folder.glob('fold*'):
        oof = pd.read_csv(fold/'oof.csv')
        oof['prob'] = oof['prob_tta'] = rng.random(len(oof))
        oof.to_csv(fold/'oof.csv', index=False)
        info = json.loads((fold/'fold.json').read_text())
        info['files']['oof.csv'] = file_hash(fold/'oof.csv')
        (fold/'fold.json').write_text(json.dumps(info))
    return folder


def test_audit_refuses_a_run_that_has_not_learned(flipped, tmp_path):
    noise = _at_chance(flipped[0], tmp_path/'noise')
    with pytest.raises(TheraError, match=r'has not learned: out-of-fold AUC 0\.\d+, below 0\.6.*none is made'):
        tf.audit(noise, tmp_path/'audit')
    assert not (tmp_path/'audit').exists()


def test_an_audit_of_one_fold_covers_its_rows_and_says_the_others_are_not_audited(flipped, tmp_path):
    import shutil
    shutil.copytree(flipped[0], tmp_path/'one', ignore=shutil.ignore_patterns('fold1'))
    a, issues = tf.audit(tmp_path/'one', tmp_path/'audit', n=2, device='cpu')
    rows = set(pd.read_csv(tmp_path/'one'/'fold0'/'oof.csv')['row'])
    assert a['folds'] == [0] and a['n_rows'] == len(rows) == 200 and set(issues['row']) <= rows
    assert "from fold 0 of 2 (the other folds' rows are not audited)" in (tmp_path/'audit'/'audit.md').read_text()


def test_audit_page_shows_no_grid_for_a_label_with_nothing_flagged():
    from thera_fastai.analysis.label_audit import audit_markdown
    a = dict(run='r', n_rows=10, folds=[0], n_flagged=1, flagged_by_label={0: 1, 1: 0}, rows_by_label={0: 3, 1: 7},
             noise=dict(p_true1_given0=0.1, p_true0_given1=0.0, p_given1_true0=0.1, p_given0_true1=0.0, hter_floor=0.05),
             hter_all=0.1, hter_all_05=0.1, hter_unflagged=0.05, hter_unflagged_05=0.05)
    md = audit_markdown(a)
    assert 'suspects_label0.png' in md and 'suspects_label1.png' not in md and 'No label 1 is flagged.' in md


@pytest.mark.slow
def test_audit_cli_prints_one_summary_and_one_line_errors(flipped, tmp_path):
    run, _ = flipped
    r = run_cli('thera-audit', '--models', run, '--out', tmp_path/'a', '--n', '2')
    assert r.returncode == 0, r.stderr
    assert 'flagged of 400 out-of-fold rows from folds 0, 1 (' in r.stdout and 'implied HTER floor' in r.stdout and (tmp_path/'a'/'label_issues.csv').exists()
    for args, msg in [(('--models', tmp_path/'nope'), 'run folder does not exist'), ((), '--models is required'),
                      (('--models', run, '--n', '-1'), '--n must be at least 0')]:
        r = run_cli('thera-audit', *args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_32px_model_maps_its_saliency_at_half_its_working_size():
    low = tf.create_model('airbench', resolution=32)
    sizes = {}
    for m in low.modules():
        if isinstance(m, nn.Conv2d): m.register_forward_hook(lambda mod, i, o: sizes.__setitem__(mod, o.shape[-1]) or None)
    low(torch.zeros(1, 3, 64, 64))
    assert sizes[cam_layer(low)] == 16 and cam_layer(low) is [c for c in sizes if sizes[c] == 16][-1]
