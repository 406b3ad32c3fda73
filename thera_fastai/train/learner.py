"""The fastai `Learner` of a fold: model, loss, metrics, schedule; and rebuilding it from a run folder."""
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from fastai.callback.schedule import ParamScheduler, fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle, lr_find)
from fastai.learner import Learner
from fastai.losses import BaseLoss
from fastai.torch_core import TensorCategory
import fastai.vision.learner  # noqa: F401  (registers show_results and plot_top_losses for images)

from .callbacks import speed_callbacks
from ..config import FitConfig, Runtime
from ..errors import TheraError
from ..files import atomic_write, read_json
from .methods import airbench_opt, airbench_rates, airbench_splitter
from ..metrics import thera_metrics
from ..data.rows import fold_rows
from ..runs import FOLD_FILE, WEIGHTS_FILE, check_fold_info
from ..models import create_model

__all__ = ['TheraLearner', 'BalancedBCELoss', 'balanced_loss', 'step_schedule', 'config_dataloaders', 'thera_learner', 'weights_bytes', 'save_weights', 'load_weights',
           'load_fold_learner']


class BalancedBCELoss(BaseLoss):
    """`BCEWithLogitsLossFlat` with its class-1 term scaled by `pos_weight` (fastai's refuses `pos_weight` with
    flattening), optional label smoothing (targets `eps/2` and `1 - eps/2`) and optional soft bootstrapping
    (Reed et al. 2015, in training steps only): target `b * label + (1 - b) * the model's own detached probability`,
    so a confident prediction against a wrong label pulls less.

    For fastai's decoding it acts as a two-class classifier's loss: `activation` gives (P(class 0), P(class 1)) per
    row, `decodes` the class index, 1 where P(class 1) >= `thresh` (a fold's own threshold once it is rebuilt)."""
    def __init__(self, pos_weight=None, smoothing=0.0, bootstrap=None, thresh=0.5):
        pos_weight = None if pos_weight is None else torch.tensor([float(pos_weight)])
        super().__init__(nn.BCEWithLogitsLoss, pos_weight=pos_weight, flatten=True, floatify=True, is_2d=False)
        self.smoothing, self.bootstrap, self.thresh = smoothing, bootstrap, thresh
    def __call__(self, inp, targ, **kwargs):
        targ = targ.float().view(-1) * (1 - self.smoothing) + self.smoothing / 2
        if self.bootstrap is not None and torch.is_grad_enabled() and inp.requires_grad:
            targ = self.bootstrap * targ + (1 - self.bootstrap) * torch.sigmoid(inp.detach().float().view(-1))
        return super().__call__(inp, targ, **kwargs)
    def activation(self, x):
        p = torch.sigmoid(x.float().view(-1))
        return torch.stack([1 - p, p], 1)
    def decodes(self, x): return TensorCategory((x[:, 1] >= self.thresh).long())


class TheraLearner(Learner):
    "A fastai `Learner` whose `predict` also takes a JPEG path or an (H, W, 3) uint8 array as the image itself."
    def predict(self, item, rm_type_tfms=None, with_input=False):
        "(label, class index, (P(class 0), P(class 1))) of one image, a cache row, a JPEG path or an (H, W, 3) uint8 array."
        if rm_type_tfms is None and isinstance(item, (str, Path, np.ndarray)): rm_type_tfms = 0  # CachedImages reads them
        return super().predict(item, rm_type_tfms=rm_type_tfms, with_input=with_input)
    def export(self, fname='export.pkl', **kwargs):
        "fastai's `export`, without the training image cache (which would be pickled whole): it predicts on files and arrays."
        from ..data.loaders import without_cache
        with without_cache(self.dls): super().export(fname, **kwargs)


def balanced_loss(labels, smoothing=0.0, bootstrap=None, power=1.0):
    "BCE whose class-1 term is scaled by (n0/n1)^`power`: at 1 both classes weigh the same in the loss."
    counts = np.bincount(np.asarray(labels), minlength=2)
    return BalancedBCELoss((counts[0] / counts[1]) ** float(power), smoothing, bootstrap)


def step_schedule(lr, epochs, step_epochs=10, gamma=0.1):
    "The seed's `StepLR` as a fastai `ParamScheduler`: `lr`, times `gamma` every `step_epochs` epochs."
    return ParamScheduler({'lr': partial(_stepped, lr, epochs, step_epochs, gamma)})


def _stepped(lr, epochs, step_epochs, gamma, pos): return lr * gamma ** int(pos * epochs // step_epochs)


def _loss(cfg, train_labels, thresh=0.5):
    if cfg.balance == 'loss' and train_labels is not None:
        loss = balanced_loss(train_labels, cfg.label_smoothing, cfg.bootstrap, _strength(cfg))
    else: loss = BalancedBCELoss(smoothing=cfg.label_smoothing, bootstrap=cfg.bootstrap)  # (prediction only: no class weight)
    loss.thresh = thresh
    return loss


def _strength(cfg): return 1.0 if cfg.balance_strength is None else cfg.balance_strength


def config_dataloaders(cfg: FitConfig, images, labels, train_idx, valid_idx, stats, device):
    "A fold's DataLoaders as `cfg` sets them (batch size, class-balanced sampling, augmentation), normalized by `stats`."
    from ..data.loaders import fold_dataloaders
    return fold_dataloaders(images, labels, train_idx, valid_idx, bs=cfg.bs, weighted=cfg.balance == 'sampler', power=_strength(cfg), stats=stats,
                            device=device, **cfg.aug_kwargs())


def thera_learner(dls, cfg: FitConfig, path='.', train_labels=None, runtime=None, init_weights=True, threshold=0.5):
    """A `TheraLearner` with `cfg`'s model, one-logit BCE loss, the HTER family of metrics, and `runtime`'s
    memory layout and precision (a dict of `Runtime.resolved()`, default: this machine's).

    `init_weights=False` skips pretrained or `weights` initialization, for a model whose weights are loaded next;
    `threshold`: where fastai's decoding (`predict`, `show_results`, `ClassificationInterpretation`) calls a row clean."""
    rt = runtime or Runtime().resolved()
    kwargs = cfg.model_kwargs()
    if not init_weights and 'pretrained' in kwargs: kwargs.update(pretrained=False, weights=None)
    model = create_model(cfg.arch, **kwargs).to(rt['device'])
    if cfg.method == 'airbench':  # per-group rates (the BatchNorm biases', the others'), which the schedule scales each step
        lrs, wds = airbench_rates(cfg.lr, cfg.wd, cfg.bs, cfg.hyp)
        opt = dict(opt_func=airbench_opt(cfg.hyp), splitter=partial(airbench_splitter, muon=cfg.hyp['muon']), lr=lrs[1], wd=wds)
    else: opt = dict(wd=cfg.wd)
    return TheraLearner(dls, model, loss_func=_loss(cfg, train_labels, threshold), metrics=thera_metrics(), path=path, model_dir='.',
                   cbs=speed_callbacks(rt['channels_last'], rt['precision']), **opt)


def weights_bytes(model):
    "The model's weights as safetensors bytes (no pickle)."
    from safetensors.torch import save
    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def save_weights(model, path):
    "The model's weights as a safetensors file, atomically."
    data = weights_bytes(model)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def load_weights(model, path):
    "Loads a safetensors file into `model`; weights that do not fit it are one `TheraError` naming the file."
    from safetensors.torch import load
    try: state = load(Path(path).read_bytes())
    except FileNotFoundError: raise TheraError("weights file is missing", path) from None
    except Exception as e: raise TheraError(f"not a readable weights file ({e})", path) from None
    try: model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).split('\n\t')[1] if '\n\t' in str(e) else str(e)
        raise TheraError(f"weights do not fit the run's config ({first.strip()[:200]})", path) from None
    return model


def load_fold_learner(fold_dir, data=None, device='auto', precision=None, cache=None):
    """The fold's fastai `Learner`, rebuilt from its weights and `fold.json` (config, statistics, threshold).

    With `data` (the exercise zip or folder), its DataLoaders are the fold's own training and validation
    rows, so `lr_find`, `fit`, `show_results` and `ClassificationInterpretation` work; without, they are a
    placeholder for `predict`, `tta` and `test_dl` on new images. `precision` defaults to the one the
    fold was trained (and its threshold picked) in; `device`: auto, cpu or cuda."""
    from ..data.loaders import placeholder_dataloaders
    fold_dir = Path(fold_dir)
    info = check_fold_info(read_json(fold_dir/FOLD_FILE, 'fold file'), fold_dir/FOLD_FILE)
    cfg = FitConfig.from_dict(info['config'], fold_dir/FOLD_FILE)
    rt = Runtime(device=device, precision=precision or info.get('runtime', {}).get('precision', 'auto')).resolved()
    stats = info['stats']
    if data is None: dls = placeholder_dataloaders(stats, cfg.bs, rt['device'], **cfg.aug_kwargs())
    else:
        images, labels, train_idx, valid_idx = fold_rows(data, cfg, info['fold'], cache)
        dls = config_dataloaders(cfg, images, labels, train_idx, valid_idx, stats, rt['device'])
    learn = thera_learner(dls, cfg, fold_dir, None if data is None else labels[train_idx], rt, init_weights=False,
                          threshold=info['threshold'])
    load_weights(learn.model, fold_dir/WEIGHTS_FILE)
    learn.fold_info = info
    return learn

