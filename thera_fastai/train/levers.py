"""Training levers a recipe can switch on: progressive resizing, an EMA of the weights, soft targets from a teacher, MixUp."""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.mixup import MixUp

from ..data.rows import read_teacher_table
from ..errors import TheraError

__all__ = ['ProgressiveResize', 'WeightEMA', 'SoftTargets', 'teacher_fold', 'teacher_predict', 'teacher_probs', 'table_probs', 'unsmoothed',
           'TargetMixUp', 'lever_callbacks']


class ProgressiveResize(Callback):
    """fastai's progressive resizing on batches: training images are resized to `size` px for the first
    `low_epochs` epochs, then used at full size. Validation always sees full size."""
    order = 5  # after the batch transforms (augmentation, normalization), before the model
    def __init__(self, size, low_epochs): self.size, self.low_epochs = size, low_epochs

    def before_batch(self):
        if self.training and self.epoch < self.low_epochs:
            x = self.learn.xb[0]
            self.learn.xb = (F.interpolate(x, size=(self.size, self.size), mode='bilinear', antialias=True, align_corners=False),)


class WeightEMA(Callback):
    """An exponential moving average of the weights (timm's `ModelEmaV3`, updated after every step) that
    validation uses and that replaces the weights when the fit ends. Its state rides in the epoch checkpoints.

    The decay warms up (timm's `1 - (1 + step)^-2/3`, capped at `decay`): a fixed 0.99 over a 250-step fit kept the
    warm-up's weights in the average and scored HTER 0.449 at 0.5 where the plain weights scored 0.163."""
    order = 65
    def __init__(self, decay=0.999): self.decay, self.resume = decay, None
    def load_checkpoint_state(self, state): self.resume = state

    def before_fit(self):
        from timm.utils import ModelEmaV3
        self.ema = ModelEmaV3(self.learn.model, decay=self.decay, use_warmup=True)
        if self.resume is not None: self.ema.module.load_state_dict(self.resume); self.resume = None

    def after_step(self): self.ema.update(self.learn.model, step=self.epoch * self.n_iter + self.iter + 1)

    def _swap(self):
        live, avg = self.learn.model.state_dict(), self.ema.module.state_dict()
        for k in live:
            tmp = live[k].detach().clone(); live[k].copy_(avg[k]); avg[k].copy_(tmp)

    def before_validate(self): self._swap()
    def after_validate(self): self._swap()
    def after_fit(self): self.learn.model.load_state_dict(self.ema.module.state_dict())
    def checkpoint_state(self): return {k: v.detach().cpu().clone() for k, v in self.ema.module.state_dict().items()}


class SoftTargets(Callback):
    """Soft targets: each training batch's 0/1 labels become `weight * probability + (1 - weight) * label`, with the
    probability looked up by cache row (the rows the batch loader gathered); a row whose probability is NaN keeps its
    label. Distillation gives every training row a teacher's probability; soft pseudo-labels give the unlabelled rows
    theirs at weight 1."""
    order = 6
    def __init__(self, probs_by_row, weight=0.5): self.probs, self.weight = probs_by_row, weight

    def before_batch(self):
        if not self.training: return
        dl = getattr(self.dl, 'dl', self.dl)
        rows = getattr(dl, 'batch_rows', None)
        y = self.learn.yb[0]
        if rows is None or len(rows) != len(y): raise TheraError("soft targets need the cache-gathering DataLoader (CacheDL)")
        probs = torch.as_tensor(self.probs[rows], dtype=torch.float32, device=y.device)
        y = y.float()
        self.learn.yb = (torch.where(torch.isnan(probs), y, (1 - self.weight) * y + self.weight * probs),)


class TargetMixUp(MixUp):
    """fastai's `MixUp` for the one-logit BCE loss: each training image and its 0/1 (or soft) target are blended with
    another row of the batch at one weight drawn from Beta(`alpha`, `alpha`) (at least half its own). The loss takes the
    blended target as a probability, so the targets are mixed (fastai mixes the losses for integer-class losses only)."""
    order = SoftTargets.order + 1  # after the batch transforms and any teacher's soft targets
    def before_train(self): self.stack_y = False  # (so MixHandler's after_train leaves the loss alone)
    def before_batch(self):
        self.learn.yb = (self.y.float(),)
        super().before_batch()


def teacher_fold(run_dir, valid_idx, device='cpu'):
    """The `FoldModel` of the teacher run's finished fold whose held-out rows include all of `valid_idx`: that model
    never trained on the rows the student is scored on. Any other fold is refused."""
    from ..infer.ensemble import FoldModel
    from .learner import load_fold_learner
    from ..runs import finished_folds, fold_dir, open_run, read_oof
    valid = set(np.asarray(valid_idx).tolist())
    for k, info in finished_folds(run_dir, open_run(run_dir)).items():
        if valid <= set(read_oof(run_dir, [k])['row'].tolist()):
            return FoldModel(k, load_fold_learner(fold_dir(run_dir, k), device=device), info['threshold'])
    raise TheraError("no finished fold of the teacher held out all of this fold's validation rows "
                     "(train the teacher with the same folds, seed and sample)", Path(run_dir))


def unsmoothed(probs, eps):
    """A probability of a model trained with label smoothing `eps` (targets eps/2 and 1 - eps/2) mapped back onto
    [0, 1]: `(p - eps/2) / (1 - eps)`, clipped. Its confidence can then reach a `pseudo_confidence` of 0.9 (a teacher
    smoothed at 0.2 almost never says more than 0.9), and as a soft target it is smoothed once, by the student's loss."""
    return np.clip((np.asarray(probs, np.float32) - eps / 2) / (1 - eps), 0, 1)


def teacher_predict(teacher, images, tta=0, compile=None):
    "The `teacher` FoldModel's P(class 1) of `images`, mapped back from its own label smoothing (`unsmoothed`)."
    return unsmoothed(teacher.predict(images, tta=tta, compile=compile), teacher.learn.fold_info['config']['label_smoothing'])


def teacher_probs(teacher, images, valid_idx, train_idx, device='cpu'):
    """P(class 1) of every row of `images` in `train_idx` (the rest NaN): from `teacher_fold`'s model of run folder
    `teacher` by `teacher_predict` (the student's loss smooths its targets once, not twice), or from the teacher
    table `teacher` names (`table_probs`)."""
    if Path(teacher).is_file(): return table_probs(teacher, len(images), valid_idx, train_idx)
    model = teacher_fold(teacher, valid_idx, device)
    probs = np.full(len(images), np.nan, np.float32)
    probs[train_idx] = teacher_predict(model, images[np.asarray(train_idx)])
    return probs


def table_probs(path, n_rows, valid_idx, train_idx):
    """The teacher table's probabilities of the `train_idx` rows it lists (NaN elsewhere: those keep their labels). A
    table that lists any held-out row is refused: a table of such rows (a K-fold run's out-of-fold one) comes from
    models that trained on the others of them, which would carry their labels into the targets."""
    rows, probs = read_teacher_table(path, n_rows)
    if n_seen := len(np.intersect1d(rows, valid_idx)):
        raise TheraError(f"lists {n_seen:,} of this fold's held-out rows: a teacher table may list training rows only "
                         "(an inner cross-fit's out-of-fold probabilities, as bench/ensemble_study.py --audit writes)", Path(path))
    listed = np.isin(rows, train_idx)
    if not listed.any(): raise TheraError("lists none of this fold's training rows", Path(path))
    out = np.full(n_rows, np.nan, np.float32)
    out[rows[listed]] = probs[listed]
    return out


def lever_callbacks(cfg, soft_targets=None):
    "The callbacks of `cfg`'s levers (progressive resizing, EMA, distillation or soft pseudo-labels, MixUp)."
    cbs = []
    if cfg.resize_from: cbs.append(ProgressiveResize(cfg.resize_from, cfg.epochs // 2))
    if cfg.ema: cbs.append(WeightEMA(cfg.ema))
    if soft_targets is not None: cbs.append(SoftTargets(soft_targets, 1.0 if cfg.pseudo else cfg.distill_weight))
    if cfg.mixup: cbs.append(TargetMixUp(cfg.mixup))
    return cbs
