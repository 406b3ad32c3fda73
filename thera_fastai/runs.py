"""The run folder: `config.json` (what the run computes), one `fold<k>/` per fold (weights, `fold.json`,
out-of-fold predictions, history), locks so several processes or machines can share it."""
import json, os, socket
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from .config import IMAGE_SHAPE, FitConfig, command_line, library_versions
from .errors import TheraError
from .files import atomic_write, clean_stale_temps, create_exclusive, file_hash, read_json, short_hash

__all__ = ['RUN_FILE', 'FOLD_FILE', 'WEIGHTS_FILE', 'FOLD_FILES', 'read_history', 'check_fold_info', 'run_id', 'teacher_identity', 'run_record', 'open_run', 'claim_run', 'run_data', 'fold_dir', 'fold_done', 'finished_folds',
           'fold_lock', 'read_oof', 'write_oof']

RUN_FILE, FOLD_FILE, WEIGHTS_FILE = 'config.json', 'fold.json', 'model.safetensors'
FOLD_FILES = (WEIGHTS_FILE, 'oof.csv', 'history.csv')


def read_history(path):
    "A fold's history.csv: one row per epoch with its losses and metrics."
    try: return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TheraError(f"history is not a readable CSV ({e})", path) from None


PSEUDO_FIELDS = ('pseudo', 'pseudo_confidence', 'pseudo_targets')
MUON_KEYS = ('muon', 'muon_lr', 'muon_momentum')  # airbench settings left out of the identity while Muon is off


def run_id(cfg: FitConfig, dkey, teacher_id=None, unlabeled_key=None):
    """The run's identity: a hash of what decides its result (the config and the data), never of how it runs.
    Paths are not part of it: the excluded rows count by content (they are in `dkey`), a teacher by `teacher_identity` (a distilling run's with how its targets are made), the
    pseudo-labelled images by their source key (`unlabeled_key`). Without `pseudo` its settings are left out, and
    without Muon its settings, and `resolution`, `mixup`, `balance_strength`, `head` and `train_seed` where they are unset (full size, no MixUp, full balance, airbench's pooling, the fold seed), so the ids of runs written before they existed still hold."""
    identity = cfg.to_dict()
    if cfg.exclude is not None: identity['exclude'] = 'rows in the data key'
    if cfg.distill is not None:  # a run's targets are mapped back from its smoothing; a table's are used as they are
        identity['distill'] = [teacher_id, 'as listed' if teacher_id.startswith(TABLE_ID) else 'unsmoothed']
    if identity.get('hyp') and not identity['hyp'].get('muon'): identity['hyp'] = {k: v for k, v in identity['hyp'].items() if k not in MUON_KEYS}
    for k in ('resolution', 'mixup', 'balance_strength', 'head', 'train_seed'):
        if getattr(cfg, k) is None: identity.pop(k)
    if cfg.pseudo is None:
        for k in PSEUDO_FIELDS: identity.pop(k)
    else: identity['pseudo'] = [teacher_id, unlabeled_key]
    return short_hash(identity, dkey)


TABLE_ID = 'table-'  # a teacher table's identity: this and the hash of its bytes


def teacher_identity(teacher):
    "A teacher's identity in its student's run id: a run folder's run id, or a teacher table's content hash (not its path)."
    return TABLE_ID + file_hash(teacher) if Path(teacher).is_file() else open_run(teacher)['run_id']


def run_record(cfg, ds, rows, dkey):
    "What `config.json` holds."
    from .data.cache import source_key
    teacher = cfg.distill or cfg.pseudo
    teacher_id = None if teacher is None else teacher_identity(teacher)
    unlabeled_key = source_key(ds.val) if cfg.pseudo is not None else None
    return dict(run_id=run_id(cfg, dkey, teacher_id, unlabeled_key), config=cfg.to_dict(), data_key=dkey, data=str(Path(ds.path).resolve()),
                n_images=len(rows), versions=library_versions(), command=command_line())


def open_run(out):
    "The `config.json` of a run folder, checked: one clear line when `out` is not a run folder or the file is broken."
    out = Path(out)
    if not out.is_dir(): raise TheraError("run folder does not exist", out)
    if not (out/RUN_FILE).exists(): raise TheraError(f"no {RUN_FILE}: not a thera-fit output folder", out)
    run = read_json(out/RUN_FILE, 'run config')
    for k, kind in (('run_id', str), ('config', dict)):
        if k not in run: raise TheraError(f"run config has no {k!r} (not written by thera-fit?)", out/RUN_FILE)
        if not isinstance(run[k], kind): raise TheraError(f"run config's {k!r} is not {_KINDS[kind]}", out/RUN_FILE)
    missing = [f for f in _REQUIRED_CONFIG if f not in run['config']]
    if missing: raise TheraError(f"run config lacks {', '.join(map(repr, missing))} (a damaged file?)", out/RUN_FILE)
    return dict(run, config=FitConfig.from_dict(run['config'], out/RUN_FILE).to_dict())


# Every config field that thera_fastai has always written (later fields have defaults that read old runs the same).
_REQUIRED_CONFIG = ('arch', 'folds', 'epochs', 'bs', 'lr', 'seed', 'balance', 'tta', 'image_size')
_KINDS = {str: 'a string', dict: 'an object', list: 'a list', int: 'an integer', float: 'a number'}


def check_fold_info(info, path):
    """`fold.json`'s keys that prediction and reports read, each of its type: one `TheraError` naming the file and the
    key otherwise, before anything is computed with it."""
    def bad(key, what): raise TheraError(f"fold file's {key!r} {what} (a damaged file?)", path)
    for key, kind in (('run_id', str), ('config', dict), ('stats', list), ('files', dict), ('at_05', dict)):
        if key not in info: bad(key, 'is missing')
        if not isinstance(info[key], kind): bad(key, f"is not {_KINDS[kind]}")
    t = info.get('threshold')
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1: bad('threshold', f"is not a probability (got {t!r})")
    stats = info['stats']
    if len(stats) != 2 or any(not isinstance(c, list) or len(c) != IMAGE_SHAPE[2] or
                              not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c) for c in stats):
        bad('stats', f"is not [means, stds] of {IMAGE_SHAPE[2]} numbers each")
    for key in ('fit_seconds', 'images_seen'):
        if isinstance(info.get(key), bool) or not isinstance(info.get(key), (int, float)): bad(key, 'is not a number')
    return info


def _differences(old, new):
    diff = sorted(k for k in new['config'] if old.get('config', {}).get(k) != new['config'][k])
    if old.get('data_key') != new['data_key']: diff.append('data')
    return diff


def claim_run(out, run):
    """Writes `config.json` if `out` has none, or checks that the one there is this run's.

    Created exclusively (a hard link of a complete file), so of two processes that start different
    configs in one folder at the same moment, one is refused."""
    path = Path(out)/RUN_FILE
    if not path.exists(): create_exclusive(path, json.dumps(run, indent=1))
    old = read_json(path, 'run config')
    if old.get('run_id') != run['run_id']:
        diff = _differences(old, run)
        raise TheraError(f"holds a run with another config ({', '.join(diff) or 'versions'} differ): use another output folder", out)
    return old


def run_data(run_info, data=None):
    "The dataset to read names and images from: `data`, else the one the run was trained on if it is still there."
    source = data or run_info.get('data')
    return source if source is not None and Path(source).exists() else None


def fold_dir(out, k):
    "The folder of fold `k` in run folder `out`."
    return Path(out)/f"fold{k}"


def fold_done(folder, rid):
    "The fold's `fold.json` if it finished under run id `rid` and its files are intact, else None."
    path = Path(folder)/FOLD_FILE
    if not path.exists(): return None
    try: info = read_json(path, 'fold file')
    except TheraError: return None
    files = info.get('files') or {}
    if info.get('run_id') != rid or not isinstance(files, dict) or set(files) != set(FOLD_FILES): return None
    ok = all((Path(folder)/n).exists() and file_hash(Path(folder)/n) == h for n, h in files.items())
    return check_fold_info(info, path) if ok else None


def finished_folds(out, run):
    "{k: fold info} of the run's finished folds."
    found = {}
    for k in range(run['config']['folds']):
        info = fold_done(fold_dir(out, k), run['run_id'])
        if info is not None: found[k] = info
    return found


@contextmanager
def fold_lock(out, k):
    """Holds fold `k` of a run for this process: another process (here or on another machine sharing the folder)
    that asks for the same fold is refused with who holds it, instead of both training it."""
    folder = fold_dir(out, k)
    folder.mkdir(exist_ok=True)
    lock, holder = FileLock(folder/'.lock'), folder/'.holder'
    try: lock.acquire(timeout=0)
    except Timeout:
        who = _holder(holder)
        raise TheraError(f"fold {k} is being trained by {who}; wait for it, or train another fold", folder) from None
    try:
        holder.write_text(f"{socket.gethostname()} pid {os.getpid()}\n")
        clean_stale_temps(folder)
        yield folder
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _holder(path, wait_s=3.0):
    "Who holds a fold lock, from its holder file; a holder that took the lock a moment ago is given `wait_s` to write it."
    import time
    deadline = time.time() + wait_s
    while True:
        try:
            text = path.read_text().strip()
            if text: return text
        except OSError: pass
        if time.time() > deadline: return 'another process'
        time.sleep(0.05)


def write_oof(path, rows, labels, probs, probs_tta):
    "The fold's out-of-fold predictions: row, label, plain and TTA probability (floats written to round-trip)."
    frame = pd.DataFrame(dict(row=np.asarray(rows), label=np.asarray(labels), prob=probs, prob_tta=probs_tta))
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format='%.9g'))


def read_oof(out, folds):
    "The out-of-fold predictions of the given finished folds, one frame with a `fold` column."
    frames = [pd.read_csv(fold_dir(out, k)/'oof.csv').assign(fold=k) for k in folds]
    return pd.concat(frames, ignore_index=True)
