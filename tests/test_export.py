"""ONNX export: the exported ensemble, run without torch or fastai, labels as thera-predict --tta 0 does."""
import json, shutil, subprocess, sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip('onnxruntime')
pytest.importorskip('onnx')

from conftest import write_dataset, zip_folder  # noqa: E402
import thera_fastai as tf  # noqa: E402
from thera_fastai.errors import TheraError  # noqa: E402
from thera_fastai.infer.export import export_run  # noqa: E402
from thera_fastai.files import file_mode  # noqa: E402

NO_TORCH = ("import sys, runpy; sys.modules.update(torch=None, fastai=None, thera_fastai=None); "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp('export')
    write_dataset(root/'data', n_train=200, n_val=30)
    tf.fit(root/'data', root/'run', arch='simple', folds=3, epochs=2, bs=16, tta=2, precision='fp32', log=lambda *_: None)
    return root, export_run(root/'run', root/'export')


def _onnx_predict(export, *args):
    return subprocess.run([sys.executable, '-c', NO_TORCH, str(export/'predict.py'), str(export), *map(str, args)],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_exported_ensemble_predicts_as_thera_predict_without_torch(exported, tmp_path):
    root, manifest = exported
    tmp_path, work = root, tmp_path
    assert [f['file'] for f in manifest['folds']] == ['fold0.onnx', 'fold1.onnx', 'fold2.onnx']
    assert all(((root/'export'/f).stat().st_mode & 0o777) == file_mode() for f in ('fold0.onnx', 'ensemble.json', 'predict.py'))
    expected = tf.predict(tmp_path/'run', tmp_path/'data', tta=0)
    zipped = zip_folder(tmp_path/'data', work/'data.zip')
    for images in (tmp_path/'data', zipped):
        res = _onnx_predict(root/'export', images, '--out', work/'onnx.txt', '--votes', work/'onnx.csv')
        assert res.returncode == 0, res.stderr
        labels = np.loadtxt(work/'onnx.txt', dtype=int)
        assert np.array_equal(labels, expected['label'].to_numpy())
        got = pd.read_csv(work/'onnx.csv')
        assert list(got.columns) == list(expected.columns) and list(got['image']) == list(expected['image'])
        for k in range(3): assert np.abs(got[f"prob_fold{k}"] - expected[f"prob_fold{k}"]).max() < 1e-4
    assert manifest['vote_rule'] == 'soft'
    older = work/'older'; shutil.copytree(root/'export', older)  # an export written before the rule was recorded voted hard
    old_manifest = json.loads((older/'ensemble.json').read_text())
    old_manifest = {k: v for k, v in old_manifest.items() if k not in ('vote_rule', 'vote')}
    for f, t in zip(old_manifest['folds'], (0.0, 0.0, 1.0)): f['threshold'] = t  # two folds always say clean, one never: the majority says clean
    (older/'ensemble.json').write_text(json.dumps(old_manifest))
    res = _onnx_predict(older, tmp_path/'data', '--out', work/'older.txt', '--votes', work/'older.csv')
    assert res.returncode == 0 and (np.loadtxt(work/'older.txt', dtype=int) == 1).all(), res.stderr
    assert (pd.read_csv(work/'older.csv').filter(like='prob_fold').sum(axis=1) < 1).any()  # where the soft vote says occluded
    (older/'ensemble.json').write_text(json.dumps(dict(old_manifest, vote_rule='median')))
    res = _onnx_predict(older, tmp_path/'data', '--out', work/'newer.txt')
    assert res.returncode == 2 and "unknown vote rule 'median'" in res.stderr and not (work/'newer.txt').exists()


@pytest.mark.slow
def test_exported_predictor_bad_input_is_one_line_exit_2_and_writes_nothing(exported, tmp_path):
    root, _ = exported
    broken = tmp_path/'broken'; (broken/'val_img').mkdir(parents=True)
    (broken/'val_img'/'000001.jpg').write_bytes((root/'data'/'val_img'/'000001.jpg').read_bytes()[:300])
    (tmp_path/'empty').mkdir()
    cases = [((tmp_path/'missing',), 'missing: does not exist'), ((broken,), '000001.jpg: not a readable JPEG'),
             ((root/'data', '--out', tmp_path/'no'/'labels.txt'), 'output folder does not exist'),
             ((root/'data', '--votes', tmp_path/'no'/'v.csv'), 'output folder does not exist')]
    for args, needle in cases:
        res = _onnx_predict(root/'export', *args, *(() if '--out' in args else ('--out', tmp_path/'labels.txt')))
        assert res.returncode == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)
    res = subprocess.run([sys.executable, '-c', NO_TORCH, str(root/'export'/'predict.py'), str(tmp_path/'empty'), str(root/'data')],
                         capture_output=True, text=True)
    assert res.returncode == 2 and 'ensemble.json: does not exist' in res.stderr
    assert not (tmp_path/'labels.txt').exists()


def test_an_export_that_fails_part_way_leaves_no_folder(exported, tmp_path, monkeypatch):
    import thera_fastai.infer.export as export
    root, _ = exported
    def full_disk(*args, **kwargs): raise OSError(28, 'No space left on device')
    monkeypatch.setattr(export.shutil, 'copyfile', full_disk)   # the last file of the export
    with pytest.raises(TheraError, match='no space left'): export_run(root/'run', tmp_path/'export')
    assert not list(tmp_path.iterdir())


def test_export_of_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(TheraError, match='not a thera-fit output folder'): export_run(tmp_path, tmp_path/'export')
    assert not (tmp_path/'export').exists()


@pytest.mark.parametrize('kwargs', [dict(resolution=32), dict(head='grid'), dict(head='concat')])
def test_a_32px_model_or_another_head_exports_and_gives_the_same_probabilities(kwargs, tmp_path):
    import onnxruntime as ort
    import torch
    from thera_fastai.infer.export import OnnxFold
    from thera_fastai.models import create_model
    torch.manual_seed(0)
    net = OnnxFold(create_model('airbench', **kwargs).eval(), ([0.5] * 3, [0.25] * 3)).eval()
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    torch.onnx.export(net, (images[:2],), str(tmp_path/'m.onnx'), input_names=['images'], output_names=['prob'],
                      dynamic_axes={'images': {0: 'n'}, 'prob': {0: 'n'}}, dynamo=False)
    got = ort.InferenceSession(str(tmp_path/'m.onnx')).run(None, {'images': images.numpy()})[0]
    with torch.no_grad(): want = net(images).numpy()
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)
