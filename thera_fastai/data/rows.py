"""The rows a run trains on: the dataset and its decoded images, the stratified sample, the rows a file leaves out of
training, a teacher table's probabilities by row, and a fold's training and held-out rows as the fit made them."""
import io
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import cached_images, source_key
from ..errors import TheraError
from .folds import data_key, fold_train_rows, sample_rows
from ..runs import open_run
from .source import open_dataset

__all__ = ['read_row_list', 'read_teacher_table', 'prepare_data', 'fold_rows']


def read_row_list(path, names):
    """The 0-based label rows a file lists: a CSV with a `row` or `name` column (thera-audit's label_issues.csv),
    or plain text with one row number or image name per line. `names` are the training image names."""
    path = Path(path)
    try: text = path.read_text(encoding='utf-8')
    except OSError as e: raise TheraError(f"cannot read the row list ({e.strerror})", path) from None
    except UnicodeDecodeError as e: raise TheraError(f"the row list is not UTF-8 text (byte {e.start}): expected row numbers or image names", path) from None
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if path.suffix.lower() == '.csv' or (lines and ',' in lines[0]):
        try: frame = pd.read_csv(io.StringIO(text))
        except Exception as e: raise TheraError(f"not a readable CSV ({e})", path) from None
        col = next((c for c in ('row', 'name') if c in frame.columns), None)
        if col is None: raise TheraError("a CSV row list needs a 'row' or 'name' column", path)
        lines = frame[col].astype(str).tolist()
    index, rows = {n: i for i, n in enumerate(names)}, []
    for item in lines:
        if item.isdigit() and int(item) < len(names): rows.append(int(item))
        elif item in index: rows.append(index[item])
        else: raise TheraError(f"{item!r} is neither a row number below {len(names)} nor a training image name", path)
    return np.unique(np.asarray(rows, dtype=np.int64))


def read_teacher_table(path, n_rows):
    """(rows, probabilities) of a teacher table: a CSV with a `row` column (0-based label rows, each once, below
    `n_rows`) and a `prob` column (P(clean face), used as it is: no smoothing is taken out). One clear line otherwise."""
    path = Path(path)
    try: frame = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as e: raise TheraError(f"not a readable CSV teacher table ({e})", path) from None
    if missing := sorted({'row', 'prob'} - set(frame.columns)):
        raise TheraError(f"a teacher table needs 'row' and 'prob' columns (no {', '.join(map(repr, missing))})", path)
    rows, probs = (pd.to_numeric(frame[c], errors='coerce').to_numpy(np.float64) for c in ('row', 'prob'))
    bad = ~np.isfinite(rows) | (rows < 0) | (rows >= n_rows) | (rows != np.round(rows))
    if bad.any(): raise TheraError(f"{frame['row'].astype(str).iloc[bad.argmax()]!r} in column 'row' is not a row number below {n_rows}", path)
    ok = np.isfinite(probs) & (probs >= 0) & (probs <= 1)
    if not ok.all(): raise TheraError(f"{frame['prob'].astype(str).iloc[(~ok).argmax()]!r} in column 'prob' is not a probability in [0, 1]", path)
    rows = rows.astype(np.int64)
    if len(np.unique(rows)) < len(rows): raise TheraError("lists a row twice", path)
    return rows, probs.astype(np.float32)


def prepare_data(data, cfg, cache=None, progress=None, threads=None, log=None):
    """The dataset, its decoded images, the rows `cfg` uses, the rows it leaves out of training (`cfg.exclude`)
    and their data key; checks `cfg` against the data."""
    ds = open_dataset(data, need_val=cfg.pseudo is not None)
    excluded = np.zeros(0, np.int64) if cfg.exclude is None else read_row_list(cfg.exclude, ds.train.names)
    if cfg.distill is not None and not Path(cfg.distill).is_file(): open_run(cfg.distill)  # (a teacher table: checked against the folds, train/cv)
    if cfg.pseudo is not None: open_run(cfg.pseudo)
    images = cached_images(ds.train, cache, n_threads=threads, progress=progress, log=log)
    rows = sample_rows(ds.labels, cfg.sample, cfg.seed)
    return ds, images, rows, excluded, data_key(source_key(ds.train), ds.labels, rows, excluded)


def fold_rows(data, cfg, fold, cache=None):
    "(images, labels, train rows, valid rows) of fold `fold` of `cfg` on `data`, as the fit used them."
    ds, images, rows, excluded, _ = prepare_data(data, cfg, cache)
    return (images, ds.labels, *fold_train_rows(rows, ds.labels, cfg.folds, cfg.seed, fold, excluded))
