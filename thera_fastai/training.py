"""Learners and one fold's fit, resumable from its last epoch checkpoint."""
import hashlib, json, platform, time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from fastai.callback.progress import CSVLogger
from fastai.callback.schedule import ParamScheduler, fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle, lr_find)
from fastai.learner import Learner, load_learner, load_model
from fastai.losses import BaseLoss, BCEWithLogitsLossFlat
from fastai.torch_core import set_seed
from sklearn.model_selection import train_test_split

from . import __version__
from .cache import atomic_write
from .callbacks import AtomicCheckpoint, checkpoints, native_bf16, speed_callbacks
# Exported learners of earlier versions name thera_fastai.training.BF16Autocast: this import keeps them loadable.
from .callbacks import BF16Autocast  # noqa: F401
from .data import fold_dataloaders, image_stats
from .errors import TheraError
from .inference import predict_probs
from .metrics import best_threshold, error_rates, thera_metrics
from .models import create_model

__all__ = ['FitConfig', 'RECIPES', 'PRECISIONS', 'SCHEDULES', 'thera_learner', 'BalancedBCELoss', 'load_fold_learner', 'balanced_loss',
           'step_schedule', 'sample_rows', 'data_key', 'train_fold', 'fold_done', 'library_versions']

# Peak learning rates for fit_one_cycle, between lr_find's valley (1e-3) and minimum/10 (6.9e-3) for the
# simple CNN on fold 0 of the full data (nbs/01_lr_find.ipynb). Epochs: what fits in 30 minutes per fold
# on a 2-core bf16 CPU (13 x 1.8-2.1 min; pooled out-of-fold HTER 0.077 over 5 folds, flat after epoch 10).
# The ResNet's lr and epochs are not measured at scale.
RECIPES = {'simple': dict(lr=3e-3, bs=128, epochs=13), 'resnet18': dict(lr=2e-3, bs=128, epochs=4)}
PRECISIONS = ('auto', 'bf16', 'fp32')
SCHEDULES = ('one_cycle', 'step', 'constant')


@dataclass
class FitConfig:
    "Everything that decides what a fit computes; saved next to its models and compared on resume."
    arch: str = 'simple'
    folds: int = 5
    epochs: int = None
    bs: int = None
    lr: float = None
    wd: float = 0.01
    seed: int = 42
    balance: str = 'sampler'   # 'sampler' (weighted DataLoader), 'loss' (class-weighted BCE) or 'none'
    schedule: str = 'one_cycle'  # 'one_cycle', 'step' (the seed's StepLR: lr x0.1 every 10 epochs) or 'constant'
    label_smoothing: float = 0.0  # BCE targets pulled to eps/2 and 1-eps/2
    flip: bool = True
    max_rotate: float = 5.0
    max_shift_px: int = 2
    tta: int = 4
    sample: int = None
    widths: list = None
    stem: str = 'nopool'
    pretrained: bool = False
    weights: str = None
    channels_last: bool = True
    precision: str = 'auto'    # 'bf16' autocast, 'fp32', or 'auto': bf16 where the hardware runs it natively
    image_size: list = field(default_factory=lambda: [64, 64, 3])

    def __post_init__(self):
        recipe = RECIPES.get(self.arch)
        if recipe is None: raise TheraError(f"unknown arch {self.arch!r}: use simple or resnet18")
        if self.bs is None: self.bs = recipe['bs']
        if self.lr is None: self.lr = recipe['lr']
        if self.epochs is None: self.epochs = recipe['epochs']
        if self.epochs < 1: raise TheraError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.balance not in ('sampler', 'loss', 'none'): raise TheraError(f"--balance must be sampler, loss or none (got {self.balance!r})")
        if self.schedule not in SCHEDULES: raise TheraError(f"unknown schedule {self.schedule!r}: use {', '.join(SCHEDULES)}")
        if not 0 <= self.label_smoothing < 1: raise TheraError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.precision not in PRECISIONS: raise TheraError(f"--precision must be auto, bf16 or fp32 (got {self.precision!r})")
        if self.precision == 'auto': self.precision = 'bf16' if native_bf16() else 'fp32'

    def model_kwargs(self):
        "Keyword arguments of `create_model` for this config."
        if self.arch == 'simple': return {} if self.widths is None else dict(widths=self.widths)
        return dict(stem=self.stem, pretrained=self.pretrained, weights=self.weights)

    def aug_kwargs(self): return dict(flip=self.flip, max_rotate=self.max_rotate, max_shift_px=self.max_shift_px)
    def to_dict(self): return asdict(self)


def library_versions():
    "Versions that decide what a run computes, saved with its config."
    import fastai, sklearn, timm
    return dict(thera_fastai=__version__, torch=torch.__version__, fastai=fastai.__version__, timm=timm.__version__,
                numpy=np.__version__, sklearn=sklearn.__version__, python=platform.python_version())


class BalancedBCELoss(BaseLoss):
    """`BCEWithLogitsLossFlat` with its class-1 term scaled by `pos_weight` (fastai's refuses `pos_weight` with
    flattening) and optional label smoothing: targets become `eps/2` and `1 - eps/2`."""
    def __init__(self, pos_weight=1.0, smoothing=0.0, thresh=0.5):
        super().__init__(nn.BCEWithLogitsLoss, pos_weight=torch.tensor([float(pos_weight)]), flatten=True, floatify=True,
                         is_2d=False)
        self.smoothing, self.thresh = smoothing, thresh
    def __call__(self, inp, targ, **kwargs):
        return super().__call__(inp, targ.float() * (1 - self.smoothing) + self.smoothing / 2, **kwargs)
    def decodes(self, x): return x > self.thresh
    def activation(self, x): return torch.sigmoid(x)


def balanced_loss(labels, smoothing=0.0):
    "BCE whose class-1 term is scaled by n0/n1, so both classes weigh the same in the loss."
    counts = np.bincount(np.asarray(labels), minlength=2)
    return BalancedBCELoss(counts[0] / counts[1], smoothing)


def step_schedule(lr, epochs, step_epochs=10, gamma=0.1):
    "The seed's `StepLR` as a fastai `ParamScheduler`: `lr`, times `gamma` every `step_epochs` epochs."
    return ParamScheduler({'lr': partial(_stepped, lr, epochs, step_epochs, gamma)})


def _stepped(lr, epochs, step_epochs, gamma, pos): return lr * gamma ** int(pos * epochs // step_epochs)


def thera_learner(dls, cfg, path='.', train_labels=None):
    "A `Learner` with `cfg`'s model, one-logit BCE loss, the HTER family of metrics, channels-last and `cfg`'s precision."
    model = create_model(cfg.arch, **cfg.model_kwargs())
    if cfg.balance == 'loss': loss = balanced_loss(train_labels, cfg.label_smoothing)
    elif cfg.label_smoothing: loss = BalancedBCELoss(smoothing=cfg.label_smoothing)
    else: loss = BCEWithLogitsLossFlat()
    return Learner(dls, model, loss_func=loss, metrics=thera_metrics(), wd=cfg.wd, path=path, model_dir='.',
                   cbs=speed_callbacks(cfg.channels_last, cfg.precision))


def load_fold_learner(path, config):
    """`load_learner` on the CPU with the speed callbacks of `config` (a run's config dict) put back.

    fastai's `load_learner(cpu=True)` drops `ChannelsLast` and mixed precision, but a fold's threshold
    was picked on predictions made with them: its later predictions must be made the same way."""
    learn = load_learner(path, cpu=True)
    learn.add_cbs(speed_callbacks(config.get('channels_last', True), config.get('precision', 'fp32')))
    return learn


def sample_rows(labels, n, seed):
    "A stratified subset of `n` rows (all rows when `n` is None), sorted."
    rows = np.arange(len(labels))
    if n is None or n == len(labels): return rows
    if n > len(labels): raise TheraError(f"--sample {n} is larger than the {len(labels)} labelled images")
    if n < 4: raise TheraError(f"--sample {n} is too small to split into folds")
    sub, _ = train_test_split(rows, train_size=n, stratify=labels, random_state=seed)
    return np.sort(sub)


def data_key(images_key, labels, rows):
    "A hash of the training data a fit saw: the cache key, the labels and the rows used."
    h = hashlib.sha1(images_key.encode())
    h.update(np.ascontiguousarray(labels, dtype=np.int8).tobytes())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _resume_checkpoint(learn, folder):
    "Loads the newest readable checkpoint in `folder`; returns the epoch to start from (0 when none)."
    for epoch, ckpt in checkpoints(folder):
        try:
            learn.create_opt()
            load_model(ckpt, learn.model, learn.opt, with_opt=True, device='cpu')
            return epoch + 1
        except Exception:
            ckpt.unlink()  # a checkpoint that does not load is not trusted: fall back to an older one or a restart
    return 0


def _log_epoch(recorder, fold, values):
    "One readable line per epoch for --quiet runs (fastai's default logger prints a raw list)."
    print(f"fold {fold} " + ', '.join(f"{n} {v:.4f}" if isinstance(v, float) else f"{n} {v}"
                                      for n, v in zip(recorder.metric_names, values)), flush=True)


def _file_hash(path): return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def fold_done(fold_dir, run_id):
    "The fold's saved result if it finished under the same `run_id` and its files are intact, else None."
    done = Path(fold_dir)/'done.json'
    if not done.exists(): return None
    try: res = json.loads(done.read_text())
    except json.JSONDecodeError: return None
    if res.get('run_id') != run_id: return None
    files = res.get('files', {})
    ok = all((Path(fold_dir)/n).exists() and _file_hash(Path(fold_dir)/n) == h for n, h in files.items())
    return res if ok and files else None


def _write_oof(path, rows, targs, probs, probs_tta):
    lines = ['row,label,prob,prob_tta'] + [f"{r},{t},{p:.6f},{q:.6f}" for r, t, p, q in zip(rows, targs, probs, probs_tta)]
    atomic_write(path, lambda tmp: tmp.write_text('\n'.join(lines) + '\n'))


def train_fold(images, labels, train_idx, valid_idx, cfg, fold_dir, run_id, fold=0, quiet=False):
    """Fits one fold (resuming from its newest checkpoint), exports it, writes its out-of-fold predictions.

    Returns the fold's result dict, also saved as `done.json` once everything else is on disk."""
    fold_dir = Path(fold_dir).resolve()  # fastai joins relative file names onto learn.path, itself fold_dir
    fold_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed + fold, reproducible=True)
    dls = fold_dataloaders(images, labels, train_idx, valid_idx, bs=cfg.bs, weighted=cfg.balance == 'sampler',
                           stats=image_stats(images, train_idx), **cfg.aug_kwargs())
    learn = thera_learner(dls, cfg, fold_dir, np.asarray(labels)[train_idx])
    start = _resume_checkpoint(learn, fold_dir)
    cbs = [CSVLogger(fold_dir/'history.csv', append=start > 0), AtomicCheckpoint(fold_dir)]
    if quiet: learn.logger = partial(_log_epoch, learn.recorder, fold)
    t0 = time.time()
    with (learn.no_bar() if quiet else nullcontext()):
        fit = learn.fit_one_cycle if cfg.schedule == 'one_cycle' else learn.fit
        if cfg.schedule == 'step': cbs.append(step_schedule(cfg.lr, cfg.epochs))
        if start < cfg.epochs: fit(cfg.epochs, cfg.lr, start_epoch=start, cbs=cbs)
    fit_s = time.time() - t0
    targs = np.asarray(labels)[valid_idx]
    probs = predict_probs(learn, dls.valid)
    probs_tta = predict_probs(learn, dls.valid, cfg.tta) if cfg.tta else probs
    _write_oof(fold_dir/'oof.csv', valid_idx, targs, probs, probs_tta)
    atomic_write(fold_dir/'model.pkl', lambda tmp: learn.export(tmp))
    thresh = best_threshold(probs_tta, targs)
    res = dict(run_id=run_id, fit_seconds=fit_s, images_seen=int(len(train_idx) * (cfg.epochs - start)),
               resumed_from_epoch=start, threshold=thresh, at_05=error_rates(probs_tta, targs),
               at_05_plain=error_rates(probs, targs), n_train=len(train_idx), n_valid=len(valid_idx),
               files={n: _file_hash(fold_dir/n) for n in ('model.pkl', 'oof.csv', 'history.csv')})
    atomic_write(fold_dir/'done.json', lambda tmp: tmp.write_text(json.dumps(res, indent=1)))
    for ckpt in fold_dir.glob('ckpt-e*.pth'): ckpt.unlink()
    return res
