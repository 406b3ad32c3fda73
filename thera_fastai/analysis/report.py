"""The report of a run, gathered from the finished folds on disk: report.json for programs, report.md and PNGs for people."""
import json
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..files import write_json, atomic_write
from ..metrics import best_threshold, chance_warning, error_rates
from ..runs import finished_folds, open_run, read_oof

__all__ = ['cross_fit_groups', 'cross_fitted', 'cross_fitted_decisions', 'cross_fitted_hter', 'cv_summary', 'run_summary', 'write_run_report', 'markdown_report']

_COLS = ('hter', 'far', 'frr', 'balanced_acc', 'auc')


def cross_fit_groups(oof):
    "The groups cross-fitting decides apart: the folds, or with one fold its rows' parity (two halves)."
    return oof['fold'].to_numpy() if oof['fold'].nunique() > 1 else oof['row'].to_numpy() % 2


def cross_fitted(probs, labels, groups):
    "Each row's 0/1 decision at the threshold picked on the other groups' rows only."
    cross = np.zeros(len(probs), dtype=bool)
    for g in np.unique(groups):
        mine = groups == g
        cross[mine] = probs[mine] >= best_threshold(probs[~mine], labels[~mine])
    return cross


def cross_fitted_decisions(oof, prob='prob_tta'):
    """Each out-of-fold row's 0/1 decision at the threshold picked on the other folds' rows only; with one fold, its
    rows are split in two halves by row parity, each decided at the other's threshold."""
    return cross_fitted(oof[prob].to_numpy(), oof['label'].to_numpy(), cross_fit_groups(oof))


def cross_fitted_hter(oof, keep=None, prob='prob_tta'):
    "HTER of the cross-fitted decisions on the `keep` rows (a boolean mask; default: all rows)."
    decided, t = cross_fitted_decisions(oof, prob).astype(float), oof['label'].to_numpy()
    if keep is not None: decided, t = decided[keep], t[keep]
    return error_rates(decided, t, 0.5)['hter']


def cv_summary(oof, prob='prob_tta'):
    """Pooled out-of-fold metrics at 0.5 and at the HTER-minimizing threshold.

    `cross_fitted` scores each fold at the threshold picked on the other folds' rows only, the honest
    estimate of what a threshold chosen this way gives on unseen data."""
    p, t = oof[prob].to_numpy(), oof['label'].to_numpy()
    thresh = best_threshold(p, t)
    cross = cross_fitted_decisions(oof, prob)
    return dict(at_05=error_rates(p, t), best_threshold=thresh, at_best_in_sample=error_rates(p, t, thresh),
                cross_fitted=error_rates(cross.astype(float), t, 0.5) | dict(auc=error_rates(p, t)['auc']))


_FOLD_KEYS = ('at_05', 'at_05_plain', 'threshold', 'fit_seconds', 'fold_seconds', 'images_seen', 'epochs_run', 'steps', 'n_train', 'n_valid',
              'runtime', 'resumed_from_epoch', 'profile', 'pseudo')


def run_summary(out, run=None, only=None):
    """(summary, pooled out-of-fold frame) of run folder `out` (`run`: its config.json, if already read): per-fold and
    pooled metrics. `only`: these fold numbers alone, the others left out as if unfinished."""
    run = run or open_run(out)
    folds = {k: f for k, f in finished_folds(out, run).items() if only is None or k in only}
    summary = dict(run_id=run['run_id'], config=run['config'], n_images=run.get('n_images'), versions=run.get('versions', {}),
                   fit_seconds=sum(f['fit_seconds'] for f in folds.values()),
                   folds={k: {n: f.get(n) for n in _FOLD_KEYS} for k, f in folds.items()},
                   complete=len(folds) == run['config']['folds'])
    oof = read_oof(out, sorted(folds)) if folds else None
    if oof is not None: summary['pooled'], summary['pooled_plain'] = cv_summary(oof), cv_summary(oof, 'prob')
    return summary, oof


def _row(name, m, extra=''):
    return f"| {name} | " + ' | '.join(f"{m[c]:.4f}" for c in _COLS) + f" | {extra} |"


def _how(f):
    rt = f.get('runtime') or {}
    return f"{rt.get('device', '?')} {rt.get('precision', '?')}"


def _budget_note(f):
    "How a budgeted fold used its budget: its minutes against the budget, its steps and epochs, how often it re-planned."
    plan = f.get('steps') or {}
    if not plan.get('budget') or f.get('fold_seconds') is None: return ''
    replans = ('replanned_at' in plan) + len(plan.get('replans', [])) + len(plan.get('epoch_replans', []))  # 0.19.0 listed epoch ends apart
    return (f", budget {plan['budget'] / 60:.1f} min: the fold took {f['fold_seconds'] / 60:.1f}, {plan['steps']} steps "
            f"({f['epochs_run']:.2f} epochs), re-planned {replans}x")


def _machines(folds):
    "Where the folds ran, as list lines: CPU, threads, processes and host, folds that share them on one line."
    groups = {}
    for k, f in sorted(folds.items(), key=lambda kv: int(kv[0])):
        rt = f.get('runtime') or {}
        where = (rt.get('cpu') or 'CPU not recorded', rt.get('device', '?'), rt.get('threads', '?'), rt.get('world_size', 1), rt.get('host'))
        groups.setdefault(where, []).append(str(k))
    return [f"- fold{'s' if len(ks) > 1 else ''} {', '.join(ks)}: {cpu}; {device}, {threads} threads"
            + (f", {ws} processes" if ws != 1 else '') + (f"; host {host}" if host else '')
            for (cpu, device, threads, ws, host), ks in groups.items()] or ['- no fold finished']


def markdown_report(summary):
    "The summary as a Markdown page: per-fold and pooled out-of-fold metrics, threshold, time, how each fold ran, config."
    head = "| | " + ' | '.join(c.upper() if c != 'balanced_acc' else 'BA' for c in _COLS) + " | note |"
    lines = [f"# thera-fit CV report ({'complete' if summary['complete'] else 'partial'})", "",
             f"{summary['n_images']} images, {len(summary['folds'])}/{summary['config']['folds']} folds finished, "
             f"{summary['fit_seconds'] / 60:.1f} min of fitting.", "",
             *([f"**Warning: {w}.**", ""] if 'pooled' in summary and (w := chance_warning(summary['pooled']['at_05']['auc'])) else []),
             "Out-of-fold metrics at threshold 0.5 (TTA probabilities; `plain` = without TTA):", "",
             head, "|" + "---|" * (len(_COLS) + 2)]
    for k, f in sorted(summary['folds'].items(), key=lambda kv: int(kv[0])):
        pseudo = f", {f['pseudo']['kept']} pseudo-labelled images" if f.get('pseudo') else ''
        lines.append(_row(f"fold {k}", f['at_05'], f"fit {f['fit_seconds'] / 60:.1f} min ({_how(f)}){_budget_note(f)}, own threshold {f['threshold']:.3f}{pseudo}"))
    if 'pooled' in summary:
        p, pp = summary['pooled'], summary['pooled_plain']
        lines += [_row('pooled', p['at_05']), _row('pooled, plain', pp['at_05']),
                  _row('pooled, cross-fitted threshold', p['cross_fitted'], 'threshold from the other folds'),
                  _row('pooled, best threshold (in-sample)', p['at_best_in_sample'], f"threshold {p['best_threshold']:.4f}"),
                  "", f"Decision threshold minimizing pooled out-of-fold HTER: **{p['best_threshold']:.4f}** "
                  f"(its honest estimate is the cross-fitted row).",
                  "", "![loss and HTER per epoch](history.png) ![ROC](roc.png) ![confusion matrix](confusion.png)"]
    lines += ["", "## Config", "", "```json", json.dumps(summary['config'], indent=1), "```", "",
              "## Machine", "", *_machines(summary['folds']), "",
              "## Versions", "", ', '.join(f"{k} {v}" for k, v in summary['versions'].items())]
    return '\n'.join(lines) + '\n'


def write_run_report(out):
    """Writes report.json, report.md and the PNGs of run folder `out` from its finished folds; returns the summary.

    Runs under the folder's report lock, so of several processes finishing folds at once the last
    one to write has seen every fold."""
    from .plots import write_plots
    out = Path(out)
    run = open_run(out)  # before the lock, which would create the folder
    with FileLock(out/'.report.lock'):
        summary, oof = run_summary(out, run)
        write_json(out/'report.json', summary)
        text = markdown_report(summary)
        atomic_write(out/'report.md', lambda tmp: tmp.write_text(text))
        if oof is not None: write_plots(out, oof, summary['pooled']['best_threshold'])
    return summary
