"""Stratified K-fold cross-validation on the exercise: every fold's fit, then the pooled out-of-fold report."""
import hashlib, json, time
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_write, cached_images, source_key
from .callbacks import checkpoints
from .data import fold_splits
from .errors import TheraError
from .metrics import best_threshold, error_rates
from .plots import write_plots
from .report import write_reports
from .source import open_dataset
from .training import FitConfig, data_key, fold_done, library_versions, sample_rows, train_fold

__all__ = ['cross_validate', 'read_oof', 'cv_summary', 'check_run_config', 'labelled_bar']


def _run_id(cfg, dkey):
    return hashlib.sha1(json.dumps([cfg.to_dict(), dkey], sort_keys=True).encode()).hexdigest()[:16]


def check_run_config(out, run):
    "Refuses to mix runs: `out` may only hold a run with the same config and data."
    path = Path(out)/'config.json'
    if not path.exists(): return
    try: old = json.loads(path.read_text())
    except json.JSONDecodeError: return
    if old.get('run_id') == run['run_id']: return
    diff = sorted(k for k in run['config'] if old.get('config', {}).get(k) != run['config'][k])
    if old.get('data_key') != run['data_key']: diff.append('data')
    raise TheraError(f"holds a run with another config ({', '.join(diff) or 'versions'} differ): use another --out", out)


def read_oof(out, folds):
    "The out-of-fold predictions of the given finished folds, one frame with a `fold` column."
    frames = [pd.read_csv(Path(out)/f"fold{k}"/'oof.csv').assign(fold=k) for k in folds]
    return pd.concat(frames, ignore_index=True)


def cv_summary(oof, prob='prob_tta'):
    """Pooled out-of-fold metrics at 0.5 and at the HTER-minimizing threshold.

    `cross_fitted` scores each fold at the threshold picked on the other folds' rows only, the honest
    estimate of what a threshold chosen this way gives on unseen data."""
    p, t = oof[prob].to_numpy(), oof['label'].to_numpy()
    thresh = best_threshold(p, t)
    # With one fold, its rows are split in two halves by row parity, each scored at the other's threshold.
    groups = oof['fold'].to_numpy() if oof['fold'].nunique() > 1 else oof['row'].to_numpy() % 2
    cross = np.zeros(len(oof), dtype=bool)
    for g in np.unique(groups):
        mine = groups == g
        cross[mine] = p[mine] >= best_threshold(p[~mine], t[~mine])
    return dict(at_05=error_rates(p, t), best_threshold=thresh, at_best_in_sample=error_rates(p, t, thresh),
                cross_fitted=error_rates(cross.astype(float), t, 0.5) | dict(auc=error_rates(p, t)['auc']))


def _prepare(data, cfg, cache_dir, progress):
    ds = open_dataset(data)
    images = cached_images(ds.train, cache_dir, progress=progress)
    rows = sample_rows(ds.labels, cfg.sample, cfg.seed)
    dkey = data_key(source_key(ds.train), ds.labels, rows)
    return ds, images, rows, dkey


def cross_validate(data, out, cfg: FitConfig, only_fold=None, cache_dir=None, quiet=False, log=print):
    """Runs (or resumes) `cfg.folds` stratified folds on `data`, writing everything under `out`.

    Finished folds whose `done.json` matches this run are skipped; an interrupted fold resumes from
    its last checkpoint. Returns the summary dict (also written as report.json and report.md)."""
    out = Path(out)
    t0 = time.time()
    ds, images, rows, dkey = _prepare(data, cfg, cache_dir, None if quiet else labelled_bar('decode'))
    labels = ds.labels
    splits = fold_splits(labels[rows], cfg.folds, cfg.seed)
    if only_fold is not None and not 0 <= only_fold < cfg.folds:
        raise TheraError(f"--fold {only_fold} is out of range for --folds {cfg.folds} (0..{cfg.folds - 1})")
    run = dict(run_id=_run_id(cfg, dkey), config=cfg.to_dict(), data_key=dkey, data=str(ds.path),
               n_images=len(rows), versions=library_versions())
    _make_out(out)
    check_run_config(out, run)
    atomic_write(out/'config.json', lambda tmp: tmp.write_text(json.dumps(run, indent=1)))
    results = {}
    for k, (tr, va) in enumerate(splits):
        fold_dir = out/f"fold{k}"
        res = fold_done(fold_dir, run['run_id'])
        if res is None and (only_fold is None or only_fold == k):
            log(f"fold {k}/{cfg.folds}: training on {len(tr)} images, validating on {len(va)}")
            try: res = train_fold(images, labels, rows[tr], rows[va], cfg, fold_dir, run['run_id'], fold=k, quiet=quiet)
            except KeyboardInterrupt: raise KeyboardInterrupt(_interrupted(results, k, fold_dir)) from None
        elif res is not None: log(f"fold {k}/{cfg.folds}: already finished, skipped")
        if res is not None:
            results[k] = res
            log(f"fold {k}: HTER {res['at_05']['hter']:.4f} at 0.5 (TTA), AUC {res['at_05']['auc']:.4f}")
    oof = read_oof(out, sorted(results)) if results else None
    summary = _summarize(run, results, oof, time.time() - t0)
    write_reports(out, summary)
    if results: write_plots(out, oof, summary['pooled']['best_threshold'])
    return summary


def _interrupted(results, k, fold_dir):
    "What finished and how to resume, for a Ctrl-C in the middle of fold `k`."
    done = f"fold(s) {', '.join(map(str, sorted(results)))} finished" if results else "no fold finished"
    ckpts = checkpoints(fold_dir)
    where = f"fold {k} stopped after epoch {ckpts[0][0]} (checkpoint kept)" if ckpts else f"fold {k} stopped in its first epoch"
    return f"{done}; {where}. Rerun the same command to resume."


def _make_out(out):
    try: out.mkdir(parents=True, exist_ok=True)
    except OSError as e: raise TheraError(f"cannot create the output folder ({e.strerror})", out) from None
    probe = out/'.write-test'
    try: probe.write_text(''); probe.unlink()
    except OSError as e: raise TheraError(f"output folder is not writable ({e.strerror})", out) from None


def _summarize(run, results, oof, seconds):
    summary = dict(run_id=run['run_id'], config=run['config'], n_images=run['n_images'], versions=run['versions'],
                   seconds=seconds, folds={k: {n: r[n] for n in ('at_05', 'at_05_plain', 'threshold', 'fit_seconds',
                                                                  'images_seen', 'n_train', 'n_valid')}
                                           for k, r in results.items()},
                   complete=len(results) == run['config']['folds'])
    if oof is not None:
        summary['pooled'] = cv_summary(oof)
        summary['pooled_plain'] = cv_summary(oof, 'prob')
    return summary


def labelled_bar(what):
    "A callable wrapping an iterable in a fastprogress bar whose comment says `what` is progressing."
    from fastprogress.fastprogress import progress_bar
    def bar(items):
        pb = progress_bar(items)
        pb.comment = what
        return pb
    return bar
