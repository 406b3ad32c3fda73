"""Command-line entry points: thera-fit, thera-predict, thera-report, thera-explore; thin layers over `thera_fastai.api`.

Defaults come from `FitConfig` and `Runtime` (declared once, in config.py); library errors name
parameters, and are shown here with their flags."""
import logging, os, shlex, sys, time, warnings
from contextlib import contextmanager
from pathlib import Path

from typing import Annotated

from fastcore.script import call_parse, store_true

from .config import AUTO_WIDTHS, COMMAND_DEFAULTS as _C, N_BOOT, TTA_SEED, FitConfig, Runtime
from .errors import EXIT_BAD_INPUT, TheraError
from .progress import plural, show_bars

__all__ = ['fit', 'predict', 'report', 'explore', 'sweep', 'export', 'demo', 'compare', 'audit']

# Third-party modules whose deprecation notices are not the user's concern; the package's own warnings always show.
_NOISY = ('fastai', 'fastcore', 'fasttransform', 'torch', 'timm', 'numpy', 'sklearn', 'plum', 'IPython', 'matplotlib')


@contextmanager
def _friendly(prog):
    "Turns `TheraError` into one line on stderr with exit code 2, and Ctrl-C into a clean stop (exit 130)."
    try: yield
    except TheraError as e:
        print(f"{prog}: error: {e.cli_message()}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt as e:
        detail = str(e) or "Finished work is kept; rerun the same command to resume."
        print(f"\n{prog}: interrupted: {detail}", file=sys.stderr)
        sys.exit(130)


def _quiet_third_party():
    for mod in _NOISY: warnings.filterwarnings('ignore', module=mod)
    if not logging.getLogger('thera_fastai').handlers:  # the package's own notices (a compilation starting) on stderr
        handler = logging.StreamHandler(sys.stderr); handler.setFormatter(logging.Formatter('%(message)s'))
        logging.getLogger('thera_fastai').addHandler(handler); logging.getLogger('thera_fastai').setLevel(logging.INFO)
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)  # "No CUDA runtime is found" on CPU machines


def _require(**args):
    missing = [k for k, v in args.items() if v is None]
    if missing: raise TheraError("is required", param=missing[0])


def _writable_file(path, param):
    path = Path(path)
    folder = path.parent if str(path.parent) else Path('.')
    if not folder.is_dir(): raise TheraError("output folder does not exist", folder)
    if not os.access(folder, os.W_OK): raise TheraError("output folder is not writable", folder)
    if path.is_dir(): raise TheraError(f"is a folder, expected a file: {path}", param=param)
    return path


def parse_duration(text):
    "Seconds in '10m', '90s', '1.5h' or a plain number of seconds; None stays None."
    if text is None: return None
    units = {'s': 1, 'm': 60, 'h': 3600}
    t = str(text).strip().lower()
    try: return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError: raise TheraError(f"is not a duration like 10m, 90s or 1h (got {text!r})", param='budget') from None


def parse_widths(text, arch='simple'):
    """'32/128/128' (airbench's blocks, one width each: [32, 128, 128]) or '16/32,32/64,64' (simple's: a block per '/',
    its convs by ','); 'auto' (airbench under a budget: sized on this machine when the run starts) and None stay as they are."""
    if text is None: return None
    if str(text).strip().lower() == AUTO_WIDTHS: return AUTO_WIDTHS
    try: blocks = [[int(w) for w in block.split(',')] for block in str(text).split('/')]
    except ValueError: raise TheraError(f"{text!r} is not widths like 32/128/128 or 16/32,32/64,64", param='widths') from None
    return [b[0] for b in blocks] if arch == 'airbench' and all(len(b) == 1 for b in blocks) else blocks


def parse_hyp(text):
    "'k=v,k=v' as a dict of numbers and booleans (0/1, true/false); None stays None."
    if text is None: return None
    out = {}
    for part in filter(None, str(text).split(',')):
        k, sep, v = part.partition('=')
        if not sep: raise TheraError(f"{part!r} is not k=v", param='hyp')
        v = v.strip().lower()
        out[k.strip()] = {'true': True, 'false': False}.get(v) if v in ('true', 'false') else _number(v, k)
    return out


def _number(v, k):
    try: return int(v) if v.lstrip('-').isdigit() else float(v)
    except ValueError: raise TheraError(f"{k}={v!r} is not a number or true/false", param='hyp') from None


_D = FitConfig  # defaults below are FitConfig's and Runtime's own


def _version_text():
    from . import __version__
    return f"%(prog)s {__version__}"


_VERSION = Annotated[str, "Print the package version and exit", {'action': 'version', 'version': _version_text()}]


@call_parse
def fit(
    data:str = None, # The exercise zip or its extracted folder
    arch:str = _D.arch, # Model: airbench (default), simple, resnet18, or any timm model name (adapted to 64x64 by --stem)
    method:str = _D.method, # Training method: adam (fastai's Adam, one-cycle) or airbench (airbench94's SGD method; --arch airbench)
    budget:str = None, # Time each fold may take, evaluation included (e.g. 10m, 90s, 1h): sets the steps instead of --epochs
    hyp:str = None, # airbench method settings to change, as k=v,k=v (e.g. lookahead=false,bias_scaler=32; see config.AIRBENCH)
    folds:int = _D.folds, # Number of stratified folds
    epochs:int = _D.epochs, # Epochs per fold (default: the arch's recipe, config.RECIPES)
    out:str = None, # Run folder (default: runs/<arch>, or runs/<arch>-<what differs from its recipe> for a variant)
    fold:int = None, # Train only this fold (0-based)
    sample:int = _D.sample, # Stratified subset of N images, for quick runs
    seed:int = _D.seed, # Seed for folds and sampling, and for initialization and TTA unless --train-seed is set
    train_seed:int = _D.train_seed, # Seed of the training alone (initialization, batch order, augmentation, TTA draws), the folds kept: a rerun that shows the training's own noise
    bs:int = _D.bs, # Batch size (default: the arch's recipe)
    lr:float = _D.lr, # Peak learning rate (default: the arch's recipe, config.RECIPES; the airbench method's is per 1024 examples, config.AIRBENCH)
    wd:float = _D.wd, # Weight decay (default: the method's, config.METHOD_DEFAULTS and config.AIRBENCH)
    tta:int = _D.tta, # TTA passes for out-of-fold predictions (0 = none)
    balance:str = _D.balance, # Class balance: sampler (weighted DataLoader), loss (class-weighted BCE) or none
    balance_strength:float = _D.balance_strength, # How far --balance evens the classes: weights ~ class frequency^-s, in (0, 1] (default 1: fully; 0.5: halfway)
    no_flip:store_true = not _D.flip, # No horizontal flip in augmentation
    max_rotate:float = _D.max_rotate, # Largest rotation of the augmentation, degrees
    max_shift_px:int = _D.max_shift_px, # Largest shift of the augmentation, pixels
    schedule:str = _D.schedule, # LR schedule: one_cycle, step (x0.1 every 10 epochs) or constant
    label_smoothing:float = _D.label_smoothing, # BCE label smoothing eps: targets eps/2 and 1-eps/2 (default: the arch's recipe, config.RECIPES)
    head:str = _D.head, # Pooling of the airbench net's last map: max (airbench's global max-pool, default), concat (max and mean) or grid (4x4 max-pools, flattened)
    stem:str = _D.stem, # Stem for 64x64 of timm models: x2 (default), x4 or default; resnet18: nopool (default), default or conv3
    pretrained:store_true = _D.pretrained, # Start a timm model from timm's pretrained weights (needs them locally)
    weights:str = _D.weights, # Local state-dict file of the timm model to start from
    resize_from:int = _D.resize_from, # Progressive resizing: the first half of the epochs at this many pixels (e.g. 32)
    widths:str = AUTO_WIDTHS, # Conv widths, a block per '/': airbench 32/128/128 or simple 16/32,32/64,64/128,128; auto: under --budget the airbench net sized to it (config.WIDTHS_LADDER), else the arch's
    resolution:int = _D.resolution, # Pixels the model works at, a divisor of 64 (e.g. 32: a quarter of the FLOPs; default: 64)
    ema:float = _D.ema, # EMA of the weights with this decay (e.g. 0.999), used for validation and kept at the end
    bootstrap:float = _D.bootstrap, # Soft bootstrapping against label noise: BCE target = b*label + (1-b)*own probability
    mixup:float = _D.mixup, # MixUp: each training image and its target blended with another of its batch, weight ~ Beta(a, a) (e.g. 0.4)
    exclude:str = _D.exclude, # File of rows or image names to leave out of training (e.g. thera-audit's label_issues.csv)
    distill:str = _D.distill, # Teacher: a run folder (same folds and seed), whose fold model's probabilities become soft targets, or a CSV of `row`,`prob` for training rows only
    distill_weight:float = _D.distill_weight, # Weight of the teacher's probability in the soft target
    pseudo:str = _D.pseudo, # Teacher run folder (same folds and seed): its fold model labels the val_img/ images, which join training
    pseudo_confidence:float = _D.pseudo_confidence, # Keep a val_img/ image when the teacher's max(p, 1-p) is at least this
    pseudo_targets:str = _D.pseudo_targets, # A kept image's target: hard (the teacher's call at 0.5) or soft (its probability)
    device:str = Runtime.device, # auto (a GPU where one is visible), cpu or cuda
    precision:str = Runtime.precision, # bf16, fp16 (CUDA), fp32, or auto: bf16 where native, else fp16 on a GPU, else fp32
    threads:int = Runtime.threads, # Torch and decode threads (default: all cores)
    cache:str = None, # Folder for the decoded image cache
    quiet:store_true = False, # No progress bars (they are off anyway when the output is not a terminal)
    version:_VERSION = None, # Print the package version and exit
):
    "Stratified K-fold training of one recipe; writes fold weights, out-of-fold predictions and a CV report."
    with _friendly('thera-fit'):
        _require(data=data)
        _quiet_third_party()
        from .api import fit as fit_run
        config = dict(arch=arch, method=method, budget=parse_duration(budget), hyp=parse_hyp(hyp), folds=folds, epochs=epochs, sample=sample, seed=seed, train_seed=train_seed, bs=bs, lr=lr, wd=wd, tta=tta,
                      balance=balance, balance_strength=balance_strength, flip=not no_flip, max_rotate=max_rotate, max_shift_px=max_shift_px, schedule=schedule,
                      label_smoothing=label_smoothing, head=head, stem=stem, pretrained=pretrained, weights=weights, resize_from=resize_from,
                      widths=parse_widths(widths, arch), resolution=resolution, ema=ema, bootstrap=bootstrap, mixup=mixup, exclude=exclude, distill=distill, distill_weight=distill_weight,
                      pseudo=pseudo, pseudo_confidence=pseudo_confidence, pseudo_targets=pseudo_targets)
        from .api import default_out, make_config
        from .train.distributed import is_main
        out = Path(out) if out else None
        summary = fit_run(data, out, fold=fold, cache=cache, device=device, precision=precision, threads=threads,
                          bars=show_bars(quiet), log=lambda line: print(line, flush=True), **config)
        if is_main(): _print_summary(summary, out or default_out(make_config(**config)))


def _print_summary(summary, out):
    if 'pooled' not in summary: return
    from .metrics import chance_warning
    p, n = summary['pooled'], len(summary['folds'])
    print(f"pooled out-of-fold HTER over {plural(n, 'fold')}: {p['at_05']['hter']:.4f} at 0.5, {p['cross_fitted']['hter']:.4f} "
          f"at a cross-fitted threshold; best threshold {p['best_threshold']:.4f}; report: {Path(out)/'report.md'}")
    if warning := chance_warning(p['at_05']['auc'], f"{out}"): print(f"warning: {warning}")


@call_parse
def predict(
    models:str = None, # A thera-fit run folder
    data:str = None, # The dataset (uses val_img/), its zip, or any folder of JPEGs
    out:str = _C['labels'], # The label file to write
    tta:int = None, # TTA passes per model (0 = none; default: the run's own, which its thresholds were picked with)
    votes:str = None, # CSV of each model's probability and vote (default: next to --out)
    partial:store_true = False, # Vote over the finished folds when some are missing
    vote:str = _C['vote'], # How the folds decide: soft (the mean probability at the mean of their thresholds) or hard (the majority of their votes)
    seed:int = TTA_SEED, # Seed of the TTA augmentation (the same seed writes the same labels)
    device:str = Runtime.device, # auto, cpu or cuda
    threads:int = Runtime.threads, # Torch and decode threads (default: all cores)
    cache:str = None, # Folder for the decoded image cache
    quiet:store_true = False, # No progress bars
    version:_VERSION = None, # Print the package version and exit
):
    "Each fold model predicts with TTA at its own threshold; the folds vote (soft by default); writes one 0/1 line per image."
    with _friendly('thera-predict'):
        _require(models=models, data=data)
        _quiet_third_party()
        Runtime(threads=threads).apply()
        from .api import predict as predict_run
        from .infer.ensemble import write_labels, write_votes
        t0 = time.time()
        out = _writable_file(out, 'out')
        votes = _writable_file(votes or out.with_name(out.stem + '_votes.csv'), 'votes')
        frame = predict_run(models, data, tta=tta, device=device, partial=partial, cache=cache, seed=seed, bars=show_bars(quiet), vote=vote)
        write_votes(votes, frame)
        write_labels(out, frame['label'].to_numpy(), len(frame))
        cols = [c for c in frame if c.startswith('vote_fold')]
        agree = (frame[cols].nunique(axis=1) == 1).mean()
        print(f"{plural(len(frame), 'image')}, {plural(frame.attrs['n_models'], 'fold model')}, TTA {frame.attrs['tta']}, {vote} vote: "
              f"class 0 {1 - frame['label'].mean():.2%}, all folds agree on {agree:.2%}; {time.time() - t0:.0f} s. "
              f"Wrote {out} and {votes}")


@call_parse(pos=['run'])
def report(
    run:str = None, # A thera-fit run folder (or --models RUN, as the other commands take it)
    models:str = None, # The same run folder, as a flag
    version:_VERSION = None, # Print the package version and exit
):
    "Gathers the finished folds of a run (trained by one process or many) into report.json, report.md and its PNGs."
    with _friendly('thera-report'):
        run = run or models
        _require(models=run)
        _quiet_third_party()
        from .api import report as report_run
        summary = report_run(run)
        state = 'complete' if summary['complete'] else f"partial: {len(summary['folds'])} of {summary['config']['folds']} folds finished"
        print(f"{run}: {state}")
        _print_summary(summary, run)


@call_parse
def explore(
    data:str = None, # The exercise zip or its extracted folder
    out:str = _C['explore_out'], # PNG grid of sample images per class
    n:int = _C['explore_n'], # Images per class in the grid
    cache:str = None, # Folder for the decoded image cache
    seed:int = _C['seed'], # Seed for the sample shown
    version:_VERSION = None, # Print the package version and exit
):
    "Counts, class balance, image sizes and pixel statistics, and a PNG grid of samples per class."
    with _friendly('thera-explore'):
        _require(data=data)
        _quiet_third_party()
        from .api import explore as explore_data
        print(explore_data(data, _writable_file(out, 'out'), n, cache, seed))


@call_parse
def sweep(
    data:str = None, # The exercise zip or its extracted folder
    out:str = _C['sweep_out'], # Study folder: a run folder per trial, and the SQLite storage by default
    trials:int = _C['trials'], # Trials this worker runs; start the same command elsewhere to add workers
    space:str = None, # Search space, a JSON or YAML file (default: thera_fastai.train.sweep.DEFAULT_SPACE)
    study:str = _C['study'], # Study name within the storage
    storage:str = None, # Database URL (sqlite:///..., postgresql://...) or a .log/.journal file on a shared filesystem
    prune_above:float = None, # Stop a trial whose HTER after a fold is above this (the median pruner runs too)
    budget:str = None, # Time each fold of every trial may take (e.g. 10m): trials compared at equal time, epochs left out of the space
    show:store_true = False, # Print the leaderboard and parameter importances, run nothing
    device:str = Runtime.device, # auto, cpu or cuda
    precision:str = Runtime.precision, # bf16, fp32 or auto
    threads:int = Runtime.threads, # Torch and decode threads
    cache:str = None, # Folder for the decoded image cache
    version:_VERSION = None, # Print the package version and exit
):
    "Optuna sweep over thera-fit recipes; every trial is a run folder, scored by pooled out-of-fold HTER (cross-fitted)."
    with _friendly('thera-sweep'):
        _quiet_third_party()
        try: from .train.sweep import leaderboard, open_study, sweep as run_sweep
        except ImportError: raise TheraError("needs Optuna: pip install 'thera_fastai[sweep]'") from None
        if show: print(leaderboard(open_study(out, study, storage))); return
        _require(data=data)
        st = run_sweep(data, out, trials, space, study, storage, prune_above, parse_duration(budget), device=device,
                       precision=precision, threads=threads, cache=cache)
        print(leaderboard(st))


@call_parse
def export(
    models:str = None, # A thera-fit run folder
    out:str = _C['export_out'], # Folder for fold<k>.onnx, ensemble.json and predict.py
    partial:store_true = False, # Export the finished folds when some are missing
    vote:str = _C['vote'], # The rule the exported predictor votes by: soft (the mean probability at the mean threshold) or hard (the majority)
    version:_VERSION = None, # Print the package version and exit
):
    "Each fold to ONNX (uint8 images in, probability out) with its threshold and the vote rule, and a predictor without torch."
    with _friendly('thera-export'):
        _require(models=models)
        _quiet_third_party()
        try: import onnx  # noqa: F401  (torch's exporter needs it)
        except ImportError: raise TheraError("needs onnx: pip install 'thera_fastai[export]'") from None
        from .infer.export import export_run
        manifest = export_run(models, out, partial, vote)
        q = shlex.quote  # the command is copied into a shell: paths with spaces stay one argument
        print(f"{plural(len(manifest['folds']), 'fold model')} exported to {out}: python {q(str(Path(out)/'predict.py'))} {q(str(out))} IMAGES "
              f"--out label_val.txt (needs onnxruntime, numpy, and simplejpeg or Pillow)")


@call_parse
def demo(
    models:str = None, # A thera-fit run folder
    data:str = None, # A dataset or folder of JPEGs whose first images are offered as examples
    host:str = _C['host'], # Address to bind (127.0.0.1: this machine only)
    port:int = _C['port'], # Port of the page
    device:str = Runtime.device, # auto, cpu or cuda
    threads:int = Runtime.threads, # Torch threads (default: all cores)
    version:_VERSION = None, # Print the package version and exit
):
    "A local page to upload or pick a face and see each fold's probability and vote, and the ensemble's label."
    with _friendly('thera-demo'):
        _require(models=models)
        _quiet_third_party()
        Runtime(threads=threads).apply()
        os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
        try: import gradio  # noqa: F401
        except ImportError: raise TheraError("needs Gradio: pip install 'thera_fastai[demo]'") from None
        from .infer.demo import serve
        print(f"thera-demo: serving {models} on http://{host}:{port} (Ctrl-C stops)", flush=True)
        serve(models, data, host, port, device)


@call_parse
def compare(
    *runs:str, # Run folders of thera-fit
    out:str = None, # Folder for compare.md, compare.csv, compare.png, paired.csv, shared_errors.csv (default: compare/ beside the first run)
    target:float = None, # Also report the minutes each run's first fold took to first reach this HTER (e.g. 0.08)
    data:str = None, # The dataset for image names and grids (default: the first run's own)
    n:int = _C['compare_n'], # Rows per label in the grids of errors every run makes (0: none)
    cache:str = None, # Folder for the decoded image cache
    fold:int = None, # Compare this fold of every run alone (e.g. 0), so runs with different numbers of finished folds score the same rows
    boot:int = N_BOOT, # Resamples of the paired bootstrap interval of each run's HTER difference from the first run's (0: none)
    version:_VERSION = None, # Print the package version and exit
):
    """Runs side by side: arch, stem, recipe, cost, minutes and pooled out-of-fold HTER; a Markdown table, a CSV and a
    plot. With two runs or more: how many errors they share, their blend, the rows every run gets wrong, and whether
    each run's HTER differs from the first run's by more than noise (a paired bootstrap interval)."""
    with _friendly('thera-compare'):
        if not runs: raise TheraError("needs at least one run folder")
        _quiet_third_party()
        from .api import compare as compare_runs, compare_folder
        out = out or compare_folder(runs)
        compare_runs(runs, out, target, data, n, cache, fold, boot)
        text = (Path(out)/'compare.md').read_text()
        print(text)
        print(f"Wrote compare.md, compare.csv, compare.png{' and shared_errors.csv' * ('## Errors in common' in text)} in {out}")


@call_parse
def audit(
    models:str = None, # A thera-fit run folder (its pooled out-of-fold predictions are audited)
    out:str = None, # Folder for label_issues.csv, audit.md, audit.json and the suspect grids (default: <models>/audit)
    data:str = None, # The exercise zip or folder, for image names and grids (default: the one the run was trained on)
    n:int = _C['audit_n'], # Suspects per given label in the grids (0: no grids)
    cache:str = None, # Folder for the decoded image cache
    device:str = _C['audit_device'], # auto, cpu or cuda (for the saliency maps)
    threads:int = Runtime.threads, # Torch and decode threads (default: all cores)
    version:_VERSION = None, # Print the package version and exit
):
    "Label audit of a run with cleanlab: flagged labels, noise rates, the HTER floor they imply, suspect grids with Grad-CAM."
    with _friendly('thera-audit'):
        _require(models=models)
        if n < 0: raise TheraError(f"must be at least 0 (got {n})", param='n')
        _quiet_third_party()
        Runtime(threads=threads).apply()
        from .api import audit as audit_run
        from .analysis.label_audit import folds_of
        a, _ = audit_run(models, out, data=data, n=n, cache=cache, device=device)
        where = Path(out or Path(models)/'audit')
        nz = a['noise']
        print(f"{plural(a['n_flagged'], 'label')} flagged of {a['n_rows']:,} out-of-fold rows from {folds_of(a)} ({a['flagged_by_label'][0]} labelled 0, "
              f"{a['flagged_by_label'][1]} labelled 1); P(true 1 | given 0) {nz['p_true1_given0']:.4f}, "
              f"P(true 0 | given 1) {nz['p_true0_given1']:.4f}; implied HTER floor {nz['hter_floor']:.4f}; "
              f"run HTER {a['hter_all']:.4f} on all rows, {a['hter_unflagged']:.4f} on rows not flagged. Wrote {where/'audit.md'}")
