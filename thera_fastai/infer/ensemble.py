"""The fold ensemble: each fold's learner predicts with TTA at its own threshold, then the folds vote (soft or hard)."""
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import COMMAND_DEFAULTS, IMAGE_SHAPE, TTA_SEED, FitConfig
from ..data.loaders import images_dl
from ..errors import TheraError
from ..files import atomic_write, read_json
from ..runs import FOLD_FILE, fold_dir, fold_done, open_run
from ..train.learner import load_fold_learner
from .inference import predict_probs
from .onnx_predict import VOTE_RULES, vote  # the exported predictor's vote: one rule for both

__all__ = ['FoldModel', 'load_fold_models', 'predict_folds', 'VOTE_RULES', 'check_vote_rule', 'vote', 'votes_frame', 'write_labels', 'write_votes']


class FoldModel:
    "One fold's learner with the threshold chosen on its own out-of-fold rows."
    def __init__(self, fold, learn, threshold):
        self.fold, self.learn, self.threshold = fold, learn, threshold
        self.flip = FitConfig.from_dict(learn.fold_info['config']).alternating_flip  # TTA flips what the training flipped

    def predict(self, images, tta=4, bs=512, seed=TTA_SEED, compile=None):
        """P(class 1) for every row of the (N, H, W, C) uint8 `images`; `tta` augmented passes blended with a plain one.
        `compile`: as `predict_probs`'s."""
        return predict_probs(self.learn, images_dl(self.learn.dls, images, bs=bs), tta, seed, compile=compile, flip=self.flip)


def load_fold_models(run_dir, device='auto', partial=False, precision=None):
    """The fold models of run folder `run_dir` (a `thera-fit` output), rebuilt on `device`.

    Every fold must be finished and come from the run in `config.json`; `partial=True` takes the
    finished ones when some are missing. Returns (models, run)."""
    run_dir = Path(run_dir)
    run = open_run(run_dir)
    if tuple(run['config']['image_size']) != IMAGE_SHAPE:
        raise TheraError(f"models were trained on {tuple(run['config']['image_size'])} images, this version reads {IMAGE_SHAPE}", run_dir/'config.json')
    models, missing = [], []
    for k in range(run['config']['folds']):
        folder = fold_dir(run_dir, k)
        if not (folder/FOLD_FILE).exists(): missing.append(k); continue
        info = fold_done(folder, run['run_id'])
        if info is None:
            other = read_json(folder/FOLD_FILE, 'fold file').get('run_id') != run['run_id']   # an unreadable file says so here
            raise TheraError("fold comes from another run than config.json" if other else
                             "fold's files changed since it finished (weights, oof.csv or history.csv)", folder/FOLD_FILE)
        models.append(FoldModel(k, load_fold_learner(folder, device=device, precision=precision), info['threshold']))
    if not models: raise TheraError("holds no finished fold (fold*/fold.json)", run_dir)
    if missing and not partial:
        raise TheraError(f"fold{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {run['config']['folds']} "
                         "not finished: finish them, or vote over the finished ones with --partial (partial=True)", run_dir)
    return models, run


def predict_folds(models, images, tta=4, progress=None, seed=TTA_SEED):
    "(K, N) probabilities and 0/1 votes of the K fold models on `images`."
    probs = np.stack([m.predict(images, tta, seed=seed) for m in (progress(models) if progress else models)])
    votes = np.stack([p >= m.threshold for p, m in zip(probs, models)]).astype(np.int8)
    return probs, votes


def check_vote_rule(rule):
    "`rule` where it names a vote rule (`VOTE_RULES`); else one `TheraError` listing them."
    if rule not in VOTE_RULES: raise TheraError(f"must be one of {', '.join(VOTE_RULES)} (got {rule!r})", param='vote')
    return rule


def votes_frame(names, models, probs, votes, rule=COMMAND_DEFAULTS['vote']):
    "One row per image: its name, each fold's probability and vote, the mean probability and the final label by `rule`."
    cols = {'image': list(names)}
    cols.update({f"prob_fold{m.fold}": p for m, p in zip(models, probs)})
    cols.update({f"vote_fold{m.fold}": v for m, v in zip(models, votes)})
    cols.update(mean_prob=probs.mean(0), label=vote(probs, [m.threshold for m in models], rule).astype(np.int8))
    return pd.DataFrame(cols)


def write_labels(path, labels, n_images):
    "Writes one 0/1 line per image, atomically; refuses a line count that differs from the number of images."
    labels = np.asarray(labels)
    if len(labels) != n_images: raise TheraError(f"refusing to write {len(labels)} labels for {n_images} images", path)
    atomic_write(path, lambda tmp: tmp.write_text(''.join(f"{int(v)}\n" for v in labels)))


def write_votes(path, frame):
    "The `votes_frame` as CSV, atomically."
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format='%.5f'))
