"""Data-parallel training of one fold through fastai's Accelerate integration: one process per GPU
(`torchrun --nproc_per_node N $(which thera-fit) ...`), or per CPU group with gloo.

Rank 0 alone writes files; every epoch each rank draws its augmentation and dropout from a seed of
(seed, fold, epoch, rank), so a resumed run repeats an uninterrupted one; rank 0's sample order is
broadcast to all. Out-of-fold predictions are made once, by rank 0."""
import random
from contextlib import contextmanager

import numpy as np
import torch
from fastai.callback.progress import ProgressCallback
from fastai.torch_core import num_distrib, rank_distrib

from ..compat import fastai_world_size_1, set_loader_rng

__all__ = ['world_size', 'rank', 'is_main', 'start_process_group', 'barrier', 'alone', 'data_parallel', 'epoch_seed']


def world_size():
    "How many processes train together (1 alone)."
    return max(num_distrib(), 1)


def rank():
    "This process's rank (0 alone)."
    return rank_distrib()


def is_main():
    "Whether this process writes files: rank 0."
    return rank_distrib() == 0


def start_process_group(device):
    "Joins the process group that `torchrun`/`accelerate launch` described (gloo on CPUs, NCCL on GPUs); a no-op alone."
    if world_size() <= 1 or torch.distributed.is_initialized(): return
    from accelerate import PartialState
    PartialState(cpu=device == 'cpu')


def barrier():
    "Waits for every rank (a no-op alone)."
    if world_size() > 1 and torch.distributed.is_initialized(): torch.distributed.barrier()


@contextmanager
def alone():
    "Hides the other ranks from fastai inside the block, so rank 0 can predict without gathering across processes."
    with fastai_world_size_1(): yield


def epoch_seed(seed, fold, epoch, rank):
    "The seed of one rank's epoch: distinct per rank and epoch, the same on every resume."
    return (seed * 1_000_003 + fold * 10_007 + epoch * 101 + rank) % 2**31


def _trainer_class():
    from fastai.distributed import DistributedDL, DistributedTrainer

    class CPUDistributedDL(DistributedDL):
        "fastai's `DistributedDL` whose index broadcast also works under gloo (fastai's moves it to CUDA for NCCL)."
        def _broadcast(self, t, rank):
            t = torch.LongTensor(t)
            if torch.distributed.get_backend() == 'nccl': t = t.cuda()
            torch.distributed.broadcast(t, rank)
            return t.cpu().tolist()

    class DataParallelTrainer(DistributedTrainer):
        "fastai's `DistributedTrainer` with CPU-safe loaders and a per-rank, per-epoch seed."
        def __init__(self, seed, fold, **kwargs): super().__init__(sync_bn=False, **kwargs); self.seed, self.fold = seed, fold
        def _wrap_dl(self, dl): return dl if isinstance(dl, DistributedDL) else CPUDistributedDL(dl, device=self.dls.device)
        def before_train(self):
            s = epoch_seed(self.seed, self.fold, self.epoch, rank())
            random.seed(s); np.random.seed(s % 2**32); torch.manual_seed(s)
            for dl in self.learn.dls.loaders: set_loader_rng(dl, random.Random(s))
            super().before_train()
    return DataParallelTrainer


@contextmanager
def data_parallel(learn, device, seed, fold):
    "Trains `learn` data-parallel over the launched processes inside the block (nothing changes when alone)."
    if world_size() <= 1: yield learn; return
    cb = _trainer_class()(seed, fold, cpu=device == 'cpu')
    learn.add_cb(cb)
    if rank(): learn.remove_cb(ProgressCallback)
    try: yield learn
    finally: learn.remove_cb(cb)
