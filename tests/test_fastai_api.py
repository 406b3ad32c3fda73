"""A rebuilt fold learner behaves as any fastai image classifier: predict, show_results, ClassificationInterpretation
and export decode the class at the fold's own threshold."""
import json
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

import thera_fastai as tf
from thera_fastai.data.loaders import CachedImages

FIT = dict(arch='simple', folds=2, epochs=2, bs=16, tta=0, precision='fp32', log=lambda *_: None)


@pytest.fixture(scope='module')
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp('api')/'run'
    tf.fit(data, out, fold=0, **FIT)
    return out


@pytest.fixture(scope='module')
def learn(run, data):
    learn = tf.load_fold_learner(run/'fold0', data=data, device='cpu')
    yield learn
    plt.close('all')


def _oof(run): return pd.read_csv(run/'fold0'/'oof.csv')


def test_predict_gives_the_class_at_the_folds_threshold_for_a_path_an_array_and_a_row(learn, run, data):
    threshold = json.loads((run/'fold0'/'fold.json').read_text())['threshold']
    row = int(_oof(run)['row'].iloc[0])
    path = data/'train_img'/f"{row + 1:06d}.jpg"
    array = tf.cached_images(tf.open_dataset(data).train)[row]
    with learn.no_bar():
        answers = [learn.predict(path), learn.predict(str(path)), learn.predict(array), learn.predict(row)]
    expected = float(_oof(run)['prob'].iloc[0])
    for label, idx, probs in answers:
        assert probs.shape == (2,) and abs(float(probs.sum()) - 1) < 1e-6
        assert idx.ndim == 0 and int(idx) == int(float(probs[1]) >= threshold) and label == str(int(idx))
    for _, _, probs in answers[::3]: assert abs(float(probs[1]) - expected) < 1e-5   # the cache row and its JPEG: the oof figure


def test_decoded_predictions_use_the_folds_threshold_not_one_half(learn, run):
    threshold = json.loads((run/'fold0'/'fold.json').read_text())['threshold']
    assert learn.loss_func.thresh == threshold
    with learn.no_bar(): probs, targs, decoded = learn.get_preds(with_decoded=True)
    assert np.array_equal(decoded.numpy(), (probs[:, 1] >= threshold).long().numpy())
    learn.loss_func.thresh = 1.01   # nothing reaches it: every row decodes to class 0
    try:
        with learn.no_bar(): assert int(learn.get_preds(with_decoded=True)[2].sum()) == 0
    finally: learn.loss_func.thresh = threshold


def test_interpretation_confusion_matches_the_out_of_fold_decisions(learn, run):
    from fastai.interpret import ClassificationInterpretation
    threshold = json.loads((run/'fold0'/'fold.json').read_text())['threshold']
    oof = _oof(run)
    decided = (oof['prob'].to_numpy().astype(np.float32) >= np.float32(threshold)).astype(int)   # float32, as the model's
    expected = np.array([[np.sum((oof['label'] == t) & (decided == d)) for d in (0, 1)] for t in (0, 1)])
    with learn.no_bar():
        interp = ClassificationInterpretation.from_learner(learn)
        assert np.array_equal(interp.confusion_matrix(), expected)
        interp.plot_top_losses(6)
    titles = [a.get_title() for a in plt.gcf().axes]
    assert len(titles) == 6 and all(t.count('/') == 3 for t in titles)   # predicted/actual / loss / probability
    losses, idx = interp.top_losses(3)
    assert len(idx) == 3 and losses[0] >= losses[2]


def test_show_results_draws_one_panel_per_image_titled_with_both_labels(learn):
    with learn.no_bar(): learn.show_results(max_n=6)
    titles = [a.get_title() for a in plt.gcf().axes]
    assert len(titles) == 6 and all(t.split('\n')[0] in ('0', '1') and t.split('\n')[1] in ('0', '1') for t in titles)


def test_export_pickles_the_learner_without_the_image_cache(learn, tmp_path, data):
    from fastai.learner import load_learner
    learn.export(tmp_path/'export.pkl')
    assert len(learn.dls.train_ds.tls[0].tfms.fs[0].images) > 0   # the live learner keeps its cache
    loaded = load_learner(tmp_path/'export.pkl')
    held = [f for f in loaded.dls.valid_ds.tls[0].tfms.fs if isinstance(f, CachedImages)]
    assert held and all(len(f.images) == 0 for f in held)
    assert (tmp_path/'export.pkl').stat().st_size < 2 * sum(p.numel() * 4 for p in learn.model.state_dict().values()) + 1_000_000
    path = data/'val_img'/'000001.jpg'
    with learn.no_bar(), loaded.no_bar():
        assert torch.allclose(loaded.predict(path)[2], learn.predict(path)[2], atol=1e-6)


@pytest.mark.slow
def test_the_readme_python_snippet_runs_on_generated_data(tmp_path, monkeypatch):
    from conftest import write_dataset
    readme = (Path(__file__).resolve().parents[1]/'README.md').read_text()
    code = readme.split('## From Python')[1].split('```python\n')[1].split('```')[0]
    write_dataset(tmp_path/'data', n_train=200, n_val=8)
    small = {"DATA = 'ml_exercise_therapanacea.zip'": f"DATA = {str(tmp_path/'data')!r}", 'folds=5': "folds=2, epochs=2, bs=16, tta=0",
             "'face.jpg'": repr(str(tmp_path/'data'/'val_img'/'000001.jpg')), 'learn.lr_find()': 'learn.lr_find(num_it=10)'}
    for old, new in small.items():
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, 'README.md', 'exec'), scope)
    assert scope['maps'].shape == (16, 64, 64) and len(scope['votes']) == 8 and (tmp_path/'runs'/'compare'/'compare.md').exists()
    assert scope['audit']['n_rows'] == 200 and 0 <= scope['summary']['pooled']['cross_fitted']['hter'] <= 0.5
