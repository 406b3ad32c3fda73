"""How budgeted folds kept their time budget: for each finished fold of the run folders given, the budget, the minutes
its last plan promised, the minutes the fold took (probe, training, evaluation), how far over the budget it ended,
the steps the probe planned and the steps it trained, and how often it re-planned (early, and later: on windows of steps
and at epoch ends; 0.19.0 re-planned later at epoch ends only), and what its last plan counted a TTA pass and the whole
evaluation to cost (the TTA pass per image against the plain pass's: a probe that timed one slow first TTA call
planned the evaluation long and ended the fold early).

Run:  .venv/bin/python bench/budget_adherence.py runs/def30 runs/def30r --out docs/budget_adherence.csv
      .venv/bin/python bench/budget_adherence.py --table docs/budget_adherence.csv   # the doc's table, from the CSV
Folds without a budget are left out."""
import argparse, json
from pathlib import Path

import pandas as pd

COLUMNS = ['run', 'fold', 'version', 'budget_min', 'planned_min', 'fold_min', 'over_min', 'probe_steps', 'steps',
           'epochs_run', 'early_replan', 'later_replans', 'probe_step_s', 'last_step_s', 'tta_per_plain', 'planned_eval_min']


def fold_row(run, info):
    "One fold's row from its `fold.json` record, or None where it had no budget."
    plan = info.get('steps') or {}
    if not plan.get('budget'): return None
    later = plan.get('replans', []) + plan.get('epoch_replans', [])  # 0.20.0's list, or 0.19.0's of epoch ends only
    return dict(run=Path(run).name, fold=info['fold'], version=info['versions']['thera_fastai'], budget_min=plan['budget'] / 60,
                planned_min=plan['planned_seconds'] / 60, fold_min=info['fold_seconds'] / 60,
                over_min=(info['fold_seconds'] - plan['budget']) / 60, probe_steps=plan.get('probe_steps', plan['steps']),
                steps=plan['steps'], epochs_run=info['epochs_run'], early_replan='replanned_at' in plan,
                later_replans=len(later), probe_step_s=plan.get('probe_step_seconds', plan['step_seconds']),
                last_step_s=later[-1]['step_seconds'] if later else plan['step_seconds'],
                tta_per_plain=plan['tta_image_seconds'] / plan['eval_image_seconds'] if plan.get('eval_image_seconds') else None,
                planned_eval_min=plan['eval_seconds'] / 60 if 'eval_seconds' in plan else None)


def adherence_table(runs):
    "The raw table: one row per budgeted finished fold of `runs` (run folders), in the order given."
    rows = [fold_row(run, json.loads(f.read_text())) for run in runs for f in sorted(Path(run).glob('fold*/fold.json'))]
    return pd.DataFrame([r for r in rows if r is not None], columns=COLUMNS)


def adherence_markdown(table):
    "The doc's table, made from the raw one (the evaluation's columns where it has them: written before 0.26.0, it has not)."
    evals = 'tta_per_plain' in table and table['tta_per_plain'].notna().any()
    def num(v, fmt): return '-' if pd.isna(v) else format(v, fmt)
    lines = ['| run | fold | version | budget min | planned min | fold min | over the budget | steps (the probe\'s) | re-plans: early, later | s a step: probe, last |'
             + (' TTA pass / plain pass, per image | planned evaluation min |' if evals else ''),
             '|---|---|---|---|---|---|---|---|---|---|' + ('---|---|' if evals else '')]
    for r in table.itertuples():
        lines.append(f"| {r.run} | {r.fold} | {r.version} | {r.budget_min:.0f} | {r.planned_min:.1f} | {r.fold_min:.1f} | {r.over_min:+.1f} | "
                     f"{r.steps:,} ({r.probe_steps:,}) | {'yes' if r.early_replan else 'no'}, {r.later_replans} | {r.probe_step_s:.3f}, {r.last_step_s:.3f} |"
                     + (f" {num(r.tta_per_plain, '.2f')} | {num(r.planned_eval_min, '.1f')} |" if evals else ''))
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('runs', nargs='*', help='run folders')
    ap.add_argument('--out', help='CSV to write the raw table to')
    ap.add_argument('--table', help='a CSV this script wrote: print its Markdown table')
    args = ap.parse_args()
    if args.table: print(adherence_markdown(pd.read_csv(args.table)), end=''); return
    table = adherence_table(args.runs)
    if args.out: table.to_csv(args.out, index=False)
    print(adherence_markdown(table), end='')


if __name__ == '__main__': main()
