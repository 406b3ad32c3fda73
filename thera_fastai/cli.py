"""Command-line entry points: thera-fit, thera-predict, thera-explore."""
import os, sys, time, warnings
from contextlib import contextmanager
from pathlib import Path

from fastcore.script import call_parse, store_true

from .errors import EXIT_BAD_INPUT, TheraError

__all__ = ['fit', 'predict', 'explore']


@contextmanager
def _friendly(prog):
    "Turns `TheraError` into one line on stderr with exit code 2, and Ctrl-C into a clean stop (exit 130)."
    try: yield
    except TheraError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt as e:
        detail = str(e) or "Finished work is kept; rerun the same command to resume."
        print(f"\n{prog}: interrupted: {detail}", file=sys.stderr)
        sys.exit(130)


def _quiet_warnings():
    # fastai and torch warn on import about deprecations that are not the user's concern.
    for cat in (DeprecationWarning, FutureWarning, UserWarning): warnings.filterwarnings('ignore', category=cat)


def _require(**args):
    missing = [k for k, v in args.items() if v is None]
    if missing: raise TheraError(f"--{missing[0]} is required")


def _check_writable_file(path):
    path = Path(path)
    folder = path.parent if str(path.parent) else Path('.')
    if not folder.is_dir(): raise TheraError("output folder does not exist", folder)
    if not os.access(folder, os.W_OK): raise TheraError("output folder is not writable", folder)
    if path.is_dir(): raise TheraError("output path is a folder, expected a file", path)
    return path


@call_parse
def fit(
    data:str = None, # The exercise zip or its extracted folder
    arch:str = 'simple', # Model: simple or resnet18
    folds:int = 5, # Number of stratified folds
    epochs:int = None, # Epochs per fold (default: the arch's recipe, 13 for simple: 30 min per fold on 2 bf16 cores)
    out:str = 'runs/simple', # Output folder for models and reports
    fold:int = None, # Train only this fold (0-based)
    sample:int = None, # Stratified subset of N images, for smoke runs
    seed:int = 42, # Seed for folds, sampling and initialization
    bs:int = None, # Batch size (default: the arch's recipe)
    lr:float = None, # Peak learning rate (default: the arch's recipe)
    tta:int = 4, # TTA passes for out-of-fold predictions (0 = none)
    no_weighted:store_true = False, # Plain shuffling instead of the inverse-frequency weighted DataLoader (= --balance none)
    balance:str = 'sampler', # Class balance: sampler (weighted DataLoader), loss (class-weighted BCE) or none
    no_flip:store_true = False, # No horizontal flip in augmentation
    schedule:str = 'one_cycle', # LR schedule: one_cycle, step (the seed's StepLR, x0.1 every 10 epochs) or constant
    label_smoothing:float = 0.0, # BCE label smoothing eps: targets eps/2 and 1-eps/2
    stem:str = 'nopool', # ResNet-18 stem for 64x64: nopool, default or conv3
    pretrained:store_true = False, # Start the ResNet from timm's pretrained weights (needs them locally)
    weights:str = None, # Local resnet18 state-dict file to start from
    precision:str = 'auto', # bf16 (autocast), fp32, or auto: bf16 where the CPU/GPU runs it natively
    cache:str = None, # Folder for the decoded image cache
    quiet:store_true = False, # No progress bars, log lines only
):
    "Stratified K-fold training of one arch; writes fold learners, out-of-fold predictions and a CV report."
    with _friendly('thera-fit'):
        _require(data=data)
        _quiet_warnings()
        from .cv import cross_validate
        from .training import FitConfig
        cfg = FitConfig(arch=arch, folds=folds, epochs=epochs, bs=bs, lr=lr, seed=seed, balance='none' if no_weighted else balance,
                        flip=not no_flip, schedule=schedule, label_smoothing=label_smoothing, tta=tta, sample=sample,
                        stem=stem, pretrained=pretrained or weights is not None, weights=weights, precision=precision)
        summary = cross_validate(data, out, cfg, only_fold=fold, cache_dir=cache, quiet=quiet)
        if 'pooled' in summary:
            p = summary['pooled']
            print(f"pooled out-of-fold HTER {p['at_05']['hter']:.4f} at 0.5, {p['cross_fitted']['hter']:.4f} at a "
                  f"cross-fitted threshold; best threshold {p['best_threshold']:.4f}; report: {Path(out)/'report.md'}")


@call_parse
def predict(
    models:str = None, # A thera-fit output folder
    data:str = None, # The dataset (uses val_img/), its zip, or any folder of JPEGs
    out:str = 'label_val.txt', # The label file to write
    tta:int = None, # TTA passes per model (0 = none; default: the run's own, which its thresholds were picked with)
    votes:str = None, # CSV of each model's probability and vote (default: next to --out)
    cache:str = None, # Folder for the decoded image cache
    quiet:store_true = False, # No progress bars
):
    "Each fold learner predicts with TTA at its own threshold; the folds vote; writes one 0/1 line per image."
    with _friendly('thera-predict'):
        _require(models=models, data=data)
        _quiet_warnings()
        from .cache import cached_images
        from .cv import labelled_bar
        from .ensemble import load_fold_models, predict_folds, vote, write_labels, write_votes
        from .source import open_images
        t0 = time.time()
        out = _check_writable_file(out)
        votes = _check_writable_file(votes or out.with_name(out.stem + '_votes.csv'))
        source = open_images(data)
        images = cached_images(source, cache, progress=None if quiet else labelled_bar('decode'))
        fold_models, run = load_fold_models(models, images.shape[1:])
        tta = run['config']['tta'] if tta is None else tta
        probs, fold_votes = predict_folds(fold_models, images, tta, progress=None if quiet else labelled_bar('models'))
        final = vote(fold_votes, probs, [m.threshold for m in fold_models])
        write_votes(votes, source.names, probs, fold_votes, final, [m.fold for m in fold_models])
        write_labels(out, final, len(source))
        agree = (fold_votes == fold_votes[0]).all(0).mean()
        print(f"{len(source)} images, {len(fold_models)} fold models, TTA {tta}: class 0 {1 - final.mean():.2%}, "
              f"all folds agree on {agree:.2%}; {time.time() - t0:.0f} s. Wrote {out} and {votes}")


@call_parse
def explore(
    data:str = None, # The exercise zip or its extracted folder
    out:str = 'explore.png', # PNG grid of sample images per class
    n:int = 8, # Images per class in the grid
    cache:str = None, # Folder for the decoded image cache
    seed:int = 0, # Seed for the sample shown
):
    "Counts, class balance, image sizes and pixel statistics, and a PNG grid of samples per class."
    with _friendly('thera-explore'):
        _require(data=data)
        _quiet_warnings()
        from .explore import explore_dataset
        print(explore_dataset(data, _check_writable_file(out), n, cache, seed))

