"""Pseudo-labels on generated data: which unlabelled images join training and with what targets, a teacher that saw
the fold's held-out rows refused, statistics from the labelled rows only, resume, and run identity."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from fastai.callback.core import Callback

import thera_fastai as tf
from thera_fastai.errors import TheraError
from thera_fastai.infer.ensemble import FoldModel
from thera_fastai.train.pseudo import pseudo_labels, unsmoothed

FIT = dict(arch='simple', folds=2, bs=16, tta=0, precision='fp32', log=lambda *_: None)
N_TRAIN = 96  # the `data` fixture's labelled images; pseudo-labelled rows follow them in the fit's image array


class _RowsAndTargets(Callback):
    "Records each training batch's cache rows and the targets the loss receives."
    order = 50
    def __init__(self): self.rows, self.targets = [], []
    def before_batch(self):
        if self.training: self.rows.append(np.asarray(self.dl.batch_rows)); self.targets.append(self.learn.yb[0].detach().float().clone())
    def seen(self): return np.concatenate(self.rows), torch.cat(self.targets).numpy()


def _teacher_val_probs(data, teacher):
    ds = tf.open_dataset(data, need_val=True)
    val = tf.cached_images(ds.val)
    learn = tf.load_fold_learner(teacher/'fold0')
    return unsmoothed(FoldModel(0, learn, 0.5).predict(val, tta=0), learn.fold_info['config']['label_smoothing'])


def test_a_smoothed_teachers_probabilities_are_mapped_back_onto_zero_one():
    got = unsmoothed([0.1, 0.9, 0.5, 0.82, 0.05, 0.99], 0.2)  # a teacher trained on targets 0.1 and 0.9
    assert np.allclose(got, [0.0, 1.0, 0.5, 0.9, 0.0, 1.0])
    assert np.allclose(unsmoothed([0.3, 0.7], 0.0), [0.3, 0.7])


def test_confident_images_are_kept_and_called_at_one_half():
    probs = np.array([0.97, 0.03, 0.6, 0.4, 0.91, 0.5], np.float32)
    kept, labels, soft = pseudo_labels(probs, 0.9, 'hard')
    assert kept.tolist() == [0, 1, 4] and labels.tolist() == [1, 0, 1] and np.isnan(soft).all()
    kept, labels, soft = pseudo_labels(probs, 0.5, 'soft')
    assert kept.tolist() == [0, 1, 2, 3, 4, 5] and labels.tolist() == [1, 0, 1, 0, 1, 1]
    assert np.allclose(soft, probs)


@pytest.fixture(scope='module')
def teacher(data, tmp_path_factory):
    out = tmp_path_factory.mktemp('pseudo')/'teacher'
    tf.fit(data, out, fold=0, epochs=1, label_smoothing=0.2, cache=out.parent/'cache', **FIT)  # smoothed, as the default recipe's teachers are
    return out


@pytest.mark.parametrize('targets', ['hard', 'soft'])
def test_pseudo_labelled_images_join_training_with_the_teachers_calls(targets, data, teacher, tmp_path):
    probs = _teacher_val_probs(data, teacher)
    kept = np.flatnonzero(np.maximum(probs, 1 - probs) >= 0.5)
    seen = _RowsAndTargets()
    s = tf.fit(data, tmp_path/'student', fold=0, epochs=2, pseudo=str(teacher), pseudo_confidence=0.5, pseudo_targets=targets, cbs=[seen], **FIT)
    info, teacher_info = (json.loads((run/'fold0'/'fold.json').read_text()) for run in (tmp_path/'student', teacher))
    assert s['folds'][0]['pseudo'] == info['pseudo']
    assert info['pseudo']['kept'] == len(kept) == 8 and info['pseudo']['teacher_fold'] == 0
    assert info['n_train'] == teacher_info['n_train']  # the labelled rows, as before
    assert info['stats'] == teacher_info['stats']  # normalization from the labelled training rows only
    rows, got = seen.seen()
    extra = rows >= N_TRAIN
    assert extra.any() and set(rows[extra] - N_TRAIN) <= set(range(len(kept)))
    want = probs[kept][rows[extra] - N_TRAIN]
    if targets == 'hard': want = (want >= 0.5).astype(np.float32)
    assert np.allclose(got[extra], want, atol=1e-5)
    assert set(np.unique(got[~extra])) <= {0.0, 1.0}  # labelled rows keep their labels
    oof = pd.read_csv(tmp_path/'student'/'fold0'/'oof.csv')
    assert sorted(oof['row']) == sorted(pd.read_csv(teacher/'fold0'/'oof.csv')['row'])  # scored on the same held-out rows


def test_a_teacher_that_saw_the_held_out_rows_is_refused(data, tmp_path):
    tf.fit(data, tmp_path/'other', fold=0, epochs=1, **{**FIT, 'seed': 7})
    with pytest.raises(TheraError, match='no finished fold of the teacher held out all of this fold'):
        tf.fit(data, tmp_path/'student', fold=0, epochs=1, pseudo=str(tmp_path/'other'), **FIT)
    assert not (tmp_path/'student'/'fold0'/'model.safetensors').exists()


def test_pseudo_needs_unlabelled_images_and_one_teacher(data, teacher, tmp_path):
    with pytest.raises(TheraError, match='both take a teacher'):
        tf.fit(data, tmp_path/'a', fold=0, epochs=1, pseudo=str(teacher), distill=str(teacher), **FIT)
    with pytest.raises(TheraError, match='pseudo_confidence must be in'):
        tf.fit(data, tmp_path/'b', fold=0, epochs=1, pseudo=str(teacher), pseudo_confidence=1.0, **FIT)
    import shutil
    shutil.copytree(data, tmp_path/'noval'); shutil.rmtree(tmp_path/'noval'/'val_img')
    with pytest.raises(TheraError, match='no val_img/ folder'):
        tf.fit(tmp_path/'noval', tmp_path/'c', fold=0, epochs=1, pseudo=str(teacher), **FIT)
    assert not (tmp_path/'c').exists()


def test_an_interrupted_pseudo_fit_resumes_to_the_same_weights(data, teacher, tmp_path):
    kw = dict(fold=0, epochs=3, pseudo=str(teacher), pseudo_confidence=0.5, pseudo_targets='soft', **FIT)
    tf.fit(data, tmp_path/'ref', **kw)

    class _Stop(Callback):
        order = 99
        def after_epoch(self):
            if self.epoch == 1: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): tf.fit(data, tmp_path/'resumed', cbs=[_Stop()], **kw)
    s = tf.fit(data, tmp_path/'resumed', **kw)
    assert s['folds'][0]['resumed_from_epoch'] == 2
    assert (tmp_path/'resumed'/'fold0'/'model.safetensors').read_bytes() == (tmp_path/'ref'/'fold0'/'model.safetensors').read_bytes()


def test_the_teacher_and_its_settings_are_part_of_the_run_and_a_run_without_them_keeps_its_id(data, teacher, tmp_path):
    from thera_fastai.runs import run_id
    plain = tf.FitConfig(arch='simple', folds=2, bs=16, tta=0)
    added_since = ('pseudo', 'pseudo_confidence', 'pseudo_targets', 'resolution', 'mixup', 'balance_strength', 'head', 'train_seed')  # fields added since these ids were first written; off here
    legacy = {k: v for k, v in plain.to_dict().items() if k not in added_since}
    from thera_fastai.files import short_hash
    assert run_id(plain, 'dkey') == short_hash(legacy, 'dkey')  # the identity configs had before the pseudo fields
    method = tf.FitConfig(method='airbench', folds=2)
    before_muon = {k: v for k, v in method.to_dict().items() if k not in added_since}
    before_muon['hyp'] = {k: v for k, v in before_muon['hyp'].items() if not k.startswith('muon')}
    assert run_id(method, 'dkey') == short_hash(before_muon, 'dkey')
    assert run_id(tf.FitConfig(method='airbench', folds=2, hyp=dict(muon=True)), 'dkey') != run_id(method, 'dkey')
    assert run_id(tf.FitConfig(arch='simple', folds=2, bs=16, tta=0, mixup=0.4), 'dkey') != run_id(plain, 'dkey')
    assert run_id(tf.FitConfig(arch='simple', folds=2, bs=16, tta=0, balance_strength=0.5), 'dkey') != run_id(plain, 'dkey')
    a = tf.FitConfig(arch='simple', folds=2, pseudo=str(teacher))
    assert len({run_id(a, 'dkey', 't1', 'v1'), run_id(a, 'dkey', 't2', 'v1'), run_id(a, 'dkey', 't1', 'v2'),
                run_id(tf.FitConfig(arch='simple', folds=2, pseudo=str(teacher), pseudo_targets='soft'), 'dkey', 't1', 'v1')}) == 4
