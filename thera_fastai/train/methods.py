"""How a fold's weights are updated: the optimizer, the schedule over the fit's steps, and the pieces of airbench's
training method (Nesterov SGD with per-group rates, Lookahead, the whitening bias's freeze, alternating flips)."""
from functools import partial

import numpy as np
import torch
from torch import nn
from fastai.callback.core import Callback, CancelFitException, CancelTrainException
from fastai.callback.schedule import ParamScheduler, combined_cos
from fastai.optimizer import OptimWrapper

from ..compat import keep_cancelled_train_metrics
from ..models import first_conv

__all__ = ['fit_step', 'anchored', 'StepSchedule', 'StopAtStep', 'Lookahead', 'WhitenBiasFreeze', 'AlternatingFlip', 'airbench_splitter',
           'newton_schulz', 'MuonSGD', 'airbench_opt', 'airbench_rates', 'method_callbacks', 'one_cycle_scheds', 'airbench_lr_curve']


def fit_step(learn):
    "The training step the fit is at, counted over every epoch (fastai's `train_iter` restarts at 0 on a resume)."
    return learn.epoch * learn.n_iter + learn.iter


def anchored(step, end, anchor=(0, 0.0)):
    """Where `step` is on a schedule that reaches position 1 at step `end`: the straight line from `anchor`, the (step,
    position) pair at which the schedule was last given a new end, so a new end bends the schedule without a jump."""
    s0, p0 = anchor
    return min(max(p0 + (1 - p0) * (step - s0) / max(end - s0, 1), 0.0), 1.0)


class StepSchedule(ParamScheduler):
    """fastai's `ParamScheduler` driven by the step count over `total_steps` instead of the epoch fraction, so a fit
    whose last epoch is cut short (a time budget) still runs its schedule to the end at its last step. `retarget` moves
    that end mid-fit (a re-planned budget); the new end and the point it bends at ride in the epoch checkpoints."""
    def __init__(self, scheds, total_steps): super().__init__(scheds); self.total, self.anchor = total_steps, (0, 0.0)
    def position(self, step): return anchored(step, self.total - 1, self.anchor)
    def retarget(self, total_steps, at=0):
        "Ends the schedule at `total_steps`, continuing from the position it has at step `at` (the next step to run)."
        self.anchor, self.total = (at, self.position(at)), total_steps
    def before_batch(self):
        if self.training: self._update_val(self.position(fit_step(self.learn)))
    def checkpoint_state(self): return dict(total=self.total, anchor=list(self.anchor))
    def load_checkpoint_state(self, state): self.total, self.anchor = state['total'], tuple(state['anchor'])


class StopAtStep(Callback):
    """Ends the training phase of the epoch at `total_steps`: the last epoch of a budgeted fit is a fraction of one,
    whose train loss the history keeps (fastai's `Recorder` drops the training metrics of a cancelled phase); the fit
    ends before an epoch that would start past it (a re-planned fit runs under a cap of epochs, not its plan's)."""
    order = 55  # after the Recorder's own reaction to the cancel, which it undoes
    def __init__(self, total_steps): self.total = total_steps
    def retarget(self, total_steps, at=0): self.total = total_steps
    def before_epoch(self):
        if self.epoch * len(self.dls.train) >= self.total: raise CancelFitException()
    def before_batch(self):
        if self.training and fit_step(self.learn) >= self.total: raise CancelTrainException()
    def after_cancel_train(self): keep_cancelled_train_metrics(self.learn.recorder)


def _float_state(model): return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


class Lookahead(Callback):
    """airbench's Lookahead: every `every` steps the weights (and BatchNorm statistics) move to an average that
    follows them with decay `0.95^5 (step/total)^3`, so early steps are nearly forgotten and late ones smoothed; the
    fit ends on the average. A new total (`retarget`) bends `step/total` from where it is, as `StepSchedule` does. Its
    average, total and bend ride in the epoch checkpoints (`checkpoint_state` / `load_checkpoint_state`)."""
    order = 64
    moves_weights_after_validation = True  # its final pull in `after_fit` comes after the last validation
    def __init__(self, total_steps, every=5): self.total, self.every, self.avg, self.pending, self.anchor = total_steps, every, None, None, (0, 0.0)

    def before_fit(self):
        self.avg = {k: v.detach().clone() for k, v in _float_state(self.learn.model).items()}
        if self.pending is not None: self._load(self.pending); self.pending = None

    def retarget(self, total_steps, at=0): self.anchor, self.total = (at, anchored(at, self.total, self.anchor)), total_steps
    def _decay(self, step): return 0.95 ** 5 * anchored(step, self.total, self.anchor) ** 3

    def after_step(self):
        step = fit_step(self.learn) + 1
        if step % self.every == 0: self._pull(self._decay(step))

    @torch.no_grad()
    def _pull(self, decay):
        for k, live in _float_state(self.learn.model).items():
            self.avg[k].lerp_(live, 1 - decay)
            live.copy_(self.avg[k])

    def after_fit(self):
        "Ends on the average, which first takes in the steps since the last pull (airbench drops them; a short fit would lose all)."
        if self.total % self.every: self._pull(self._decay(self.total))
        self._pull(1.0)
    def checkpoint_state(self): return dict(avg={k: v.detach().cpu().clone() for k, v in self.avg.items()}, total=self.total, anchor=list(self.anchor))
    def load_checkpoint_state(self, state):
        if 'avg' not in state: state = dict(avg=state)  # 0.18.0 and before saved the average alone, and never bent
        if 'total' in state: self.total, self.anchor = state['total'], tuple(state['anchor'])
        if self.avg is None: self.pending = state['avg']
        else: self._load(state['avg'])
    def _load(self, avg):
        for k, v in avg.items(): self.avg[k].copy_(v)


class WhitenBiasFreeze(Callback):
    "Trains the whitening layer's bias for the first `share` of the `total_steps` only (its weights never train), as airbench does."
    order = -4
    def __init__(self, share, total_steps): self.share = share; self.retarget(total_steps)
    def retarget(self, total_steps, at=0): self.steps = round(self.share * total_steps)
    def before_batch(self):
        if not self.training: return
        bias = first_conv(self.learn.model).bias
        bias.requires_grad_(fit_step(self.learn) < self.steps)
        if not bias.requires_grad: bias.grad = None  # SGD skips a parameter without a gradient: no momentum, no decay


class AlternatingFlip(Callback):
    """airbench's alternating flip: each training image is mirrored in every other epoch, starting from a random
    half, instead of at random in each: every image is seen both ways every two epochs. Needs the cache-gathering
    DataLoader, which says which rows a batch holds."""
    order = 4  # after the batch transforms (fastai's random flip is off for this method), before the model
    def __init__(self, n_rows, seed): self.first = torch.from_numpy(np.random.default_rng(seed).integers(0, 2, n_rows).astype(bool))
    def before_batch(self):
        if not self.training: return
        rows = getattr(getattr(self.dl, 'dl', self.dl), 'batch_rows', None)
        if rows is None: return
        flip = self.first[torch.as_tensor(np.asarray(rows))] ^ bool(self.epoch % 2)
        x = self.learn.xb[0]
        self.learn.xb = (torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x),)


def airbench_splitter(model, muon=False):
    """airbench's parameter groups: the BatchNorm biases (a 64x larger rate), then every other trained parameter; with
    `muon`, the trained conv filters (4-D) form a third group, which `MuonSGD` updates with Muon."""
    norm = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    biases = [m.bias for m in norm if m.bias is not None]
    ids = {id(p) for p in biases}
    others = [p for p in model.parameters() if id(p) not in ids and (p.requires_grad or p is first_conv(model).bias)]
    if not muon: return [[p for p in biases if p.requires_grad], others]
    return [[p for p in biases if p.requires_grad], [p for p in others if p.ndim != 4], [p for p in others if p.ndim == 4]]


def newton_schulz(g, steps=3, eps=1e-7):
    """airbench94_muon's quintic Newton-Schulz iteration: an approximately orthogonalized `g` (2-D), singular values
    near one. Written here because torch's `optim.Muon` updates 2-D parameters only and conv filters are 4-D."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + eps)
    tall = x.size(0) > x.size(1)
    if tall: x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


class MuonSGD(torch.optim.Optimizer):
    """Nesterov SGD with coupled weight decay (torch's `SGD(nesterov=True)` update), except in groups whose `muon` is
    set: there airbench94_muon's Muon, Nesterov momentum `muon_momentum` on each filter, the filter rescaled to norm
    sqrt(out channels), then a step of `lr` along the orthogonalized momentum, no weight decay."""
    def __init__(self, params, lr=1e-3, momentum=0.85, weight_decay=0.0, muon_momentum=0.6):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, muon_momentum=muon_momentum, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            m = group['muon_momentum'] if group['muon'] else group['momentum']
            for p in group['params']:
                if p.grad is None: continue
                g = p.grad if group['muon'] or not group['weight_decay'] else p.grad.add(p, alpha=group['weight_decay'])
                state = self.state[p]
                buf = state['momentum_buffer'] = state['momentum_buffer'].mul_(m).add_(g) if 'momentum_buffer' in state else g.clone()
                g = g.add(buf, alpha=m)
                if group['muon']:
                    p.mul_(len(p) ** 0.5 / p.norm())
                    g = newton_schulz(g.reshape(len(g), -1)).view_as(g)
                p.add_(g, alpha=-group['lr'])


def airbench_opt(hyp):
    """torch's Nesterov SGD at `hyp['momentum']` as a fastai optimizer over `airbench_splitter`'s groups; with
    `hyp['muon']`, `MuonSGD` with its last group (the conv filters) on Muon."""
    if not hyp['muon']: return partial(OptimWrapper, opt=partial(torch.optim.SGD, momentum=hyp['momentum'], nesterov=True))
    def make(params, **kw):
        opt = MuonSGD(params, momentum=hyp['momentum'], muon_momentum=hyp['muon_momentum'], **kw)
        opt.param_groups[-1]['muon'] = True
        return opt
    return partial(OptimWrapper, opt=make)


def airbench_rates(lr, wd, bs, hyp):
    """airbench's decoupled lr and wd (per 1024 examples) as torch SGD's per-group lr and coupled weight decay for
    batches of `bs` whose loss is a mean. Nesterov momentum `m` makes steps `1 + 1/(1-m)` times the gradient, which
    the rate divides out; the decay per step, lr * weight_decay, is the same for both groups. With `hyp['muon']` a
    third group, the conv filters, at `muon_lr` without decay."""
    kilostep = 1024 * (1 + 1 / (1 - hyp['momentum']))
    base = lr * bs / kilostep
    lrs = [base * hyp['bias_scaler'], base]
    decay = wd * bs / kilostep
    wds = [decay / r for r in lrs]
    if hyp['muon']: lrs, wds = lrs + [hyp['muon_lr']], wds + [0.0]
    return lrs, wds


def airbench_lr_curve(hyp):
    "The lr multiplier at fraction `pos` of the steps: a linear warm-up from `lr_start`, then a linear fall to `lr_end`."
    w, start, end = hyp['warmup'], hyp['lr_start'], hyp['lr_end']
    def curve(pos): return start + (1 - start) * pos / w if pos < w else 1 + (end - 1) * (pos - w) / (1 - w)
    return curve


def one_cycle_scheds(lr, div=25., div_final=1e5, pct_start=0.25, moms=(0.95, 0.85, 0.95)):
    "fastai's `fit_one_cycle` schedules (its defaults), for a `StepSchedule`."
    return {'lr': combined_cos(pct_start, lr / div, lr, lr / div_final), 'mom': combined_cos(pct_start, *moms)}


def moves_weights_after_validation(cfg):
    "Whether one of `cfg`'s method callbacks changes the weights after the fit's last validation (it declares so)."
    return any(getattr(cb, 'moves_weights_after_validation', False) for cb in method_callbacks(cfg, 1, 1))


def method_callbacks(cfg, total_steps, n_rows):
    "The callbacks of `cfg`'s training method over a fit of `total_steps` steps (`n_rows`: the rows of the image cache)."
    if cfg.method != 'airbench':
        return [StepSchedule(one_cycle_scheds(cfg.lr), total_steps), StopAtStep(total_steps)] if cfg.budget else []
    hyp, lrs = cfg.hyp, airbench_rates(cfg.lr, cfg.wd, cfg.bs, cfg.hyp)[0]
    curve = airbench_lr_curve(hyp)
    cbs = [StepSchedule({'lr': lambda pos: [r * curve(pos) for r in lrs]}, total_steps), StopAtStep(total_steps)]
    if hyp['whiten']: cbs.append(WhitenBiasFreeze(hyp['whiten_bias'], total_steps))
    if hyp['lookahead']: cbs.append(Lookahead(total_steps, hyp['lookahead_every']))
    if cfg.alternating_flip: cbs.append(AlternatingFlip(n_rows, cfg.training_seed))
    return cbs
