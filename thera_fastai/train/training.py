"""One fold's fit, resumable from its last epoch checkpoint to the same result, and the files it leaves."""
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from fastai.torch_core import set_seed

from .callbacks import ClosedAutocast, EpochCheckpoint, HistoryCSV, LastValidation, StopOnNonFinite, checkpoints, load_checkpoint, resume_callbacks
from ..config import FitConfig, command_line, library_versions
from ..errors import TheraError
from ..data.loaders import image_stats
from .distributed import alone, barrier, data_parallel, is_main, rank, world_size
from ..files import file_hash, short_hash, write_json
from ..infer.inference import predict_probs
from .budget import Replan, epoch_cap, measure_speed, plan_steps
from .levers import lever_callbacks, teacher_probs
from .pseudo import with_pseudo_labels
from .methods import method_callbacks, moves_weights_after_validation
from ..models import Downsample, first_conv, model_profile, whiten_init
from .callbacks import _unwrapped
from .learner import config_dataloaders, save_weights, step_schedule, thera_learner, weights_bytes
from ..metrics import best_threshold, error_rates
from ..runs import FOLD_FILE, FOLD_FILES, WEIGHTS_FILE, write_oof

__all__ = ['train_fold']


def _epoch_line(recorder, fold, log=print):
    "One readable line per epoch (fastai's default logger prints a raw list); epochs skipped on resume print nothing."
    def line(values):
        if len(values) < len(recorder.metric_names): return
        log(f"fold {fold} " + ', '.join(f"{n} {v:.4f}" if isinstance(v, float) else f"{n} {v}"
                                        for n, v in zip(recorder.metric_names, values)))
    return line


def _fit(learn, cfg, start, cbs, plan, replanning=False):
    """Runs the fit from epoch `start`; one that its last checkpoint already ended still runs its callbacks' `after_fit`.
    A fit that will re-plan runs under its cap of epochs, which its `StopAtStep` ends at the re-planned step."""
    if cfg.method == 'airbench' or cfg.budget: return learn.fit(epoch_cap(plan) if replanning else plan['epochs'], start_epoch=start, cbs=cbs)
    if cfg.schedule == 'step': cbs.append(step_schedule(cfg.lr, cfg.epochs))
    fit = learn.fit_one_cycle if cfg.schedule == 'one_cycle' else learn.fit
    fit(cfg.epochs, cfg.lr, start_epoch=start, cbs=cbs)


def _plan(learn, cfg, n_valid, t0):
    "The fit's steps: its epochs in full, or what its budget holds at the speed measured now."
    n_iter = len(learn.dls.train)
    if not cfg.budget: return dict(steps=cfg.epochs * n_iter, epochs=cfg.epochs, steps_per_epoch=n_iter)
    speed = measure_speed(learn)
    return plan_steps(cfg.budget, time.time() - t0, speed, n_iter, n_valid, cfg.tta, reuse_last=ends_on_validated_weights(cfg))


def ends_on_validated_weights(cfg):
    "Whether the fit ends on the weights its last validation ran on: one process, and a method that leaves them there."
    return world_size() == 1 and not moves_weights_after_validation(cfg)


def _whiten(learn, cfg, images, train_idx, stats):
    "airbench's whitening layer, set from (a seeded sample of) this fold's training rows only."
    if cfg.method != 'airbench' or not cfg.hyp['whiten']: return
    rows = np.asarray(train_idx)
    if len(rows) > cfg.hyp['whiten_images']: rows = np.sort(np.random.default_rng(cfg.training_seed).choice(rows, cfg.hyp['whiten_images'], replace=False))
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in stats)
    x = (torch.from_numpy(images[rows]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    model = _unwrapped(learn.model)
    if isinstance(model[0], Downsample): x = model[0](x)  # the patches the layer will see
    whiten_init(first_conv(model), x, cfg.hyp['whiten_eps'])


def train_fold(images, labels, train_idx, valid_idx, cfg: FitConfig, runtime, folder, rid, fold=0, bars=False, log=print, cbs=None,
               unlabeled=None):
    """Fits one fold (resuming from its newest checkpoint), saves its weights, out-of-fold predictions and history.

    `runtime` is `Runtime.resolved()`. Returns the fold's record, also saved as `fold.json` once
    everything else is on disk: the config, normalization statistics, threshold, versions, how it ran.
    Launched as several processes (`torchrun`), the fold trains data-parallel and rank 0 writes (the others return None).
    `cbs`: extra fastai callbacks for the fit. `unlabeled`: the val_img/ images that `cfg.pseudo` labels."""
    t0 = time.time()  # a budget counts from here
    folder = Path(folder).resolve()  # fastai joins relative file names onto learn.path, itself the fold folder
    set_seed(cfg.training_seed + fold, reproducible=True)
    stats = image_stats(images, train_idx)  # the labelled training rows only, as the whitening below
    fit_images, fit_labels, fit_idx, soft, pseudo = images, labels, train_idx, None, None
    if cfg.pseudo:
        if unlabeled is None: raise TheraError("needs the unlabelled images (train_fold's `unlabeled`)", param='pseudo')
        fit_images, fit_labels, fit_idx, soft, pseudo = with_pseudo_labels(cfg, images, labels, train_idx, valid_idx, unlabeled, runtime['device'], log, fold)
        set_seed(cfg.training_seed + fold, reproducible=True)  # building the teacher's model drew from the generators (its TTA puts them back)
    dls = config_dataloaders(cfg, fit_images, fit_labels, fit_idx, valid_idx, stats, runtime['device'])
    learn = thera_learner(dls, cfg, folder, np.asarray(fit_labels)[fit_idx], runtime)
    _whiten(learn, cfg, images, train_idx, stats)
    start, rng = load_checkpoint(learn, folder)
    plan = rng['plan'] if rng and 'plan' in rng else _plan(learn, cfg, len(valid_idx), t0)
    before = (rng or {}).get('spent_seconds')  # the fold's seconds up to its checkpoint, in the processes before this one
    t0 -= before or 0.0  # the budget's clock counts the epochs kept, not the time since this process started
    if cfg.budget and start == 0: log(f"fold {fold}: budget {cfg.budget / 60:.1f} min holds {plan['steps']} steps "
                                      f"({plan['steps'] / plan['steps_per_epoch']:.2f} epochs) at {plan['step_seconds']:.2f} s a step")
    finished = start >= plan['epochs']
    if start and not finished:
        spent = f", {before / 60:.1f} min of its {cfg.budget / 60:.1f} min budget spent" if cfg.budget and before is not None else ''
        log(f"fold {fold}: resuming after epoch {start - 1} from its checkpoint ({folder.name}/){spent}")
    if cfg.distill and not finished: soft = teacher_probs(cfg.distill, images, valid_idx, train_idx, runtime['device'])
    extra = list(cbs or [])
    last_valid = LastValidation(plan)
    cbs = [StopOnNonFinite(fold, folder), HistoryCSV(folder/'history.csv', start), EpochCheckpoint(folder, start, rng, plan, t0), last_valid,
           *lever_callbacks(cfg, soft), *method_callbacks(cfg, plan['steps'], len(fit_images))]
    # ranks would re-plan apart; a checkpoint from before 0.26.0 has no seconds spent to plan from, and keeps its plan
    replanning = bool(cfg.budget) and world_size() == 1 and (start == 0 or before is not None) and not finished
    if replanning: cbs.append(Replan(plan, cfg.budget, t0, len(valid_idx), cfg.tta, ends_on_validated_weights(cfg), lambda m: log(f"fold {fold}: {m}"),
                                     start_epoch=start))
    resume_callbacks(cbs, rng)
    cbs += extra
    if not bars: learn.logger = _epoch_line(learn.recorder, fold, log)
    t_fit = time.time()
    with (nullcontext() if bars and is_main() else learn.no_bar()), data_parallel(learn, runtime['device'], cfg.training_seed, fold):
        try: _fit(learn, cfg, start, cbs, plan, replanning)
        finally:  # an error inside a batch (Ctrl-C, a diverged loss) must not leave the process in autocast either
            for cb in learn.cbs:
                if isinstance(cb, ClosedAutocast): cb.leave()
    fit_s = time.time() - t_fit
    if world_size() > 1: log(f"fold {fold}, rank {rank()} of {world_size()}: weights {short_hash(weights_bytes(learn.model))}")
    if not is_main(): barrier(); return None
    how = dict(runtime, world_size=world_size())
    with alone(): info = _finish(learn, dls, stats, labels, train_idx, valid_idx, cfg, how, folder, rid, fold, start, fit_s, plan, t0, pseudo, last_valid, before)
    barrier()
    return info


def _oof_probs(learn, dls, cfg, fold, last_valid=None):
    """The held-out rows' (plain, TTA) probabilities. The plain pass is the last validation's where the fit ended on the
    weights it ran on (the same pass, not run twice); TTA's augmented passes run here."""
    kept = last_valid.preds_for(learn.model, len(dls.valid.dataset)) if last_valid is not None else None
    compile = False if cfg.budget else None  # a budget's estimate has no room for compiling
    return predict_probs(learn, dls.valid, cfg.tta, seed=cfg.training_seed + fold, compile=compile, flip=cfg.alternating_flip, with_plain=True, plain=kept)


def _finish(learn, dls, stats, labels, train_idx, valid_idx, cfg, runtime, folder, rid, fold, start, fit_s, plan, t0, pseudo=None, last_valid=None,
            before=None):
    """Rank 0's part after the fit: out-of-fold predictions, weights, `fold.json` last, checkpoints removed. `fold_seconds`
    counts from `t0`, which a resumed fold sets back by `before`, the seconds its earlier processes spent on the epochs it kept."""
    targs = np.asarray(labels)[valid_idx]
    probs, probs_tta = _oof_probs(learn, dls, cfg, fold, last_valid)
    done_steps = max(plan['steps'] - start * plan['steps_per_epoch'], 0)  # those of this process, not of an earlier one
    write_oof(folder/'oof.csv', valid_idx, targs, probs, probs_tta)
    save_weights(learn.model, folder/WEIGHTS_FILE)
    info = dict(run_id=rid, fold=fold, config=cfg.to_dict(), stats=[list(s) for s in stats], threshold=best_threshold(probs_tta, targs),
                at_05=error_rates(probs_tta, targs), at_05_plain=error_rates(probs, targs), n_train=len(train_idx),
                n_valid=len(valid_idx), fit_seconds=fit_s, images_seen=int(done_steps * cfg.bs), steps=plan,
                epochs_run=plan['steps'] / plan['steps_per_epoch'] if plan['steps_per_epoch'] else 0.0, fold_seconds=time.time() - t0, resumed_from_epoch=start, seconds_before_resume=before, runtime=runtime, versions=library_versions(), command=command_line(), profile=model_profile(_unwrapped(learn.model)),
                files={n: file_hash(folder/n) for n in FOLD_FILES})
    if pseudo is not None: info['pseudo'] = pseudo
    write_json(folder/FOLD_FILE, info)
    for _, ckpt in checkpoints(folder): ckpt.unlink(missing_ok=True)
    return info
