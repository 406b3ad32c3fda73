"""The library API that the commands and notebooks share: fit, predict, report, explore."""
import re
from dataclasses import fields
from pathlib import Path

from .config import AUTO_WIDTHS, COMMAND_DEFAULTS as _C, N_BOOT, TTA_SEED, FitConfig, Runtime
from .errors import TheraError

__all__ = ['fit', 'predict', 'report', 'explore', 'compare', 'audit', 'make_config', 'default_out']


def make_config(**config):
    "A `FitConfig` from keyword arguments; an unknown name is one `TheraError` listing the known ones."
    known = [f.name for f in fields(FitConfig)]
    for k in config:
        if k not in known: raise TheraError(f"is not a fit parameter (known: {', '.join(known)})", param=k)
    return FitConfig(**config)


def default_out(cfg: FitConfig, root='runs', longest=48):
    """Where a run of `cfg` goes when no folder is given: runs/<arch> for the arch's recipe as it is, and for a variant
    runs/<arch>-<what differs from the recipe> (runs/airbench-epochs5-lr0.001), or runs/<arch>-<config hash> when that
    name would be longer than `longest`. Each idea gets its own folder, and `thera-compare runs/*` compares them all."""
    from .files import short_hash
    base = FitConfig(arch=cfg.arch, method=cfg.method).to_dict()  # the method's own lr, wd and bs are its recipe
    diff = {k: v for k, v in cfg.to_dict().items() if base.get(k) != v and k != 'hyp' and v not in (None, AUTO_WIDTHS)}  # (a budget's epochs: None)
    diff.update({k: Path(diff[k]).stem for k in ('exclude', 'distill', 'pseudo') if k in diff})  # the file or teacher, not its folders
    diff.update({k: v for k, v in (cfg.hyp or {}).items() if (base['hyp'] or {}).get(k) != v})
    if not diff and cfg.method == 'adam': return Path(root)/cfg.arch
    if cfg.budget: diff['budget'] = f"{cfg.budget / 60:g}m"
    words = ([f"method{cfg.method}"] if cfg.method != 'adam' else []) + [f"{k}{_word(v)}" for k, v in diff.items()]
    name = re.sub(r'[^A-Za-z0-9.+-]+', '', '-'.join([cfg.arch, *words]))
    return Path(root)/(name if len(name) <= longest else f"{cfg.arch}-{short_hash(cfg.to_dict())[:8]}")


def _word(v):
    if isinstance(v, bool): return str(v).lower()
    if isinstance(v, float): return f"{v:g}"
    if isinstance(v, (list, tuple)): return 'x'.join(map(_word, v))
    return str(v).replace('_', '')


def fit(data,  # The exercise zip or its extracted folder
        out=None,  # Run folder (default: `default_out`: runs/<arch>, or runs/<arch>-<what differs from its recipe>)
        fold:int=None,  # Train only this fold (0-based; default: every unfinished fold)
        cache=None,  # Folder of the decoded image cache (default: $THERA_CACHE or ~/.cache/thera_fastai)
        device:str='auto',  # auto (a GPU where one is visible), cpu or cuda
        precision:str='auto',  # bf16 (autocast), fp32, or auto: bf16 where the device runs it natively
        threads:int=None,  # Torch and decode threads (default: all cores)
        bars:bool=False,  # Progress bars (else one line per epoch)
        log=print,  # Where progress lines go
        cbs=None,  # Extra fastai callbacks for every fold's fit (they are not part of the run's identity)
        **config,  # `FitConfig` fields: arch, folds, epochs, bs, lr, seed, balance, tta, sample, ...
       ) -> dict:  # The run's report: per-fold and pooled out-of-fold metrics
    "Stratified K-fold training of one recipe; writes fold weights, out-of-fold predictions and the report under `out`."
    from .train.cv import cross_validate
    cfg = make_config(**config)
    runtime = Runtime(device=device, precision=precision, threads=threads)
    if out is None:
        out = default_out(cfg)
        log(f"run folder: {out} (named after what differs from the {cfg.arch} recipe; --out to choose another)")
    return cross_validate(data, out, cfg, runtime, only_fold=fold, cache=cache, bars=bars, log=log, cbs=cbs)


def predict(models,  # A thera-fit run folder
            data,  # The dataset (its val_img/), its zip, or any folder of JPEGs
            tta:int=None,  # TTA passes per model (0: none; default: the run's own, which its thresholds were picked with)
            device:str='auto',  # auto, cpu or cuda
            partial:bool=False,  # Vote over the finished folds when some are missing
            cache=None,  # Folder of the decoded image cache
            seed:int=TTA_SEED,  # Seed of the TTA augmentation: the same seed gives the same labels
            bars:bool=False,  # Progress bars
            first:int=None,  # Only the first N images in file-name order (a quick look; their TTA draws differ from a full run's)
            vote:str=_C['vote'],  # How the folds decide: soft (the mean probability at the mean of their thresholds) or hard (the majority of their votes)
           ):  # One row per image: image, prob_fold<k>, vote_fold<k>, mean_prob, label (file-name order)
    "Each fold model predicts with TTA at its own threshold and the folds vote, soft or hard."
    from .data.cache import cached_images
    from .infer.ensemble import check_vote_rule, load_fold_models, predict_folds, votes_frame
    from .progress import labelled_bar
    from .data.source import open_images
    if tta is not None and (not isinstance(tta, int) or tta < 0): raise TheraError(f"must be 0 or more (got {tta!r})", param='tta')
    if first is not None and (not isinstance(first, int) or first < 1): raise TheraError(f"must be at least 1 (got {first!r})", param='first')
    check_vote_rule(vote)
    Runtime(device=device)
    fold_models, run = load_fold_models(models, device, partial)
    source = open_images(data)
    images = cached_images(source, cache, progress=labelled_bar('decode') if bars else None)
    tta = run['config']['tta'] if tta is None else tta
    names = source.names[:first] if first else source.names
    probs, votes = predict_folds(fold_models, images[:len(names)], tta, labelled_bar('models') if bars else None, seed)
    frame = votes_frame(names, fold_models, probs, votes, vote)
    frame.attrs.update(tta=tta, n_models=len(fold_models), source=source.display(), vote=vote)
    return frame


def report(run):  # A thera-fit run folder
    "Gathers a run's finished folds into report.json, report.md and its PNGs; returns the summary."
    from .analysis.report import write_run_report
    return write_run_report(run)


def explore(data,  # The exercise zip or its extracted folder
            out=_C['explore_out'],  # PNG grid of sample images per class
            n:int=_C['explore_n'],  # Images per class in the grid
            cache=None,  # Folder of the decoded image cache
            seed:int=_C['seed'],  # Seed of the sample shown
           ) -> str:  # The table of counts, class balance, sizes and pixel statistics
    "Counts, class balance, image sizes and pixel statistics, and a PNG grid of samples per class."
    from .analysis.explore import explore_dataset
    return explore_dataset(data, out, n, cache, seed)


def compare_folder(runs):
    "Where a comparison of `runs` is written by default: `compare/` beside the first run (runs/compare for runs/*)."
    return Path(runs[0]).resolve().parent/'compare'


def compare(runs,  # Run folders of thera-fit
            out=None,  # Folder for compare.md, compare.csv, compare.png, paired.csv, shared_errors.csv (default: compare/ beside the first run)
            target:float=None,  # Also the minutes each run's first fold took to first reach this HTER
            data=None,  # The dataset for image names and grids (default: the first run's own)
            n:int=_C['compare_n'],  # Rows per label in the grids of errors every run makes (0: none)
            cache=None,  # Folder for the decoded image cache
            fold:int=None,  # Compare this fold of every run alone (e.g. 0), so runs with different numbers of finished folds score the same rows
            n_boot:int=N_BOOT,  # Resamples of the paired bootstrap interval of each run's HTER difference from the first run's (0: none)
           ):
    """Runs side by side (arch, stem, recipe, parameters, GFLOP/image, minutes, pooled HTER, AUC); writes the table and
    plot. With two runs or more, also where their errors overlap, their blend, and the rows every run gets wrong."""
    from .analysis.comparison import write_comparison
    if not runs: raise TheraError("needs at least one run folder")
    return write_comparison(runs, out or compare_folder(runs), target, data, n, cache, fold, n_boot)


def audit(run,  # A thera-fit run folder
          out=None,  # Folder for label_issues.csv, audit.md, audit.json and the grids (default: `run`/audit)
          data=None,  # The exercise zip or folder, for names and grids (default: the run's own)
          n:int=_C['audit_n'],  # Suspects per given label in the grids (0: none)
          cache=None,  # Folder of the decoded image cache
          device:str=_C['audit_device'],  # auto, cpu or cuda, for the saliency maps
         ) -> tuple:  # (audit summary, label issues frame)
    "cleanlab's label audit of a run's pooled out-of-fold predictions; writes its files under `out`."
    from .analysis.label_audit import write_audit
    from .config import Runtime
    return write_audit(run, out, data, n, cache, Runtime(device=device).resolved()['device'])
