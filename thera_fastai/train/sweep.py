"""Recipe sweeps on Optuna: any number of workers, on one machine or many, share one study through its storage.

Each trial is an ordinary run folder (`thera-fit`'s format), scored by its pooled out-of-fold HTER at the
cross-fitted threshold, reported after every fold so a pruner stops a bad trial early. Under a budget every trial's
folds get the same time, so the study ranks recipes by what they reach in it."""
import json
from dataclasses import fields
from pathlib import Path

from filelock import FileLock

from ..config import AUTO_WIDTHS, COMMAND_DEFAULTS as _C
from ..api import make_config
from ..errors import TheraError

__all__ = ['DEFAULT_SPACE', 'STEP_FIELDS', 'read_space', 'fit_space', 'open_study', 'sweep', 'leaderboard']

# Searched values are dicts ({"low", "high", "log"} or {"choices"}, optionally "when" another value holds);
# anything else is fixed for every trial. Epochs and sample keep a trial to minutes on a 2-core CPU.
DEFAULT_SPACE = {
    'folds': 5, 'sample': 20000, 'epochs': {'low': 2, 'high': 6},
    'lr': {'low': 1e-3, 'high': 1e-2, 'log': True},
    'bs': {'choices': [64, 128, 256]},
    'balance': {'choices': ['sampler', 'loss']},
    'label_smoothing': {'low': 0.0, 'high': 0.2},
    'flip': {'choices': [True, False]},
    'max_rotate': {'low': 0.0, 'high': 15.0},
    'max_shift_px': {'low': 0, 'high': 4},
    'arch': {'choices': ['simple', 'airbench', 'resnet18', 'regnetx_002']},
    'stem': {'choices': ['default', 'nopool'], 'when': {'arch': 'resnet18'}},
    'resize_from': {'choices': [None, 32]},
}
STEP_FIELDS = ('epochs', 'resize_from')  # what a budgeted fit sets itself or refuses (FitConfig's check): left out of a budgeted space


def read_space(path=None):
    "The search space of a JSON or YAML file (default: `DEFAULT_SPACE`), checked."
    if path is None: return dict(DEFAULT_SPACE)
    path = Path(path)
    try: text = path.read_text()
    except OSError as e: raise TheraError(f"cannot read the search space ({e.strerror})", path) from None
    try:
        import yaml
        space = yaml.safe_load(text) if path.suffix in ('.yaml', '.yml') else json.loads(text)
    except Exception as e: raise TheraError(f"search space is not valid {path.suffix[1:].upper() or 'JSON'} ({' '.join(str(e).split())})", path) from None
    if not isinstance(space, dict) or not space: raise TheraError("search space must be a non-empty mapping of parameter to range", path)
    for name, spec in space.items(): _check_spec(name, spec, path)
    return space


def _check_spec(name, spec, path):
    "One entry of a space file: a FitConfig field, fixed or searched over a numeric range or a list of choices."
    from ..config import FitConfig
    known = [f.name for f in fields(FitConfig)]
    if name not in known: raise TheraError(f"{name!r} is not a fit parameter (known: {', '.join(known)})", path)
    if not isinstance(spec, dict): return
    if 'choices' in spec:
        if not isinstance(spec['choices'], list) or not spec['choices']: raise TheraError(f"{name}: choices must be a non-empty list", path)
    elif not {'low', 'high'} <= set(spec): raise TheraError(f"{name}: a searched value needs low and high, or choices", path)
    elif not all(isinstance(spec[k], (int, float)) and not isinstance(spec[k], bool) for k in ('low', 'high')) or spec['low'] > spec['high']:
        raise TheraError(f"{name}: low and high must be numbers with low <= high (got {spec['low']!r}, {spec['high']!r})", path)


def fit_space(space, n_labelled, log=print, budget=None):
    """`space` for data of `n_labelled` images: a fixed `sample` at or above it becomes every image (the default
    space's 20,000 on a smaller dataset), said in one line; `budget` (seconds per fold) replaces the space's own, and
    under either the fields a budget sets (`STEP_FIELDS`) leave the space, each said in one line; the fixed values are
    checked as a config."""
    if isinstance(space.get('sample'), int) and space['sample'] >= n_labelled:
        log(f"sample {space['sample']:,} is not below the {n_labelled:,} labelled images: every trial uses all of them")
        space = {**space, 'sample': None}
    if budget is not None: space = {**space, 'budget': budget}
    if space.get('budget') is not None:
        per_fold = 'a searched budget' if isinstance(space['budget'], dict) else f"a budget of {space['budget'] / 60:g} min per fold"
        for name in (n for n in STEP_FIELDS if n in space):
            log(f"{name}: {per_fold} sets the steps, so {name} leaves the search space")
            space = {k: v for k, v in space.items() if k != name}
    make_config(**{k: v for k, v in space.items() if not isinstance(v, dict)})
    return space


def _suggest(trial, space):
    "One trial's FitConfig values: fixed ones as they are, searched ones drawn (those whose `when` holds)."
    values = {k: v for k, v in space.items() if not isinstance(v, dict)}
    for name, spec in space.items():
        if not isinstance(spec, dict): continue
        if any(values.get(k) != v for k, v in spec.get('when', {}).items()): continue
        if 'choices' in spec: values[name] = trial.suggest_categorical(name, spec['choices'])
        elif isinstance(spec['low'], int) and isinstance(spec['high'], int):
            values[name] = trial.suggest_int(name, spec['low'], spec['high'], log=spec.get('log', False))
        else: values[name] = trial.suggest_float(name, float(spec['low']), float(spec['high']), log=spec.get('log', False))
    return values


def _storage(storage, out):
    "A SQLite file in `out` by default; a path ending in .log/.journal is an Optuna journal file (no server); else a URL."
    import optuna
    if storage is None: return f"sqlite:///{Path(out).resolve()/'study.db'}"
    if str(storage).endswith(('.log', '.journal')):
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(str(storage)))
    if '://' not in str(storage): raise TheraError(f"is neither a database URL nor a .log/.journal file: {storage}", param='storage')
    return optuna.storages.RDBStorage(storage) if str(storage).startswith(('postgresql', 'mysql')) else storage


def open_study(out, study=_C['study'], storage=None):
    "The study named `study` in `storage` (created if new), minimizing HTER, with a median pruner over folds."
    import optuna
    made = not Path(out).exists()
    Path(out).mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(study_name=study, storage=_storage(storage, out), direction='minimize', load_if_exists=True,
                                   pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    except Exception as e:  # the drivers' many error types (SQLAlchemy's, the file system's) all mean the same here
        if made and not any(Path(out).iterdir()): Path(out).rmdir()  # a refused sweep leaves no folder behind
        if isinstance(e, TheraError): raise
        reason = ' '.join(str(e).split('(Background on this error')[0].split())
        raise TheraError(f"cannot open the study storage {storage} ({type(e).__name__}: {reason})", param='storage') from None


def _sized_key(budget): return f"widths_at_{budget:g}s"


def _shared_widths(trial, data, out, cfg, fit_kwargs, log=print):
    """The net every airbench trial at `cfg`'s budget trains: the study's, else sized now by this trial and kept in the
    study. A lock in the study folder makes workers that share it wait for the first sizing instead of each timing its own."""
    from ..config import Runtime
    from .sizing import sized_widths
    key = _sized_key(cfg.budget)
    with FileLock(Path(out)/f".{key}.lock"):
        widths = trial.study.user_attrs.get(key)  # read from the storage: another worker may have sized it while this one waited
        if widths is not None: return widths
        runtime = Runtime(**{k: fit_kwargs[k] for k in ('device', 'precision', 'threads') if fit_kwargs.get(k) is not None})
        widths = list(sized_widths(data, cfg, runtime, fit_kwargs.get('cache'), lambda *_: None))
        trial.study.set_user_attr(key, widths)
    log(f"widths auto: {'/'.join(map(str, widths))}, sized by trial {trial.number} for {cfg.budget / 60:g} min a fold; "
        f"every airbench trial at this budget trains this net (widths in the space to search it)")
    return widths


def _objective(data, out, space, fit_kwargs, prune_above, log=print):
    import optuna
    from .. import api

    def objective(trial):
        values = _suggest(trial, space)
        cfg = make_config(**values)
        if cfg.sized_to_budget and cfg.widths == AUTO_WIDTHS:  # one net for every trial at this budget: see `sweep`
            values['widths'] = _shared_widths(trial, data, out, cfg, fit_kwargs, log); cfg = make_config(**values)
        run = Path(out)/f"trial-{trial.number:04d}"
        trial.set_user_attr('run', str(run)); trial.set_user_attr('budget', cfg.budget)
        hter = None
        for k in range(cfg.folds):
            summary = api.fit(data, run, fold=k, **fit_kwargs, **values)
            hter = summary['pooled']['cross_fitted']['hter']  # over the folds so far
            trial.set_user_attr('minutes', summary['fit_seconds'] / 60)
            trial.report(hter, k)
            if (prune_above is not None and hter > prune_above) or trial.should_prune(): raise optuna.TrialPruned()
        return hter
    return objective


def sweep(data,  # The exercise zip or its extracted folder
          out,  # Folder of the study: one run folder per trial, and the SQLite storage by default
          trials:int=_C['trials'],  # Trials this worker runs (other workers add theirs)
          space=None,  # Search space: a dict, or a JSON/YAML file (default: DEFAULT_SPACE)
          study:str=_C['study'],  # Study name within the storage
          storage=None,  # Database URL, or a .log/.journal file on a shared filesystem (default: SQLite in `out`)
          prune_above:float=None,  # Stop a trial whose HTER after a fold is above this, besides the median pruner
          budget:float=None,  # Seconds each fold of every trial may take (replaces the space's budget; epochs then leave it)
          log=print,  # Where progress lines go
          **fit_kwargs,  # Passed to `fit`: cache, device, precision, threads
         ):
    """Runs `trials` trials of the study in this process; returns the study. Start the same call on other machines to add workers.
    Under a budget, the airbench net's `widths='auto'` is sized once, by the first trial at that budget, before it
    trains, and kept in the study: every trial trains the same net rather than one sized on its own timing, which would
    change the net between trials with the machine's load. Workers that share `out` wait for that sizing (a lock there)."""
    if not isinstance(trials, int) or trials < 1: raise TheraError(f"must be at least 1 (got {trials!r})", param='trials')
    from ..data.source import open_dataset
    space = fit_space(space if isinstance(space, dict) else read_space(space), len(open_dataset(data).labels), log, budget)
    st = open_study(out, study, storage)
    st.optimize(_objective(data, out, space, dict(fit_kwargs, log=lambda *_: None), prune_above, log), n_trials=trials,
                catch=(), callbacks=[lambda s, t: log(_trial_line(t))])
    return st


def _trial_line(t):
    "A finished trial in one line: complete with its HTER, or pruned with the fold it stopped after and the HTER there."
    last = max(t.intermediate_values, default=None)
    if t.state.name == 'PRUNED' and last is not None: value = f"pruned after fold {last} at HTER {t.intermediate_values[last]:.4f}"
    else: value = t.state.name.lower() + (f", HTER {t.value:.4f}" if t.value is not None else '')
    return f"trial {t.number}: {value}; {json.dumps(t.params)}"


def leaderboard(st, n=10):
    """The best finished trials with their fitting minutes (summed over folds) and, with two or more, the parameter
    importances (Optuna's fANOVA), as text. A budget the trials share is said once; differing budgets are a column."""
    import optuna
    done = sorted((t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in st.trials)
    budgets = {t.user_attrs.get('budget', '?') for t in st.trials if 'run' in t.user_attrs}  # '?': a trial from before it was recorded
    shared = f"; every fold at a budget of {next(iter(budgets)) / 60:g} min" if len(budgets) == 1 and budgets.isdisjoint((None, '?')) else ''
    per_trial = len(budgets) > 1
    sized = ''.join(f"; airbench widths {'/'.join(map(str, w))} sized once for {k[len('widths_at_'):-1]} s a fold"
                    for k, w in sorted(st.user_attrs.items()) if k.startswith('widths_at_'))
    lines = [f"study {st.study_name}: {len(done)} complete, {pruned} pruned, {len(st.trials)} in all{shared}{sized}",
             "| trial | pooled HTER, cross-fitted | fit minutes |" + (" budget per fold |" if per_trial else '') + " params | run |",
             "|---|---|---|" + ("---|" if per_trial else '') + "---|---|"]
    lines += [f"| {t.number} | {t.value:.4f} | {_minutes(t.user_attrs.get('minutes'))} |"
              + (f" {_budget(t.user_attrs)} |" if per_trial else '')
              + f" {json.dumps(t.params)} | {t.user_attrs.get('run', '')} |" for t in done[:n]]
    if len(done) >= 2:
        try: imp = optuna.importance.get_param_importances(st)
        except (ValueError, RuntimeError) as e: imp = {}; lines.append(f"importances: not computable ({e})")
        if imp: lines.append("importances: " + ', '.join(f"{k} {v:.2f}" for k, v in imp.items()))
    return '\n'.join(lines)


def _minutes(value): return '-' if value is None else f"{value:.1f}"


def _budget(attrs):
    if 'budget' not in attrs: return '?'
    return 'none' if attrs['budget'] is None else f"{attrs['budget'] / 60:g} min"
