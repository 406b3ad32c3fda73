"""Stratified K-fold cross-validation: each fold's fit in turn (or one fold, or the folds another process left),
then the run's report from what is on disk."""
from contextlib import nullcontext
from pathlib import Path


from ..config import AUTO_WIDTHS, FitConfig, Runtime
from ..data.folds import fold_splits, fold_train_rows
from ..errors import TheraError
from ..files import clean_stale_temps, make_folder
from ..metrics import chance_warning
from ..models import check_start_weights
from .callbacks import checkpoints
from .levers import table_probs
from ..progress import labelled_bar
from .distributed import barrier, is_main, start_process_group, world_size
from ..analysis.report import run_summary, write_run_report
from ..data.cache import cached_images
from ..data.rows import prepare_data
from ..runs import claim_run, fold_dir, fold_done, fold_lock, run_record
from .sizing import size_for_budget
from .training import train_fold

__all__ = ['cross_validate']


def cross_validate(data, out, cfg: FitConfig, runtime=None, only_fold=None, cache=None, bars=False, log=print, cbs=None):
    """Runs (or resumes) the stratified folds of `cfg` on `data`, writing everything under `out`; returns the report.

    Every argument is checked before anything is written. Finished folds of the same run are
    skipped, an interrupted fold resumes from its last checkpoint, and a fold that another process
    is training is refused (so several processes, on one machine or several sharing `out`, can
    each take folds). The report covers every finished fold on disk. `cbs`: extra callbacks of every fold's fit."""
    runtime = runtime or Runtime()
    if only_fold is not None and not (isinstance(only_fold, int) and 0 <= only_fold < cfg.folds):
        raise TheraError(f"{only_fold} is out of range for {cfg.folds} folds (0..{cfg.folds - 1})", param='fold')
    rt = runtime.resolved()
    runtime.apply()
    if cfg.widths != AUTO_WIDTHS: check_start_weights(cfg.arch, **cfg.model_kwargs())  # (auto: the airbench net, no start weights)
    ds, images, rows, excluded, dkey = prepare_data(data, cfg, cache, labelled_bar('decode') if bars else None, runtime.threads, log)
    fold_splits(ds.labels[rows], cfg.folds, cfg.seed)  # refuses more folds than the rarer class has images, before any write
    if cfg.distill is not None and Path(cfg.distill).is_file(): _check_teacher_table(cfg, ds.labels, rows, excluded, only_fold)
    if cfg.widths == AUTO_WIDTHS:  # timed on the first fold this process trains
        first = only_fold or 0
        cfg = size_for_budget(cfg, out, images, ds.labels, *fold_train_rows(rows, ds.labels, cfg.folds, cfg.seed, first, excluded), rt, log)
    unlabeled = cached_images(ds.val, cache, n_threads=runtime.threads, log=log) if cfg.pseudo is not None else None
    run = run_record(cfg, ds, rows, dkey)
    start_process_group(rt['device'])
    if is_main(): claim_run(make_folder(out, 'output'), run); clean_stale_temps(out)
    barrier()
    if not is_main(): claim_run(out, run)
    done, say = [], log if is_main() else (lambda *_: None)
    for k in range(cfg.folds):
        if only_fold not in (None, k): continue
        if fold_done(fold_dir(out, k), run['run_id']): say(f"fold {k}/{cfg.folds}: already finished, skipped"); done.append(k); continue
        train_rows, valid_rows = fold_train_rows(rows, ds.labels, cfg.folds, cfg.seed, k, excluded)
        with (fold_lock(out, k) if is_main() else nullcontext(fold_dir(out, k))) as folder:
            left_out = f" ({len(rows) - len(valid_rows) - len(train_rows)} excluded)" if len(excluded) else ''
            say(f"fold {k}/{cfg.folds}: training on {len(train_rows)} images{left_out}, validating on {len(valid_rows)} ({_how(rt)})")
            try: info = train_fold(images, ds.labels, train_rows, valid_rows, cfg, rt, folder, run['run_id'], fold=k, bars=bars, log=log, cbs=cbs,
                                   unlabeled=unlabeled)
            except KeyboardInterrupt: raise KeyboardInterrupt(_interrupted(done, k, folder)) from None
        done.append(k)
        if info: say(f"fold {k}: HTER {info['at_05']['hter']:.4f} at 0.5 (TTA), AUC {info['at_05']['auc']:.4f}")
        if info and (warning := chance_warning(info['at_05']['auc'], f"fold {k}")): say(f"warning: {warning}")
    if not is_main(): return run_summary(out)[0]
    return write_run_report(out)


def _check_teacher_table(cfg, labels, rows, excluded, only_fold):
    "Refuses a teacher table that lists a held-out row of any fold this process trains, before any write."
    for k in range(cfg.folds):
        if only_fold not in (None, k): continue
        train_rows, valid_rows = fold_train_rows(rows, labels, cfg.folds, cfg.seed, k, excluded)
        table_probs(cfg.distill, len(labels), valid_rows, train_rows)


def _how(rt):
    return f"{rt['device']}, {rt['precision']}" + (f", {world_size()} processes data-parallel" if world_size() > 1 else '')


def _interrupted(done, k, folder):
    "What finished and how to resume, for a Ctrl-C in the middle of fold `k`."
    finished = f"fold(s) {', '.join(map(str, sorted(done)))} finished" if done else "no fold finished"
    ckpts = checkpoints(folder)
    where = f"fold {k} stopped after epoch {ckpts[0][0]} (checkpoint kept)" if ckpts else f"fold {k} stopped in its first epoch"
    return f"{finished}; {where}. Rerun the same command to resume."
