"""Pseudo-labels: the unlabelled val_img/ images join a fold's training rows with labels from a teacher run's model of
the same fold, the confident ones only, as hard 0/1 targets or as the teacher's probabilities."""
import numpy as np

from .levers import teacher_fold, teacher_predict, unsmoothed

__all__ = ['pseudo_labels', 'unsmoothed', 'with_pseudo_labels']  # unsmoothed: levers', shared with distillation


def pseudo_labels(probs, confidence, targets='hard'):
    """Which unlabelled images to keep and their training targets, from the teacher's P(class 1) `probs`: an image is
    kept when max(p, 1 - p) >= `confidence`; its 0/1 label is the call at 0.5 (the teacher's tuned threshold was chosen
    on the student's held-out rows, so it is not used), and its soft target (`targets='soft'`) is p itself, else NaN.
    Returns (kept indices, labels, soft targets)."""
    probs = np.asarray(probs, np.float32)
    kept = np.flatnonzero(np.maximum(probs, 1 - probs) >= confidence)
    labels = (probs[kept] >= 0.5).astype(np.int64)
    soft = probs[kept] if targets == 'soft' else np.full(len(kept), np.nan, np.float32)
    return kept, labels, soft


def with_pseudo_labels(cfg, images, labels, train_idx, valid_idx, unlabeled, device='cpu', log=print, fold=0):
    """The fit's images, labels and training rows with `cfg.pseudo`'s confident pseudo-labelled images appended after
    the labelled ones, the soft targets by row (NaN for labelled rows; None for hard targets) and a record of what was
    added. The teacher is `teacher_fold`'s: its model never trained on `valid_idx`, so the held-out score stays honest.
    Computed the same way on a resumed fit, so its loaders are the same."""
    teacher = teacher_fold(cfg.pseudo, valid_idx, device)
    teacher_cfg = teacher.learn.fold_info['config']
    tta = teacher_cfg['tta']
    probs = teacher_predict(teacher, np.asarray(unlabeled), tta=tta, compile=False if cfg.budget else None)  # a budget has no room for compiling
    kept, new_labels, soft = pseudo_labels(probs, cfg.pseudo_confidence, cfg.pseudo_targets)
    n = len(images)
    fit_images = np.concatenate([np.asarray(images), np.asarray(unlabeled)[kept]])
    fit_labels = np.concatenate([np.asarray(labels, np.int64), new_labels])
    fit_idx = np.concatenate([np.asarray(train_idx), n + np.arange(len(kept))])
    soft_by_row = None
    if cfg.pseudo_targets == 'soft': soft_by_row = np.concatenate([np.full(n, np.nan, np.float32), soft])
    record = dict(teacher_fold=teacher.fold, tta=tta, teacher_label_smoothing=teacher_cfg['label_smoothing'], unlabeled=len(probs), kept=len(kept), kept_class0=int((new_labels == 0).sum()),
                  confidence=cfg.pseudo_confidence, targets=cfg.pseudo_targets)
    log(f"fold {fold}: {len(kept)} of {len(probs)} unlabelled images pseudo-labelled by the teacher's fold {teacher.fold} "
        f"({record['kept_class0']} class 0, {cfg.pseudo_targets} targets, confidence >= {cfg.pseudo_confidence:g})")
    return fit_images, fit_labels, fit_idx, soft_by_row, record
