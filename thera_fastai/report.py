"""The CV report of a `thera-fit` run: report.json for programs, report.md for people."""
import json
from pathlib import Path

from .cache import atomic_write

__all__ = ['write_reports', 'markdown_report']

_COLS = ('hter', 'far', 'frr', 'balanced_acc', 'auc')


def _row(name, m, extra=''):
    return f"| {name} | " + ' | '.join(f"{m[c]:.4f}" for c in _COLS) + f" | {extra} |"


def markdown_report(summary):
    "The summary as a Markdown page: per-fold and pooled out-of-fold metrics, threshold, time, config."
    head = "| | " + ' | '.join(c.upper() if c != 'balanced_acc' else 'BA' for c in _COLS) + " | note |"
    lines = [f"# thera-fit CV report ({'complete' if summary['complete'] else 'partial'})", "",
             f"{summary['n_images']} images, {len(summary['folds'])}/{summary['config']['folds']} folds, "
             f"{summary['seconds'] / 60:.1f} min this invocation.", "",
             "Out-of-fold metrics at threshold 0.5 (TTA probabilities; `plain` = without TTA):", "",
             head, "|" + "---|" * (len(_COLS) + 2)]
    for k, f in sorted(summary['folds'].items(), key=lambda kv: int(kv[0])):
        lines.append(_row(f"fold {k}", f['at_05'], f"fit {f['fit_seconds'] / 60:.1f} min, own threshold {f['threshold']:.3f}"))
    if 'pooled' in summary:
        p, pp = summary['pooled'], summary['pooled_plain']
        lines += [_row('pooled', p['at_05']), _row('pooled, plain', pp['at_05']),
                  _row('pooled, cross-fitted threshold', p['cross_fitted'], 'threshold from the other folds'),
                  _row('pooled, best threshold (in-sample)', p['at_best_in_sample'], f"threshold {p['best_threshold']:.4f}"),
                  "", f"Decision threshold minimizing pooled out-of-fold HTER: **{p['best_threshold']:.4f}** "
                  f"(its honest estimate is the cross-fitted row)."]
    lines += ["", "![loss and HTER per epoch](history.png) ![ROC](roc.png) ![confusion matrix](confusion.png)"] if 'pooled' in summary else []
    lines += ["", "## Config", "", "```json", json.dumps(summary['config'], indent=1), "```", "",
              "## Versions", "", ', '.join(f"{k} {v}" for k, v in summary['versions'].items())]
    return '\n'.join(lines) + '\n'


def write_reports(out, summary):
    "Writes report.json and report.md under `out`, atomically."
    out = Path(out)
    atomic_write(out/'report.json', lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    atomic_write(out/'report.md', lambda tmp: tmp.write_text(markdown_report(summary)))
