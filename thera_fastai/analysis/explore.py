"""A first look at the exercise: counts, class balance, sizes, pixel statistics and a grid of samples."""
import numpy as np

from ..config import COMMAND_DEFAULTS as _C
from ..data.cache import cached_images
from ..data.loaders import STATS_IMAGES, image_stats
from ..errors import TheraError
from .plots import pyplot, save_figure
from ..data.source import open_dataset

__all__ = ['dataset_table', 'sample_grid', 'explore_dataset', 'label_conflicts']



def _stats_scope(n, sample=STATS_IMAGES):
    "What the pixel statistics are computed over (`image_stats` reads at most `sample` random rows)."
    return f" ({sample:,} random images)" if n > sample else f" (all {n:,} images)"


def dataset_table(ds, images):
    "A plain-text table of counts, class balance, image size and per-channel pixel statistics."
    counts = np.bincount(ds.labels, minlength=2)
    mean, std = image_stats(images)
    rows = [('train images', f"{len(ds.train)}"), ('val images', f"{len(ds.val) if ds.val else 0}"),
            ('class 0 (occluded)', f"{counts[0]} ({counts[0] / counts.sum():.1%})"),
            ('class 1 (clean)', f"{counts[1]} ({counts[1] / counts.sum():.1%})"),
            ('image size', f"{images.shape[2]}x{images.shape[1]} {images.shape[3]} channels, all checked at decode"),
            ('pixel mean R,G,B', ', '.join(f"{v:.3f}" for v in mean) + _stats_scope(len(images))),
            ('pixel std R,G,B', ', '.join(f"{v:.3f}" for v in std))]
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f"{k:<{width}}  {v}" for k, v in rows)


def sample_grid(images, labels, path, n=_C['explore_n'], seed=_C['seed'], title=None, cols=8):
    "Saves a PNG of `n` random images per class, labelled, class 0 above class 1, in rows of at most `cols`."
    plt = pyplot()
    rng = np.random.default_rng(seed)
    cols = min(n, cols)
    per_class = -(-n // cols)
    fig, axes = plt.subplots(2 * per_class, cols, figsize=(1.3 * cols, 1.6 * 2 * per_class), squeeze=False)
    for ax in axes.ravel(): ax.set_xticks([]); ax.set_yticks([]); ax.set_frame_on(False)
    for c in (0, 1):
        rows = np.flatnonzero(labels == c)
        for j, r in enumerate(np.sort(rng.choice(rows, min(n, len(rows)), replace=False))):
            ax = axes[c * per_class + j // cols, j % cols]
            ax.imshow(images[r]); ax.set_title(f"#{r + 1}", fontsize=7); ax.set_frame_on(True)
        axes[c * per_class, 0].set_ylabel(f"class {c}", fontsize=9)
    fig.suptitle(title or "Random training images per class (class 0: occluded, above; class 1: clean, below)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def explore_dataset(data, out, n=_C['explore_n'], cache=None, seed=_C['seed']):
    "Opens and checks the dataset, decodes it, writes the sample grid to `out`; returns the table."
    if not isinstance(n, int) or n < 1: raise TheraError(f"must be at least 1 (got {n!r})", param='n')
    ds = open_dataset(data)
    images = cached_images(ds.train, cache)
    sample_grid(images, ds.labels, out, n, seed)
    return dataset_table(ds, images) + f"\nsample grid: {out}"


def label_conflicts(images, labels):
    "Groups of byte-identical images, as (rows, labels) pairs, whose labels disagree: suspects of label noise."
    from ..files import short_hash
    groups = {}
    for i in range(len(images)): groups.setdefault(short_hash(images[i].tobytes()), []).append(i)
    dups = [rows for rows in groups.values() if len(rows) > 1]
    return [(rows, [int(labels[r]) for r in rows]) for rows in dups if len({int(labels[r]) for r in rows}) > 1], len(dups)
