"""ONNX export: the exported ensemble, run without torch or fastai, labels as thera-predict --tta 0 does."""
import subprocess, sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip('onnxruntime')
pytest.importorskip('onnx')

from conftest import write_dataset, zip_folder  # noqa: E402
import thera_fastai as tf  # noqa: E402
from thera_fastai.errors import TheraError  # noqa: E402
from thera_fastai.export import export_run  # noqa: E402

NO_TORCH = ("import sys, runpy; sys.modules.update(torch=None, fastai=None, thera_fastai=None); "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.slow
def test_exported_ensemble_predicts_as_thera_predict_without_torch(tmp_path):
    write_dataset(tmp_path/'data', n_train=200, n_val=30)
    tf.fit(tmp_path/'data', tmp_path/'run', arch='simple', folds=3, epochs=2, bs=16, tta=2, precision='fp32', log=lambda *_: None)
    manifest = export_run(tmp_path/'run', tmp_path/'export')
    assert [f['file'] for f in manifest['folds']] == ['fold0.onnx', 'fold1.onnx', 'fold2.onnx']
    expected = tf.predict(tmp_path/'run', tmp_path/'data', tta=0)
    zipped = zip_folder(tmp_path/'data', tmp_path/'data.zip')
    for images in (tmp_path/'data', zipped):
        res = subprocess.run([sys.executable, '-c', NO_TORCH, str(tmp_path/'export'/'predict.py'), str(tmp_path/'export'), str(images),
                              '--out', str(tmp_path/'onnx.txt'), '--votes', str(tmp_path/'onnx.csv')], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        labels = np.loadtxt(tmp_path/'onnx.txt', dtype=int)
        assert np.array_equal(labels, expected['label'].to_numpy())
        got = pd.read_csv(tmp_path/'onnx.csv')
        assert list(got['image']) == list(expected['image'])
        for k in range(3): assert np.abs(got[f"prob_fold{k}"] - expected[f"prob_fold{k}"]).max() < 1e-4


def test_export_of_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(TheraError, match='not a thera-fit output folder'): export_run(tmp_path, tmp_path/'export')
    assert not (tmp_path/'export').exists()
