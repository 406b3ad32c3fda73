"""The fold ensemble: each fold's exported learner predicts with TTA at its own threshold, then the folds vote."""
import json
from pathlib import Path

import numpy as np

from .cache import atomic_write
from .data import images_dl
from .errors import TheraError
from .inference import predict_probs

__all__ = ['FoldModel', 'load_fold_models', 'predict_folds', 'vote', 'write_labels', 'write_votes']


class FoldModel:
    "One fold's exported learner with the threshold chosen on its own out-of-fold rows."
    def __init__(self, fold, learn, threshold): self.fold, self.learn, self.threshold = fold, learn, threshold

    def predict(self, images, tta=4, bs=512):
        "P(class 1) for every row of the (N, H, W, C) uint8 `images`; `tta` augmented passes blended with a plain one."
        return predict_probs(self.learn, images_dl(self.learn.dls, images, bs=bs), tta)


def _check_imports():
    # load_learner hides a failed import of the model's library behind an UnboundLocalError: check first.
    try: import timm  # noqa: F401
    except ImportError: raise TheraError("timm is not installed; pip install thera_fastai's requirements") from None


def load_fold_models(models_dir, image_shape=(64, 64, 3)):
    "Every finished fold under `models_dir` (a `thera-fit --out` folder), checked to come from one run that fits `image_shape`."
    from .training import load_fold_learner
    models_dir = Path(models_dir)
    if not models_dir.is_dir(): raise TheraError("models folder does not exist", models_dir)
    cfg_path = models_dir/'config.json'
    if not cfg_path.exists(): raise TheraError("no config.json: not a thera-fit output folder", models_dir)
    run = json.loads(cfg_path.read_text())
    if list(run['config']['image_size']) != list(image_shape):
        raise TheraError(f"models were trained on {tuple(run['config']['image_size'])} images, the data is {tuple(image_shape)}", cfg_path)
    _check_imports()
    models = []
    for fold_dir in sorted(models_dir.glob('fold*'), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1):
        done = fold_dir/'done.json'
        if not done.exists() or not (fold_dir/'model.pkl').exists(): continue
        res = json.loads(done.read_text())
        if res.get('run_id') != run['run_id']:
            raise TheraError(f"learner comes from another run than {cfg_path} (different arch or config)", fold_dir/'model.pkl')
        try: learn = load_fold_learner(fold_dir/'model.pkl', run['config'])
        except Exception as e: raise TheraError(f"cannot load the learner ({type(e).__name__}: {e})", fold_dir/'model.pkl') from None
        models.append(FoldModel(int(fold_dir.name[4:]), learn, res['threshold']))
    if not models: raise TheraError("holds no finished fold learner (fold*/model.pkl with done.json)", models_dir)
    return models, run


def predict_folds(models, images, tta=4, progress=None):
    "(K, N) probabilities and 0/1 votes of the K fold models on `images`."
    probs = np.stack([m.predict(images, tta) for m in (progress(models) if progress else models)])
    votes = np.stack([p >= m.threshold for p, m in zip(probs, models)]).astype(np.int8)
    return probs, votes


def vote(votes, probs, thresholds):
    """Majority vote of the folds' 0/1 decisions; a tie goes to the mean margin over each fold's threshold."""
    votes, probs = np.asarray(votes), np.asarray(probs)
    share = votes.mean(0)
    margin = (probs - np.asarray(thresholds, dtype=np.float64)[:, None]).mean(0)
    return np.where(share > 0.5, 1, np.where(share < 0.5, 0, (margin >= 0).astype(int))).astype(np.int8)


def write_labels(path, labels, n_images):
    "Writes one 0/1 line per image, atomically; refuses a line count that differs from the number of images."
    labels = np.asarray(labels)
    if len(labels) != n_images: raise TheraError(f"refusing to write {len(labels)} labels for {n_images} images", path)
    atomic_write(path, lambda tmp: tmp.write_text(''.join(f"{int(v)}\n" for v in labels)))


def write_votes(path, names, probs, votes, final, folds):
    "A CSV of each image's per-fold probability and vote, the mean probability and the final label."
    head = ['image'] + [f"prob_fold{k}" for k in folds] + [f"vote_fold{k}" for k in folds] + ['mean_prob', 'label']
    mean = probs.mean(0)
    rows = [','.join([n, *(f"{p:.5f}" for p in probs[:, i]), *(str(v) for v in votes[:, i]), f"{mean[i]:.5f}", str(final[i])])
            for i, n in enumerate(names)]
    atomic_write(path, lambda tmp: tmp.write_text('\n'.join([','.join(head), *rows]) + '\n'))
