"""`--widths auto` (the default of a budgeted fit): the airbench net sized to a time budget on the machine that starts the run. Each width of
`WIDTHS_LADDER`, widest first, is timed on the first fold's own rows by the budget's probe; the first whose plan holds
`AUTO_MIN_EPOCHS` is taken, else the narrowest. The choice becomes the run's config (and so its identity): a run
resumed or extended in the same folder keeps the widths it started with, whatever the machine's speed is then."""
import tempfile, time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import AUTO_MIN_EPOCHS, AUTO_WIDTHS, WIDTHS_LADDER, FitConfig
from ..errors import TheraError
from ..files import read_json
from ..data.folds import fold_train_rows
from ..data.loaders import image_stats
from ..data.rows import prepare_data
from ..runs import RUN_FILE
from .budget import measure_speed, plan_steps
from .distributed import world_size

__all__ = ['size_for_budget', 'sized_widths', 'budget_epochs', 'kept_config']


def kept_config(cfg: FitConfig, out):
    """The config of the run already in `out` where it is `cfg` in all but its widths (None where there is none): a
    resumed or extended run keeps the net it started with. `out` None: no run."""
    if out is None: return None
    path = Path(out)/RUN_FILE
    if not path.exists(): return None
    saved = read_json(path, 'run config').get('config')
    if not isinstance(saved, dict): return None
    kept = FitConfig.from_dict(saved, path)  # (fields added since it was written take their defaults)
    return kept if {**kept.to_dict(), 'widths': None} == {**cfg.to_dict(), 'widths': None} else None


def budget_epochs(cfg: FitConfig, images, labels, train_idx, valid_idx, runtime):
    """The epochs `cfg`'s budget holds for `cfg`'s model on this machine: its fold's steps and evaluation timed by the
    budget's probe and planned as the fit plans them (0 where the budget holds no step)."""
    from .learner import config_dataloaders, thera_learner
    from .training import ends_on_validated_weights
    dls = config_dataloaders(cfg, images, labels, train_idx, valid_idx, image_stats(images, train_idx), runtime['device'])
    with tempfile.TemporaryDirectory() as scratch:  # the probe times a checkpoint's write: nothing lands in the run folder
        learn = thera_learner(dls, cfg, scratch, np.asarray(labels)[train_idx], runtime)
        speed = measure_speed(learn)
    try: plan = plan_steps(cfg.budget, 0.0, speed, len(dls.train), len(valid_idx), cfg.tta, ends_on_validated_weights(cfg))
    except TheraError: return 0.0
    return plan['steps'] / plan['steps_per_epoch']


def size_for_budget(cfg: FitConfig, out, images, labels, train_idx, valid_idx, runtime, log=print):
    """`cfg` with concrete widths where it asks for `auto`: those of the run already in `out` (if any), else the widest of
    `WIDTHS_LADDER` whose budget holds `AUTO_MIN_EPOCHS` on this machine, else the narrowest. Any other `cfg` as it is."""
    if cfg.widths != AUTO_WIDTHS: return cfg
    kept = kept_config(cfg, out)
    if kept is not None:
        log(f"widths auto: {_text(kept.widths or WIDTHS_LADDER[0])}, as the run in {out} started"); return kept
    if world_size() > 1:  # ranks timing apart could pick different nets
        log(f"widths auto: {_text(WIDTHS_LADDER[0])}, the arch's: a data-parallel fit is not timed (--widths to choose)")
        return replace(cfg, widths=None)
    t0, held = time.time(), []
    for widths in WIDTHS_LADDER:
        sized = replace(cfg, widths=widths)
        held.append((widths, budget_epochs(sized, images, labels, train_idx, valid_idx, runtime)))
        if held[-1][1] >= AUTO_MIN_EPOCHS: break
    chosen = held[-1][0]
    timed = ', '.join(f"{_text(w)} {e:.1f}" for w, e in held)
    log(f"widths auto: {_text(chosen)}, the widest whose {cfg.budget / 60:.3g} min hold {AUTO_MIN_EPOCHS:g} epochs here, else the narrowest "
        f"(epochs: {timed}; timed in {time.time() - t0:.0f} s)")
    return replace(cfg, widths=chosen)


def _text(widths): return '/'.join(map(str, widths))


def sized_widths(data, cfg: FitConfig, runtime, cache=None, log=print):
    """The widths `auto` gives `cfg` on this machine (`runtime`: a `Runtime`), timed on the first fold's training rows
    as `thera-fit` times them, without training: for a study whose trials share one net, sized once."""
    rt = runtime.resolved()
    runtime.apply()
    ds, images, rows, excluded, _ = prepare_data(data, cfg, cache, None, runtime.threads, log)
    sized = size_for_budget(cfg, None, images, ds.labels,
                            *fold_train_rows(rows, ds.labels, cfg.folds, cfg.seed, 0, excluded), rt, log)
    return tuple(sized.widths or WIDTHS_LADDER[0])
