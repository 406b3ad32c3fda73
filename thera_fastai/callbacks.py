"""Callbacks that decide how a fit runs, not what it computes: memory layout, bf16 autocast, epoch checkpoints."""
import re
from pathlib import Path

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import save_model

from .cache import atomic_write

__all__ = ['native_bf16', 'BF16Autocast', 'speed_callbacks', 'AtomicCheckpoint', 'checkpoints']


def native_bf16():
    "Whether this machine runs bfloat16 convolutions natively (a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX)."
    if torch.cuda.is_available(): return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class BF16Autocast(MixedPrecision):
    """fastai's `MixedPrecision` in bfloat16 on the device the data is on (fastai's own autocasts CUDA only).

    Convolutions and linear layers run in bf16, the weights, loss and optimizer stay fp32; no gradient
    scaler is needed since bf16 has fp32's range. `load_fold_learner` puts it back on an exported
    learner, so predictions run in the precision the model was trained and thresholded in."""
    def __init__(self): super().__init__(amp_mode='bf16')

    def before_fit(self):
        device = (getattr(self.dls, 'device', None) or torch.device('cpu')).type
        self.autocast = torch.autocast(device, dtype=torch.bfloat16)
        self.learn.scaler, self.scales = torch.amp.GradScaler(device, enabled=False), []


def speed_callbacks(channels_last=True, precision='fp32'):
    "The callbacks that decide how the model runs: channels-last memory layout and bf16 autocast."
    return [ChannelsLast()] * bool(channels_last) + [BF16Autocast()] * (precision == 'bf16')


class AtomicCheckpoint(Callback):
    "Saves model and optimizer after every epoch as `ckpt-e{epoch}.pth`, atomically, keeping only the newest."
    order = 70
    def __init__(self, folder): self.folder = Path(folder)

    def after_epoch(self):
        path = self.folder/f"ckpt-e{self.epoch}.pth"
        atomic_write(path, lambda tmp: save_model(tmp, self.learn.model, self.learn.opt, with_opt=True))
        for old in self.folder.glob('ckpt-e*.pth'):
            if old != path: old.unlink()


def checkpoints(folder):
    "The `ckpt-e{epoch}.pth` files in `folder` as (epoch, path), newest first."
    return sorted(((int(re.findall(r'\d+', p.stem)[-1]), p) for p in Path(folder).glob('ckpt-e*.pth')), reverse=True)
