"""Predictions for `get_preds` and `tta`: the same weights through `torch.compile` on the CPU, TTA from a seeded generator."""
import logging, os, random, warnings
from contextlib import contextmanager

import numpy as np
import torch

from ..config import TTA_SEED

__all__ = ['compile_enabled', 'compiled_model', 'seeded', 'predict_probs', 'augmented_mean', 'TTA_SEED']

TTA_BETA = 0.25  # weight of the plain pass in the TTA blend (fastai's default)
COMPILE_MIN_IMAGES = 5000  # fewer images than this predict in eager mode: the compilation would cost more than it saves
log = logging.getLogger('thera_fastai')


def compile_enabled(n_images=None):
    """Whether inference uses `torch.compile`: for `n_images` of at least `COMPILE_MIN_IMAGES` (None: any number), unless
    THERA_COMPILE=0 (always eager); THERA_COMPILE=1 compiles whatever the number."""
    flag = os.environ.get('THERA_COMPILE')
    if flag is not None: return flag != '0'
    return n_images is None or n_images >= COMPILE_MIN_IMAGES


@contextmanager
def compiled_model(learn, enable=None):
    """Runs `learn` with a `torch.compile`d copy of its model inside the block, the eager one after.

    Compiling fuses BatchNorm and the activation into the convolutions (its gain: docs/speed.md). The parameters
    are shared, so predictions are the same."""
    eager = learn.model
    if enable if enable is not None else compile_enabled():
        log.info("compiling the model for prediction (torch.compile: a minute or two on a CPU before the first batch)")
        learn.model = torch.compile(eager, dynamic=False)
    try: yield learn
    finally: learn.model = eager


@contextmanager
def seeded(seed):
    "Python's, NumPy's and torch's global generators seeded with `seed` inside the block, and put back as they were after."
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
        try: yield
        finally: random.setstate(py); np.random.set_state(np_state)


def predict_probs(learn, dl, tta=0, seed=TTA_SEED, compile=None, flip=False, with_plain=False, plain=None):
    """P(class 1) per row of `dl` as a 1-D array: `tta` augmented passes blended with a plain one, or a plain pass.

    The augmentation draws from generators seeded with `seed`, so the same call gives the same numbers. `flip` adds a
    random horizontal flip to the passes, for a model whose training flipped by `AlternatingFlip` rather than in its
    DataLoader. `compile`: use `torch.compile` (None: `compile_enabled` for the rows of `dl`). `with_plain`: (plain, TTA) from the same
    passes, the plain one being the pass TTA blends in. `plain`: that pass's output, already computed on these weights
    (a fit's last validation, `(n, 2)` as get_preds gives it): only the augmented passes run."""
    from fastai.vision.augment import Flip  # here: the commands import this module before they silence fastai's import warnings
    tfms = [*dl.after_batch.fs, Flip(p=0.5)] if tta and flip else None
    def run():
        with learn.no_bar(), warnings.catch_warnings(), seeded(seed):
            warnings.filterwarnings('ignore', module='fastai')
            warnings.filterwarnings('ignore', module='torch')
            if not tta:
                out = learn.get_preds(dl=dl)[0] if plain is None else plain
                return out, out
            if plain is None: aug, out = learn.tta(dl=dl, n=tta, batch_tfms=tfms, beta=None)[0]
            else: aug, out = augmented_mean(learn, dl, tta, tfms).to(plain.dtype), plain
            return out, torch.lerp(aug, out, TTA_BETA)
    compile = compile_enabled(len(dl.dataset)) if compile is None else compile
    try:
        with compiled_model(learn, compile): out, blended = run()
    except Exception as e:  # a missing compiler or an op inductor cannot lower: eager gives the same numbers
        if not compile: raise
        warnings.warn(f"torch.compile failed ({type(e).__name__}); predicting in eager mode")
        out, blended = run()
    out, blended = (p[:, 1].float().cpu().numpy() for p in (out, blended))  # the loss's activation: (P(0), P(1))
    return (out, blended) if with_plain else blended


def augmented_mean(learn, dl, n, batch_tfms=None):
    """The mean of `n` augmented passes over `dl`, as `Learner.tta` computes them, without its plain pass (written
    here because fastai's `tta` always runs that pass too): the same draws, so the same numbers for the same seed."""
    from fastai.learner import _before_epoch, event
    if batch_tfms is not None: dl = dl.new(after_item=None, after_batch=batch_tfms)  # as fastai's tta builds it
    try:
        learn(_before_epoch)
        with dl.dataset.set_split_idx(0), learn.no_mbar():
            passes = []
            for i in range(n):
                learn.epoch = i
                passes.append(learn.get_preds(dl=dl, inner=True)[0][None])
        learn.epoch = n
    finally: learn(event.after_fit)
    return torch.cat(passes).mean(0)
