"""Training levers on generated data: any timm model, progressive resizing, weight EMA, distillation,
soft bootstrapping, MixUp, and rows left out of training."""
import numpy as np
import pandas as pd
import pytest
import torch
from fastai.callback.core import Callback

import thera_fastai as tf
from thera_fastai.errors import TheraError
from thera_fastai.train.learner import BalancedBCELoss

FIT = dict(arch='simple', folds=2, bs=16, tta=0, precision='fp32', log=lambda *_: None)


class _Seen(Callback):
    "Records the training batches' input sizes per epoch, their targets and their cache rows (where the loader gathers them)."
    order = 50
    def __init__(self): self.sizes, self.targets, self.rows = [], [], []
    def before_batch(self):
        if not self.training: return
        self.sizes.append((self.epoch, self.learn.xb[0].shape[-1])); self.targets.append(self.learn.yb[0].detach().clone())
        self.rows.append(getattr(getattr(self.dl, 'dl', self.dl), 'batch_rows', None))


def test_a_timm_model_trains_one_epoch_predicts_and_records_its_cost(data, tmp_path):
    s = tf.fit(data, tmp_path/'run', fold=0, epochs=1, **{**FIT, 'arch': 'regnetx_002'})
    profile = s['folds'][0]['profile']
    assert s['config']['stem'] == 'x2' and profile['params'] == sum(p.numel() for p in tf.create_model('regnetx_002', stem='x2').parameters())
    assert profile['train_gflop'] > 0
    frame = tf.predict(tmp_path/'run', data, partial=True, tta=0)
    assert len(frame) == 8 and set(frame['label']) <= {0, 1}


def test_progressive_resizing_trains_small_first_then_full_size(data, tmp_path):
    seen = _Seen()
    tf.fit(data, tmp_path/'run', fold=0, epochs=2, resize_from=32, cbs=[seen], **FIT)
    assert {e: s for e, s in seen.sizes} == {0: 32, 1: 64}


def test_ema_weights_are_what_the_fold_keeps_and_resume_keeps_them(data, tmp_path, monkeypatch):
    ref = tf.fit(data, tmp_path/'ref', fold=0, epochs=3, ema=0.9, **FIT)
    from thera_fastai.infer.ensemble import FoldModel
    images, _, _, valid = tf.fold_rows(data, tf.FitConfig(**ref['config']), 0)
    oof = pd.read_csv(tmp_path/'ref'/'fold0'/'oof.csv').sort_values('row')
    fresh = FoldModel(0, tf.load_fold_learner(tmp_path/'ref'/'fold0'), 0.5).predict(images[np.sort(valid)], tta=0)
    np.testing.assert_allclose(oof['prob'].to_numpy(), fresh, atol=1e-6)  # the reused last validation ran on the average
    from safetensors.torch import load_file
    from thera_fastai.train.levers import WeightEMA
    cbs = []
    monkeypatch.setattr(WeightEMA, 'after_fit', lambda self: (cbs.append({k: v.clone() for k, v in self.learn.model.state_dict().items()}),
                                                               self.learn.model.load_state_dict(self.ema.module.state_dict())))
    tf.fit(data, tmp_path/'again', fold=0, epochs=3, ema=0.9, **FIT)
    saved = load_file(tmp_path/'again'/'fold0'/'model.safetensors')
    live = cbs[0]
    assert any(not torch.equal(saved[k], live[k]) for k in saved if saved[k].is_floating_point())  # the average, not the last step
    assert (tmp_path/'again'/'fold0'/'model.safetensors').read_bytes() == (tmp_path/'ref'/'fold0'/'model.safetensors').read_bytes()
    monkeypatch.undo()

    class _Stop(Callback):
        order = 99
        def after_epoch(self):
            if self.epoch == 1: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): tf.fit(data, tmp_path/'resumed', fold=0, epochs=3, ema=0.9, cbs=[_Stop()], **FIT)
    s = tf.fit(data, tmp_path/'resumed', fold=0, epochs=3, ema=0.9, **FIT)
    assert s['folds'][0]['resumed_from_epoch'] == 2
    assert (tmp_path/'resumed'/'fold0'/'model.safetensors').read_bytes() == (tmp_path/'ref'/'fold0'/'model.safetensors').read_bytes()


def test_distillation_trains_on_the_teachers_probabilities_of_the_same_fold_unsmoothed(data, tmp_path):
    tf.fit(data, tmp_path/'teacher', fold=0, epochs=1, label_smoothing=0.2, **FIT)
    seen = _Seen()
    s = tf.fit(data, tmp_path/'student', fold=0, epochs=1, distill=str(tmp_path/'teacher'), distill_weight=1.0, cbs=[seen], **FIT)
    targets = torch.cat(seen.targets)
    assert targets.dtype == torch.float32 and ((targets > 0) & (targets < 1)).any()  # probabilities, not 0/1 labels
    teacher = tf.load_fold_learner(tmp_path/'teacher'/'fold0')
    images, labels, tr, va = tf.fold_rows(data, tf.FitConfig(**{k: v for k, v in s['config'].items() if k != 'distill'}), 0)
    from thera_fastai.infer.ensemble import FoldModel
    raw = FoldModel(0, teacher, 0.5).predict(images[tr], tta=0)
    expected = np.clip((raw - 0.1) / 0.8, 0, 1)  # the teacher's smoothing (targets 0.1 and 0.9) taken back out
    assert np.abs(targets.numpy()[:, None] - expected[None, :]).min(1).max() < 1e-5
    assert np.abs(targets.numpy()[:, None] - raw[None, :]).min(1).max() > 1e-3  # not the teacher's smoothed probabilities


def test_distillation_refuses_a_teacher_that_trained_on_the_held_out_rows(data, tmp_path):
    tf.fit(data, tmp_path/'teacher', fold=0, epochs=1, **{**FIT, 'seed': 7})
    with pytest.raises(TheraError, match='no finished fold of the teacher held out all of this fold'):
        tf.fit(data, tmp_path/'student', fold=0, epochs=1, distill=str(tmp_path/'teacher'), **FIT)
    with pytest.raises(TheraError, match='no config.json'):
        tf.fit(data, tmp_path/'student2', fold=0, epochs=1, distill=str(tmp_path), **FIT)


def test_distillation_from_a_teacher_table_trains_on_its_probabilities_of_training_rows_only(data, tmp_path):
    "A CSV of row, prob: the rows it lists train on its probability, the others on their labels; it may not list a held-out row."
    images, labels, tr, va = tf.fold_rows(data, tf.FitConfig(arch='simple', folds=2, epochs=1, bs=16, tta=0), 0)
    labels, listed = np.asarray(labels), tr[::2]
    probs = np.random.default_rng(0).uniform(0.05, 0.95, len(listed)).round(4)
    pd.DataFrame(dict(row=listed, prob=probs)).to_csv(tmp_path/'teacher.csv', index=False)
    seen = _Seen()
    s = tf.fit(data, tmp_path/'student', fold=0, epochs=1, distill=str(tmp_path/'teacher.csv'), distill_weight=1.0, cbs=[seen], **FIT)
    rows, targets = np.concatenate(seen.rows), torch.cat(seen.targets).float().numpy()
    assert np.isin(rows, listed).any() and (~np.isin(rows, listed)).any()
    by_row = dict(zip(listed.tolist(), probs))
    assert np.allclose(targets, [by_row.get(r, labels[r]) for r in rows.tolist()], atol=1e-6)  # the table's probability, else the label
    (tmp_path/'moved.csv').write_bytes((tmp_path/'teacher.csv').read_bytes())  # the same table elsewhere: the same run
    assert tf.fit(data, tmp_path/'student', fold=0, epochs=1, distill=str(tmp_path/'moved.csv'), distill_weight=1.0, **FIT)['run_id'] == s['run_id']
    pd.DataFrame(dict(row=listed, prob=probs[::-1])).to_csv(tmp_path/'moved.csv', index=False)
    with pytest.raises(TheraError, match='another config'):
        tf.fit(data, tmp_path/'student', fold=0, epochs=1, distill=str(tmp_path/'moved.csv'), distill_weight=1.0, **FIT)
    pd.DataFrame(dict(row=np.r_[listed, va[:1]], prob=np.r_[probs, 0.5])).to_csv(tmp_path/'leaky.csv', index=False)
    with pytest.raises(TheraError, match="lists 1 of this fold's held-out rows"):
        tf.fit(data, tmp_path/'leaky', fold=0, epochs=1, distill=str(tmp_path/'leaky.csv'), **FIT)
    assert not (tmp_path/'leaky'/'fold0'/'model.safetensors').exists()
    with pytest.raises(TheraError, match="held-out rows"):  # both folds: fold 1 holds out the rows the table lists, refused before fold 0 trains
        tf.fit(data, tmp_path/'both', epochs=1, distill=str(tmp_path/'teacher.csv'), **FIT)
    assert not (tmp_path/'both'/'fold0').exists()
    for text, message in (('row,prob\n0,1.5\n', "'prob' is not a probability"), ('row,p\n0,0.5\n', "needs 'row' and 'prob' columns"),
                          ('row,prob\n0,0.5\n0,0.4\n', 'lists a row twice'), (f'row,prob\n{len(labels)},0.5\n', 'not a row number below')):
        (tmp_path/'bad.csv').write_text(text)
        with pytest.raises(TheraError, match=message):
            tf.fit(data, tmp_path/'bad', fold=0, epochs=1, distill=str(tmp_path/'bad.csv'), **FIT)
        assert not (tmp_path/'bad'/'fold0').exists()


def test_soft_bootstrapping_blends_the_label_with_the_models_own_probability():
    logits = torch.tensor([2.0, -1.0, 0.5], requires_grad=True)
    labels = torch.tensor([0, 1, 1])
    got = BalancedBCELoss(bootstrap=0.8)(logits, labels)
    p = torch.sigmoid(logits.detach())
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, 0.8 * labels.float() + 0.2 * p)
    assert torch.allclose(got, want)
    with torch.no_grad():  # validation: the plain loss against the labels
        assert torch.allclose(BalancedBCELoss(bootstrap=0.8)(logits, labels), torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float()))


def test_mixup_blends_each_image_and_its_target_with_one_partner_at_one_weight():
    from types import SimpleNamespace
    from thera_fastai.train.levers import TargetMixUp
    torch.manual_seed(0)
    n = 32
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()  # image i is i everywhere
    y = torch.arange(n) % 2
    cb = TargetMixUp(0.4)
    cb.learn = SimpleNamespace(xb=(x,), yb=(y,), x=x, y=y, training=True)
    cb.before_train(); cb.before_batch()
    mixed_x, mixed_y, lam = cb.learn.xb[0], cb.learn.yb[0], cb.lam
    assert mixed_y.dtype == torch.float32 and bool(((lam >= 0.5) & (lam <= 1)).all())
    assert torch.equal(mixed_x, mixed_x[:, :1, :1, :1].expand_as(mixed_x))  # whole images blended, not patches
    v = mixed_x[:, 0, 0, 0]
    blended = 1 - lam > 1e-3  # rows whose own weight is not 1 within float precision
    assert int(blended.sum()) > n // 2
    partner = ((v - lam * x[:, 0, 0, 0]) / (1 - lam))[blended]
    j = partner.round().long()
    assert torch.allclose(partner, j.float(), atol=1e-2) and bool(((j >= 0) & (j < n)).all())
    assert torch.allclose(mixed_y[blended], torch.lerp(y[j].float(), y[blended].float(), lam[blended]), atol=1e-5)  # same partner, same weight


def test_a_mixup_fit_trains_on_blended_targets_and_validates_on_the_labels(data, tmp_path):
    seen = _Seen()
    s = tf.fit(data, tmp_path/'run', fold=0, epochs=2, mixup=0.4, cbs=[seen], **FIT)
    targets = torch.cat(seen.targets)
    assert targets.is_floating_point() and bool(((targets >= 0) & (targets <= 1)).all())
    assert ((targets > 0.01) & (targets < 0.99)).float().mean() > 0.3  # most rows carry a blend
    assert s['config']['mixup'] == 0.4 and 0 <= s['folds'][0]['at_05']['hter'] <= 1
    from thera_fastai.api import default_out
    assert default_out(tf.FitConfig(arch='simple', mixup=0.4)).name == 'simple-mixup0.4'


@pytest.mark.parametrize('kind', ['rows', 'names', 'csv'])
def test_excluded_rows_never_reach_training_and_validation_is_unchanged(kind, data, tmp_path):
    base = tf.fold_rows(data, tf.FitConfig(**{k: v for k, v in FIT.items() if k in ('folds', 'bs', 'tta')}), 0)
    train, valid = base[2], base[3]
    drop = np.concatenate([train[:5], valid[:2]])
    names = [f"{r + 1:06d}.jpg" for r in drop]
    path = tmp_path/'exclude.txt'
    if kind == 'rows': path.write_text('\n'.join(map(str, drop)) + '\n')
    elif kind == 'names': path.write_text('\n'.join(names) + '\n')
    else: path = tmp_path/'issues.csv'; pd.DataFrame(dict(name=names, row=drop, label=0)).to_csv(path, index=False)
    rows_seen = []
    class _Rows(Callback):
        def before_batch(self):
            if self.training: rows_seen.extend(self.dl.batch_rows.tolist())
    s = tf.fit(data, tmp_path/'run', fold=0, epochs=1, exclude=str(path), cbs=[_Rows()], **FIT)
    assert s['folds'][0]['n_train'] == len(train) - 5 and s['folds'][0]['n_valid'] == len(valid)
    assert not set(rows_seen) & set(train[:5]) and set(rows_seen) <= set(train)
    oof = pd.read_csv(tmp_path/'run'/'fold0'/'oof.csv')
    assert sorted(oof['row']) == sorted(valid)


def test_a_run_is_the_same_run_whatever_path_names_its_exclude_file_and_teacher(data, tmp_path, monkeypatch):
    tf.fit(data, tmp_path/'teacher', fold=0, epochs=1, **FIT)
    (tmp_path/'a').mkdir(); (tmp_path/'b').mkdir()
    (tmp_path/'a'/'drop.txt').write_text('000001.jpg\n000002.jpg\n')
    monkeypatch.chdir(tmp_path)
    first = tf.fit(data, tmp_path/'run', fold=0, epochs=1, exclude='a/drop.txt', distill='teacher', **FIT)
    assert first['config']['exclude'] == str(tmp_path/'a'/'drop.txt') and first['config']['distill'] == str(tmp_path/'teacher')
    weights = (tmp_path/'run'/'fold0'/'model.safetensors').read_bytes()
    (tmp_path/'b'/'rows.txt').write_text('1\n0\n')  # the same rows, named otherwise, in another file
    (tmp_path/'teacher').rename(tmp_path/'b'/'teacher')  # the teacher moved: still the same run id
    monkeypatch.chdir(tmp_path/'b')
    again = tf.fit(data, tmp_path/'run', fold=0, epochs=1, exclude=str(tmp_path/'b'/'rows.txt'), distill='teacher', **FIT)
    assert again['run_id'] == first['run_id'] and (tmp_path/'run'/'fold0'/'model.safetensors').read_bytes() == weights
    (tmp_path/'b'/'rows.txt').write_text('1\n2\n')  # other rows: another run
    with pytest.raises(TheraError, match='another config'):
        tf.fit(data, tmp_path/'run', fold=0, epochs=1, exclude='rows.txt', distill='teacher', **FIT)
    (tmp_path/'b'/'teacher').rename(tmp_path/'teacher')
    monkeypatch.chdir(tmp_path/'a')  # a notebook in another folder rebuilds the fold from the absolute paths saved
    learn = tf.load_fold_learner(tmp_path/'run'/'fold0', data=data)
    assert len(learn.dls.train_ds) == first['folds'][0]['n_train']


def test_a_bad_exclude_file_is_one_line(data, tmp_path):
    path = tmp_path/'exclude.txt'
    path.write_text('000001.jpg\nnot-an-image.jpg\n')
    with pytest.raises(TheraError, match="'not-an-image.jpg' is neither a row number below 96 nor a training image name"):
        tf.fit(data, tmp_path/'run', fold=0, epochs=1, exclude=str(path), **FIT)
    assert not (tmp_path/'run').exists()
    with pytest.raises(TheraError, match='cannot read the row list'):
        tf.fit(data, tmp_path/'run', fold=0, epochs=1, exclude=str(tmp_path/'missing.txt'), **FIT)
    pd.DataFrame(dict(image=['a'])).to_csv(tmp_path/'x.csv', index=False)
    with pytest.raises(TheraError, match="needs a 'row' or 'name' column"):
        tf.fit(data, tmp_path/'run', fold=0, epochs=1, exclude=str(tmp_path/'x.csv'), **FIT)


class _Poison(Callback):
    "Makes a weight infinite in the second epoch, as a learning rate that diverges does."
    def before_batch(self):
        if self.training and self.epoch == 1 and self.iter == 1:
            with torch.no_grad(): next(self.learn.model.parameters()).fill_(float('inf'))


def test_a_loss_that_is_not_finite_stops_the_fit_with_one_line_and_saves_no_model(data, tmp_path):
    with pytest.raises(TheraError, match=r'fold 0: the training loss is (nan|inf) at epoch 1, step 1: the fit diverged'):
        tf.fit(data, tmp_path/'run', fold=0, epochs=3, cbs=[_Poison()], **FIT)
    fold = tmp_path/'run'/'fold0'
    assert not (fold/'fold.json').exists() and not (fold/'model.safetensors').exists()
    assert [p.name for p in fold.glob('ckpt-e*.pth')] == ['ckpt-e0.pth']  # the finite epoch is kept


def test_a_grid_head_fold_saves_its_head_and_rebuilds_to_its_own_predictions(data, tmp_path):
    ref = tf.fit(data, tmp_path/'grid', fold=0, epochs=1, **{**FIT, 'arch': 'airbench', 'widths': (8, 16, 16), 'head': 'grid'})
    from safetensors.torch import load_file
    from thera_fastai.infer.ensemble import FoldModel
    linear = [v for v in load_file(tmp_path/'grid'/'fold0'/'model.safetensors').values() if v.ndim == 2]
    assert [tuple(v.shape) for v in linear] == [(1, 16 * 4 * 4)]  # one weight for each channel in each cell of the 4x4 grid
    images, _, _, valid = tf.fold_rows(data, tf.FitConfig(**ref['config']), 0)
    oof = pd.read_csv(tmp_path/'grid'/'fold0'/'oof.csv').sort_values('row')
    fresh = FoldModel(0, tf.load_fold_learner(tmp_path/'grid'/'fold0'), 0.5).predict(images[np.sort(valid)], tta=0)
    np.testing.assert_allclose(oof['prob'].to_numpy(), fresh, atol=1e-6)
