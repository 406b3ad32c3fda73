"""Callbacks of a fold's fit: how it runs (memory layout, bf16 autocast) and what makes it resumable
(epoch checkpoints with the random state, a history with one row per epoch)."""
import io, random, re, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision

from .distributed import is_main, world_size
from ..compat import loader_rng, recorder_row
from ..errors import TheraError
from ..files import atomic_write, short_hash
from ..runs import read_history

__all__ = ['ClosedAutocast', 'BF16Autocast', 'StopOnNonFinite', 'speed_callbacks', 'EpochCheckpoint', 'HistoryCSV', 'LastValidation', 'checkpoints', 'load_checkpoint', 'resume_callbacks',
           'rng_states', 'set_rng_states']


class ClosedAutocast(MixedPrecision):
    """fastai's `MixedPrecision`, which also leaves its autocast when a batch is cut short between entering it
    (`before_batch`) and leaving it (`after_loss`): a cancelled batch or training phase (a budget's last epoch stops
    inside one), or an error. An autocast never left keeps its cache of the weights' low-precision copies, and every
    later step in the process would train on those stale copies."""
    inside = False
    def before_batch(self): super().before_batch(); self.inside = True
    def after_loss(self): super().after_loss(); self.inside = False
    def leave(self):
        "Leaves the autocast if a batch entered it and never reached `after_loss`."
        if self.inside: self.autocast.__exit__(None, None, None); self.inside = False
    def after_cancel_batch(self): self.leave()
    def after_cancel_train(self): self.leave()
    def after_cancel_epoch(self): self.leave()
    def after_cancel_fit(self): self.leave()


class BF16Autocast(ClosedAutocast):
    """`ClosedAutocast` in bfloat16 on the device the data is on (fastai's own autocasts CUDA only).

    Convolutions and linear layers run in bf16, the weights, loss and optimizer stay fp32; no gradient
    scaler is needed since bf16 has fp32's range."""
    def __init__(self): super().__init__(amp_mode='bf16')

    def before_fit(self):
        device = torch.device(getattr(self.dls, 'device', None) or 'cpu').type
        self.autocast = torch.autocast(device, dtype=torch.bfloat16)
        self.learn.scaler, self.scales = torch.amp.GradScaler(device, enabled=False), []


class StopOnNonFinite(Callback):
    """Ends a fit whose training loss is not finite with one `TheraError`, before the step that would spread it to the
    weights. Hand-written: fastai's `TerminateOnNaNCallback` cancels the fit, and the fold would then be saved as finished."""
    order = 11  # after the autocast is left (MixedPrecision's after_loss, order 10), before the backward pass
    def __init__(self, fold, folder): self.fold, self.folder = fold, folder
    def after_loss(self):
        if self.training and not torch.isfinite(self.learn.loss).all():
            raise TheraError(f"fold {self.fold}: the training loss is {self.learn.loss.item()} at epoch {self.epoch}, step "
                             f"{self.iter}: the fit diverged (a lower --lr?); nothing of this epoch is saved, earlier checkpoints are kept", self.folder)


def speed_callbacks(channels_last=True, precision='fp32'):
    "The callbacks that decide how the model runs: channels-last memory layout, and bf16 or fp16 (CUDA, scaled) autocast."
    amp = {'bf16': [BF16Autocast()], 'fp16': [ClosedAutocast()]}.get(precision, [])
    return [ChannelsLast()] * bool(channels_last) + amp




def rng_states(dls=None):
    "Every random state a fit draws from: Python's, NumPy's, torch's (CPU and CUDA) and each DataLoader's own."
    np_state = np.random.get_state()
    return dict(python=random.getstate(), numpy=[np_state[0], torch.from_numpy(np_state[1].copy()), *_plain(list(np_state[2:]))],
                torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                loaders=[loader_rng(dl).getstate() for dl in (dls.loaders if dls is not None else [])])


def _as_tuple(x): return tuple(_as_tuple(v) for v in x) if isinstance(x, list) else x


def set_rng_states(states, dls=None):
    "Puts back what `rng_states` saved."
    random.setstate(_as_tuple(states['python']))
    name, keys, *rest = states['numpy']
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states['torch'])
    if states['cuda'] and torch.cuda.is_available(): torch.cuda.set_rng_state_all(states['cuda'])
    for dl, s in zip(dls.loaders if dls is not None else [], states['loaders']): loader_rng(dl).setstate(_as_tuple(s))


def _plain(x):
    "fastai's `L`, tuples and NumPy scalars as lists and numbers, recursively: a checkpoint loads with `weights_only=True`."
    if isinstance(x, dict): return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) or type(x).__name__ == 'L': return [_plain(v) for v in x]
    return x.item() if isinstance(x, np.generic) else x


def _unwrapped(model):
    "The model inside a data-parallel wrapper, whose weight names carry no 'module.' prefix."
    return model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else model


def _stateful(cb): return callable(getattr(type(cb), 'checkpoint_state', None))  # a Callback's own attribute, not its Learner's


def _ckpt_bytes(learn, epoch, plan=None, spent_s=None):
    buf = io.BytesIO()
    smooth = learn.recorder.smooth_loss  # the logged train_loss: a moving average that runs across epochs
    state = dict(rng=rng_states(learn.dls), smooth_loss=[torch.as_tensor(smooth.val).as_subclass(torch.Tensor).detach().clone(), int(smooth.count)],
                 extra={type(cb).__name__: cb.checkpoint_state() for cb in learn.cbs if _stateful(cb)}, plan=_plain(plan))
    if spent_s is not None: state['spent_seconds'] = float(spent_s)
    torch.save(dict(epoch=epoch, model=_unwrapped(learn.model).state_dict(), opt=_plain(learn.opt.state_dict()), state=state), buf)
    return buf.getvalue()


class EpochCheckpoint(Callback):
    """After every epoch, saves model, optimizer, every random state and the running train loss as `ckpt-e{epoch}.pth`,
    atomically, keeping only the newest; on resume they are put back before the next epoch, so a resumed fit equals an
    uninterrupted one. With `started` (the `time.time()` the fold's clock counts from), it also saves the seconds the
    fold has spent, so that a resumed fold's budget counts the epochs it keeps."""
    order = 70
    def __init__(self, folder, start_epoch=0, resume=None, plan=None, started=None):
        self.folder, self.start, self.resume, self.plan, self.started = Path(folder), start_epoch, resume, plan, started

    def before_train(self):
        if self.resume is None: return
        if world_size() == 1: set_rng_states(self.resume['rng'], self.dls)  # data-parallel ranks seed every epoch instead
        self.recorder.smooth_loss.val, self.recorder.smooth_loss.count = self.resume['smooth_loss']
        self.resume = None

    def after_epoch(self):
        if self.epoch < self.start or not is_main(): return  # an epoch skipped on resume; only rank 0 writes
        path = self.folder/f"ckpt-e{self.epoch}.pth"
        data = _ckpt_bytes(self.learn, self.epoch, self.plan, None if self.started is None else time.time() - self.started)
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
        for _, old in checkpoints(self.folder):
            if old != path: old.unlink(missing_ok=True)


class LastValidation(Callback):
    """Keeps the last epoch's validation output per row (the loss's activation applied, as `get_preds` gives it) with a
    hash of the weights it ran on, so that the fold's out-of-fold prediction reuses it as its plain pass when the fit
    ended on those weights (`preds_for`) instead of running the same pass again: with TTA only the augmented passes run.
    It rides in the last epoch's checkpoint, so a fold resumed after that epoch reuses it too. A fit of fixed epochs keeps
    the last epoch's pass only; a budgeted fit keeps every epoch's, each replacing the one before, since a re-plan at an
    epoch's end can make that epoch the last. Its order puts it inside the weight EMA's swap: it hashes the weights
    validation saw."""
    order = 64
    def __init__(self, plan=None): self.plan, self.preds, self.key, self.batches = plan, None, None, None  # plan: its 'epochs' are the fit's

    def before_validate(self):
        last = self.epoch == (self.plan['epochs'] if self.plan else self.n_epoch) - 1
        self.batches = [] if last or (self.plan or {}).get('budget') else None
    def after_batch(self):
        if not self.training and self.batches is not None: self.batches.append(self.learn.pred.detach())

    def after_validate(self):
        if not self.batches: return
        act = getattr(self.learn.loss_func, 'activation', None) or (lambda x: x)
        self.preds = act(torch.cat(self.batches)).cpu()  # as get_preds gathers and activates them, in their own dtype
        self.key, self.batches = _weights_key(self.learn.model), None

    def preds_for(self, model, n_rows):
        "The kept `(n_rows, 2)` output if it came from `model`'s present weights over `n_rows` rows, else None."
        ok = self.preds is not None and len(self.preds) == n_rows and world_size() == 1 and self.key == _weights_key(model)
        return self.preds if ok else None

    def checkpoint_state(self): return None if self.preds is None else dict(preds=self.preds, key=self.key)  # a tensor: checkpoints load weights-only
    def load_checkpoint_state(self, state):
        if state is not None and 'preds' in state: self.preds, self.key = state['preds'], state['key']  # 0.12.0 kept P(class 1) only: predict again


def _weights_key(model):
    from .learner import weights_bytes  # here: the learner module imports this one
    return short_hash(weights_bytes(_unwrapped(model)))


def resume_callbacks(cbs, state):
    "Gives each stateful callback (one with `checkpoint_state` and `load_checkpoint_state`) what the checkpoint `state` saved of it."
    saved = (state or {}).get('extra', {})
    for cb in cbs:
        if _stateful(cb) and type(cb).__name__ in saved: cb.load_checkpoint_state(saved[type(cb).__name__])


def checkpoints(folder):
    "The `ckpt-e{epoch}.pth` files in `folder` as (epoch, path), newest first."
    return sorted(((int(re.findall(r'\d+', p.stem)[-1]), p) for p in Path(folder).glob('ckpt-e*.pth')), reverse=True)


def load_checkpoint(learn, folder):
    """Loads the newest readable checkpoint in `folder` into `learn`; returns (next epoch, state to resume), (0, None) if none.

    A checkpoint that does not load (cut short, another model) is removed and the next older one tried."""
    for epoch, path in checkpoints(folder):
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
            learn.model.load_state_dict(ckpt['model'])
            learn.create_opt()
            learn.opt.load_state_dict(ckpt['opt'])
            return ckpt['epoch'] + 1, ckpt['state']
        except Exception as e:
            warnings.warn(f"{path}: checkpoint does not load ({type(e).__name__}: {str(e)[:120]}); removed, trying an older one")
            path.unlink(missing_ok=True)
    return 0, None


class HistoryCSV(Callback):
    "Writes `history.csv` after every epoch, atomically: one row per epoch, the rows before `start_epoch` kept from the file."
    order = 60
    def __init__(self, path, start_epoch=0):
        self.path, self.start = Path(path), start_epoch
        self.rows = read_history(self.path).query('epoch < @start_epoch').to_dict('records') if start_epoch and self.path.exists() else []

    def after_epoch(self):
        if self.epoch < self.start or not is_main(): return  # an epoch skipped on resume logs nothing; only rank 0 writes
        names, values = recorder_row(self.recorder)
        self.rows.append({n: (float(v) if isinstance(v, (float, np.floating, torch.Tensor)) else v) for n, v in zip(names, values)})
        frame = pd.DataFrame(self.rows)
        atomic_write(self.path, lambda tmp: frame.to_csv(tmp, index=False))



