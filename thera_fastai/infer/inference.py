"""Predictions for `get_preds` and `tta`: the same weights through `torch.compile` on the CPU, TTA from a seeded generator."""
import logging, os, random, warnings
from contextlib import contextmanager

import numpy as np
import torch

from ..config import TTA_SEED

__all__ = ['compile_enabled', 'compiled_model', 'seeded', 'predict_probs', 'TTA_SEED']

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


def predict_probs(learn, dl, tta=0, seed=TTA_SEED, compile=None, flip=False, with_plain=False):
    """P(class 1) per row of `dl` as a 1-D array: `tta` augmented passes blended with a plain one, or a plain pass.

    The augmentation draws from generators seeded with `seed`, so the same call gives the same numbers. `flip` adds a
    random horizontal flip to the passes, for a model whose training flipped by `AlternatingFlip` rather than in its
    DataLoader. `compile`: use `torch.compile` (None: `compile_enabled` for the rows of `dl`). `with_plain`: (plain, TTA) from the same
    passes, the plain one being the pass TTA blends in."""
    from fastai.vision.augment import Flip  # here: the commands import this module before they silence fastai's import warnings
    tfms = [*dl.after_batch.fs, Flip(p=0.5)] if tta and flip else None
    def run():
        with learn.no_bar(), warnings.catch_warnings(), seeded(seed):
            warnings.filterwarnings('ignore', module='fastai')
            warnings.filterwarnings('ignore', module='torch')
            if not tta: plain = learn.get_preds(dl=dl)[0]; return plain, plain
            aug, plain = learn.tta(dl=dl, n=tta, batch_tfms=tfms, beta=None)[0]
            return plain, torch.lerp(aug, plain, TTA_BETA)
    compile = compile_enabled(len(dl.dataset)) if compile is None else compile
    try:
        with compiled_model(learn, compile): plain, blended = run()
    except Exception as e:  # a missing compiler or an op inductor cannot lower: eager gives the same numbers
        if not compile: raise
        warnings.warn(f"torch.compile failed ({type(e).__name__}); predicting in eager mode")
        plain, blended = run()
    plain, blended = (p[:, 1].float().cpu().numpy() for p in (plain, blended))  # the loss's activation: (P(0), P(1))
    return (plain, blended) if with_plain else blended
