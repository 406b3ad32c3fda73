"""The library API that the commands and notebooks share: fit, predict, report, explore."""
from dataclasses import fields
from pathlib import Path

from .config import FitConfig, Runtime
from .errors import TheraError
from .inference import TTA_SEED
from .config import N_BOOT

__all__ = ['fit', 'predict', 'report', 'explore', 'compare', 'audit', 'make_config', 'default_out']


def make_config(**config):
    "A `FitConfig` from keyword arguments; an unknown name is one `TheraError` listing the known ones."
    known = [f.name for f in fields(FitConfig)]
    for k in config:
        if k not in known: raise TheraError(f"is not a fit parameter (known: {', '.join(known)})", param=k)
    return FitConfig(**config)


def default_out(arch):
    "Where a run of `arch` goes when no folder is given: runs/<arch>."
    return Path('runs')/arch


def fit(data,  # The exercise zip or its extracted folder
        out=None,  # Run folder (default: runs/<arch>)
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
    from .cv import cross_validate
    cfg = make_config(**config)
    runtime = Runtime(device=device, precision=precision, threads=threads)
    return cross_validate(data, out or default_out(cfg.arch), cfg, runtime, only_fold=fold, cache=cache, bars=bars, log=log, cbs=cbs)


def predict(models,  # A thera-fit run folder
            data,  # The dataset (its val_img/), its zip, or any folder of JPEGs
            tta:int=None,  # TTA passes per model (0: none; default: the run's own, which its thresholds were picked with)
            device:str='auto',  # auto, cpu or cuda
            partial:bool=False,  # Vote over the finished folds when some are missing
            cache=None,  # Folder of the decoded image cache
            seed:int=TTA_SEED,  # Seed of the TTA augmentation: the same seed gives the same labels
            bars:bool=False,  # Progress bars
           ):  # One row per image: image, prob_fold<k>, vote_fold<k>, mean_prob, label (file-name order)
    "Each fold model predicts with TTA at its own threshold and the folds vote."
    from .cache import cached_images
    from .ensemble import load_fold_models, predict_folds, votes_frame
    from .progress import labelled_bar
    from .source import open_images
    if tta is not None and (not isinstance(tta, int) or tta < 0): raise TheraError(f"must be 0 or more (got {tta!r})", param='tta')
    Runtime(device=device)
    fold_models, run = load_fold_models(models, device, partial)
    source = open_images(data)
    images = cached_images(source, cache, progress=labelled_bar('decode') if bars else None)
    tta = run['config']['tta'] if tta is None else tta
    probs, votes = predict_folds(fold_models, images, tta, labelled_bar('models') if bars else None, seed)
    frame = votes_frame(source.names, fold_models, probs, votes)
    frame.attrs.update(tta=tta, n_models=len(fold_models), source=source.display())
    return frame


def report(run):  # A thera-fit run folder
    "Gathers a run's finished folds into report.json, report.md and its PNGs; returns the summary."
    from .report import write_run_report
    return write_run_report(run)


def explore(data,  # The exercise zip or its extracted folder
            out='explore.png',  # PNG grid of sample images per class
            n:int=8,  # Images per class in the grid
            cache=None,  # Folder of the decoded image cache
            seed:int=0,  # Seed of the sample shown
           ) -> str:  # The table of counts, class balance, sizes and pixel statistics
    "Counts, class balance, image sizes and pixel statistics, and a PNG grid of samples per class."
    from .explore import explore_dataset
    return explore_dataset(data, out, n, cache, seed)


def compare(runs,  # Run folders of thera-fit
            out='.',  # Folder for compare.md, compare.csv and compare.png (and shared_errors.csv and its grids)
            target:float=None,  # Also the minutes each run's first fold took to first reach this HTER
            data=None,  # The dataset for image names and grids (default: the first run's own)
            n:int=32,  # Rows per label in the grids of errors every run makes (0: none)
            cache=None,  # Folder for the decoded image cache
            fold:int=None,  # Compare this fold of every run alone (e.g. 0), so runs with different numbers of finished folds score the same rows
            n_boot:int=N_BOOT,  # Resamples of the paired bootstrap interval of each run's HTER difference from the first run's (0: none)
           ):
    """Runs side by side (arch, stem, recipe, parameters, GFLOP/image, minutes, pooled HTER, AUC); writes the table and
    plot. With two runs or more, also where their errors overlap, their blend, and the rows every run gets wrong."""
    from .comparison import write_comparison
    return write_comparison(runs, out, target, data, n, cache, fold, n_boot)


def audit(run,  # A thera-fit run folder
          out=None,  # Folder for label_issues.csv, audit.md, audit.json and the grids (default: `run`/audit)
          data=None,  # The exercise zip or folder, for names and grids (default: the run's own)
          n:int=16,  # Suspects per given label in the grids (0: none)
          cache=None,  # Folder of the decoded image cache
          device:str='auto',  # auto, cpu or cuda, for the saliency maps
         ) -> tuple:  # (audit summary, label issues frame)
    "cleanlab's label audit of a run's pooled out-of-fold predictions; writes its files under `out`."
    from .label_audit import write_audit
    from .config import Runtime
    return write_audit(run, out, data, n, cache, Runtime(device=device).resolved()['device'])
