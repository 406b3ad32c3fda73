"""Runs side by side: one table (Markdown and CSV) of what each run is, what it cost and how it scores, and a
plot of HTER against training minutes."""
from pathlib import Path

import numpy as np
import pandas as pd

from .agreement import agreement_markdown, error_agreement, shared_error_grids, write_shared_errors
from ..config import AUTO_WIDTHS, COMMAND_DEFAULTS as _C, FitConfig
from ..errors import TheraError
from ..files import atomic_write, make_folder
from ..metrics import chance_warning
from .paired import N_BOOT, paired_differences
from .report import run_summary
from ..runs import fold_dir, open_run, read_history, run_data

__all__ = ['compare_runs', 'comparison_markdown', 'write_comparison', 'minutes_to_reach', 'recipe_text', 'run_footing', 'footing_markdown']

_SHOWN_ELSEWHERE = {'arch', 'stem', 'epochs', 'folds', 'sample', 'seed', 'image_size'}  # tta is not: under a budget it also sets the steps
_PATHS = {'exclude', 'distill', 'pseudo', 'weights'}  # shown by their file or folder name: a run folder's path says little


def recipe_text(config):
    """The config fields that differ from `FitConfig`'s defaults for its arch and method, as 'k=v' text ('default' if
    none; a file or teacher by its name); of the airbench method's settings, those that differ from `AIRBENCH`; a budget in minutes."""
    base = FitConfig(arch=config['arch'], method=config.get('method', 'adam')).to_dict()
    diff = [f"{k}={Path(v).name if k in _PATHS else v}" for k, v in config.items()
            if k not in _SHOWN_ELSEWHERE and k in base and base[k] != v and k not in ('hyp', 'budget') and v != AUTO_WIDTHS]
    if config.get('method', 'adam') != 'adam': diff.insert(0, f"method={config['method']}")
    diff += [f"{k}={v}" for k, v in (config.get('hyp') or {}).items() if base['hyp'].get(k) != v]
    if config.get('budget'): diff.append(f"budget={config['budget'] / 60:g}m")
    return ', '.join(diff) or 'default'


def _seconds(text):
    "fastai's epoch time ('mm:ss' or 'h:mm:ss') in seconds."
    secs = 0
    for part in str(text).split(':'): secs = secs * 60 + int(part)
    return secs


def minutes_to_reach(history, target, metric='hter'):
    "Training minutes until the first epoch whose validation `metric` (at 0.5, no TTA) is at most `target`; NaN if never."
    minutes = history['time'].map(_seconds).cumsum() / 60
    hit = np.flatnonzero(history[metric].to_numpy() <= target)
    return float(minutes.iloc[hit[0]]) if len(hit) else float('nan')


def _only(fold): return None if fold is None else {int(fold)}


def compare_runs(runs, target=None, summaries=None, fold=None):
    """One row per run folder: arch, stem, recipe, epochs, parameters, training GFLOP per image, fitting minutes,
    images seen, pooled out-of-fold HTER at 0.5 and at the cross-fitted threshold, AUC; with `target`, the
    minutes the first finished fold took to first reach that HTER. `fold`: that fold of every run alone.
    `summaries`: the runs' `run_summary` results, where already read."""
    rows = []
    for run, (s, _) in zip(runs, summaries or [run_summary(r, only=_only(fold)) for r in runs]):
        cfg, folds = s['config'], s['folds']
        profile = next((f['profile'] for f in folds.values() if f.get('profile')), {})
        p = s.get('pooled')
        epochs = cfg['epochs'] if cfg.get('epochs') is not None else np.mean([f.get('epochs_run') or np.nan for f in folds.values()] or [np.nan])
        row = dict(run=str(run), arch=cfg['arch'], stem=cfg.get('stem') or '', recipe=recipe_text(cfg), epochs=epochs,
                   folds=f"{len(folds)}/{cfg['folds']}", params_m=profile.get('params', np.nan) / 1e6,
                   train_gflop=profile.get('train_gflop', np.nan), minutes=s['fit_seconds'] / 60,
                   images_seen=sum(f['images_seen'] for f in folds.values()),
                   hter_05=p['at_05']['hter'] if p else np.nan, hter_cross=p['cross_fitted']['hter'] if p else np.nan,
                   auc=p['at_05']['auc'] if p else np.nan)
        if target is not None:
            first = min(folds, key=int) if folds else None
            row[f'min_to_{target:g}'] = minutes_to_reach(read_history(fold_dir(run, int(first))/'history.csv'), target) if first is not None else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_markdown(frame):
    "The comparison as a Markdown table, HTERs to 4 places."
    fmt = {'epochs': '{:.3g}', 'params_m': '{:.2f}', 'train_gflop': '{:.3f}', 'minutes': '{:.1f}', 'hter_05': '{:.4f}', 'hter_cross': '{:.4f}', 'auc': '{:.4f}',
           'images_seen': '{:,}'}
    def cell(c, v):
        if isinstance(v, float) and np.isnan(v): return '-'
        return fmt.get(c, '{:.1f}' if c.startswith('min_to') else '{}').format(v)
    names = {'params_m': 'params (M)', 'train_gflop': 'train GFLOP/img', 'hter_05': 'HTER at 0.5', 'hter_cross': 'HTER cross-fitted',
             'images_seen': 'images seen'}
    head = '| ' + ' | '.join(names.get(c, c.replace('_', ' ')) for c in frame.columns) + ' |'
    lines = [head, '|' + '---|' * len(frame.columns)]
    lines += ['| ' + ' | '.join(cell(c, v) for c, v in zip(frame.columns, r)) + ' |' for r in frame.itertuples(index=False)]
    return '\n'.join(lines) + '\n'


# What a run's minutes (and under a budget its steps, so its HTER) depend on besides its recipe: name, label
_FOOTING = (('budget', 'budget per fold'), ('device', 'device'), ('precision', 'precision'), ('threads', 'threads'),
            ('world_size', 'processes'), ('cpu', 'CPU'))


def run_footing(summary):
    """The terms a run trained on: its budget per fold ('none' where its epochs are set), and of its folds' runtimes the
    device, precision, threads, processes and CPU (values its folds differ in joined by ' / '; one an older fold did
    not record is left out, not guessed)."""
    cfg, folds = summary['config'], summary['folds'].values()
    footing = dict(budget=f"{cfg['budget'] / 60:g} min" if cfg.get('budget') else 'none')
    for key, _ in _FOOTING[1:]:
        seen = sorted({str(f['runtime'][key]) for f in folds if f.get('runtime', {}).get(key) is not None})
        if seen: footing[key] = ' / '.join(seen)
    return footing


def footing_markdown(names, footings):
    "A paragraph and a list naming each term (`run_footing`'s) the runs differ in, with which run had which; '' when they agree."
    parts = []
    for key, label in _FOOTING:
        groups = {}
        for name, footing in zip(names, footings):
            if key in footing: groups.setdefault(footing[key], []).append(name)
        if len(groups) > 1: parts.append(f"- {label}: " + '; '.join(f"{value} ({', '.join(runs)})" for value, runs in groups.items()))
    if not parts: return ''
    return ("\n**Not on equal terms.** Their minutes and images seen differ for these as well as for their recipes, and under "
            "a budget the steps, so the HTER, can too: compare runs with one budget on one machine.\n\n" + '\n'.join(parts) + '\n')


def plot_comparison(frame, path, fold=None):
    "HTER (cross-fitted) against fitting minutes, one labelled point per run (`fold`: the one fold compared)."
    from .plots import pyplot, save_figure
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in frame.itertuples(index=False):
        ax.scatter(r.minutes, r.hter_cross)
        ax.annotate(Path(r.run).name, (r.minutes, r.hter_cross), textcoords='offset points', xytext=(4, 4), fontsize=8)
    scope = ('all finished folds', 'pooled out-of-fold') if fold is None else (f'fold {fold}', f'fold {fold} out-of-fold')
    ax.set(xlabel=f'fitting minutes ({scope[0]})', ylabel=f'{scope[1]} HTER, cross-fitted threshold', title='HTER against training time')
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def paired_markdown(paired):
    """The paired differences as a Markdown section, each run against the baseline, then the blend against the baseline
    and the best run, with the intervals in words: the HTER's, and the AUC's, which reads the ranking over every
    threshold and so shows a difference too small for the HTER of these rows; then what a disagreement of the two means."""
    base = paired['baseline'].iloc[0]
    lines = ["## Differences beyond noise", "",
             f"HTER of each run minus {base}'s on the {paired['n_rows'].iloc[0]:,} rows both scored, thresholds "
             f"cross-fitted; 95% paired bootstrap interval over {paired['n_boot'].iloc[0]:,} resamples of the rows (within each label). "
             "AUC of each run minus the baseline's on the same resamples (positive: it ranks the rows better). "
             f"`blend`: the runs' mean probability, against {base} and against the best run.", "",
             "| run | HTER difference | 95% interval | standard error | verdict | AUC difference [95%] | ranking |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.run if r.baseline == base else f'{r.run} minus {r.baseline}'} | {r.diff:+.4f} | [{r.lo:+.4f}, {r.hi:+.4f}] | "
              f"{r.se:.4f} | {r.verdict} | {r.auc_diff:+.4f} [{r.auc_lo:+.4f}, {r.auc_hi:+.4f}] | {r.ranking} |"
              for r in paired.itertuples()]
    unresolved = [r.run for r in paired.itertuples() if r.verdict == 'within the noise' and r.ranking != 'within the noise']
    if unresolved:
        lines += ["", f"{', '.join(unresolved)}: the AUC difference is beyond the noise and the HTER difference is not. The AUC "
                  "reads every threshold and the HTER one, so the gain may lie away from the threshold used, or be smaller than "
                  "these rows show at one; score more rows (more folds) before changing a default on it."]
    return '\n'.join(lines) + '\n'


def write_comparison(runs, out='.', target=None, data=None, n=_C['compare_n'], cache=None, fold=None, n_boot=N_BOOT):
    """Writes compare.md, compare.csv and compare.png under `out`; with two runs or more that have finished folds, also
    their errors in common (a section of compare.md, shared_errors.csv, and with images, grids of `n` rows per label
    every run gets wrong). `data`: the dataset for names and images (default: the first run's own). `fold`: compare
    that fold of every run alone, so that runs with different numbers of finished folds score the same rows. Runs
    below `config.CHANCE_AUC` are named in a warning and left out of the errors in common and the paired differences.
    `n_boot`: resamples of the paired interval of each run's HTER difference from the first run's, and of the blend's
    from the first and the best run's (paired.csv; 0: none).
    Returns the table."""
    from ..data.cache import cached_images
    from ..data.source import open_dataset
    summaries = [run_summary(run, only=_only(fold)) for run in runs]  # read once for both tables
    if fold is not None and not any(s['folds'] for s, _ in summaries): raise TheraError(f"no run has a finished fold {fold}")
    frame = compare_runs(runs, target, summaries)
    out = make_folder(out, 'output')
    text = comparison_markdown(frame)
    text += footing_markdown([str(r) for r in runs], [run_footing(s) for s, _ in summaries])
    finished = [i for i, (_, oof) in enumerate(summaries) if oof is not None]  # the agreement reads out-of-fold rows
    chance = {i: w for i in finished if (w := chance_warning(summaries[i][0]['pooled']['at_05']['auc'], str(runs[i])))}
    text += ''.join(f"\n**Warning: {w}.**\n" for w in chance.values())
    if chance and len(finished) > 1:
        text += "\nRuns that have not learned are left out of the errors in common and the paired differences: their errors are noise.\n"
    finished = [i for i in finished if i not in chance]
    if len(finished) > 1:
        agreement = error_agreement([runs[i] for i in finished], [summaries[i] for i in finished])
        text += '\n' + agreement_markdown(agreement)
        if n_boot:
            paired = paired_differences(agreement['rows'], agreement['names'], n_boot)
            text += '\n' + paired_markdown(paired)
            atomic_write(out/'paired.csv', lambda tmp: paired.to_csv(tmp, index=False, float_format='%.6g'))
        source = run_data(open_run(runs[finished[0]]), data)
        dataset = open_dataset(source).train if source else None
        shared = write_shared_errors(agreement, out/'shared_errors.csv', dataset.names if dataset else None)
        if n and dataset and len(shared):
            grids = shared_error_grids(shared, cached_images(dataset, cache), out, n)
            text += '\n' + '\n\n'.join(f"![{p.stem}]({p.name})" for p in grids) + '\n'
    atomic_write(out/'compare.md', lambda tmp: tmp.write_text(text))
    atomic_write(out/'compare.csv', lambda tmp: frame.to_csv(tmp, index=False))
    plot_comparison(frame, out/'compare.png', fold)
    return frame
