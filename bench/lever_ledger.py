"""Every lever measured against a baseline, gathered from the studies' raw tables: one row per candidate that is not its
table's baseline, what it changed, its HTER difference from the baseline with the paired 95% interval, and the best
HTER that interval allows (the baseline's plus the interval's lower end). A goal is then read against every lever
tried at once: a lever whose best allowed HTER is above the goal was measured as unable to reach it.

Run:  .venv/bin/python bench/lever_ledger.py 'docs/study_30m_bf16*.csv' [--goal 0.07]
It prints the ledger as Markdown, generated from the study CSVs each time (the ledger has no raw table of its own)."""
import argparse, glob, re
from pathlib import Path

import pandas as pd

GOAL = 0.070  # a 30-minute fold's HTER goal on fold 0's held-out rows
COLUMNS = ['study', 'lever', 'change', 'baseline', 'baseline_hter', 'hter', 'epochs', 'diff', 'lo', 'hi', 'best_allowed', 'verdict']


def recipe_fields(recipe):
    "The `key=value` fields of a study table's recipe text (a list value's commas stay inside it)."
    return set() if pd.isna(recipe) or not str(recipe).strip() else set(re.split(r', (?=\w+=)', str(recipe).strip()))


def change(recipe, baseline_recipe):
    "What a candidate's recipe sets that its baseline's does not: its fields not in the baseline's, or 'the baseline again'."
    new = recipe_fields(recipe) - recipe_fields(baseline_recipe)
    return ', '.join(sorted(new)) if new else 'the baseline again'


def study_levers(path):
    "The ledger rows of one study CSV: each candidate after the first row (the table's baseline) that has a paired difference."
    table = pd.read_csv(path)
    base = table.iloc[0]
    rows = [dict(study=Path(path).stem, lever=r.run, change=change(r.recipe, base.recipe), baseline=base.run, baseline_hter=base.hter_cross,
                 hter=r.hter_cross, epochs=r.epochs, diff=r.diff, lo=r.lo, hi=r.hi, best_allowed=base.hter_cross + r.lo, verdict=r.verdict)
            for r in table.iloc[1:].itertuples() if not pd.isna(r.diff)]
    return pd.DataFrame(rows, columns=COLUMNS)


def ledger(paths):
    """The levers of every study CSV in `paths`, a run compared with the same baseline in several studies kept once
    (from the first study that has it), ordered by their difference from the baseline."""
    frame = pd.concat([study_levers(p) for p in sorted(map(str, paths))], ignore_index=True)
    frame = frame.drop_duplicates(subset=['lever', 'baseline', 'diff'], keep='first')
    return frame.sort_values(['diff', 'lever'], kind='stable').reset_index(drop=True)


def markdown(frame, goal=GOAL):
    "The ledger as a Markdown table, each lever's best allowed HTER set against `goal`."
    lines = [f"| lever | what it changes | study | baseline (HTER) | HTER cross-fitted | epochs | difference [95%] | best allowed | reaches {goal:.3f}? | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        reach = 'within its interval' if r.best_allowed <= goal else 'no'
        lines.append(f"| {r.lever} | {r.change} | {r.study} | {r.baseline} ({r.baseline_hter:.4f}) | {r.hter:.4f} | {r.epochs:.1f} | "
                     f"{r.diff:+.4f} [{r.lo:+.4f}, {r.hi:+.4f}] | {r.best_allowed:.4f} | {reach} | {r.verdict} |")
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('pattern', help="study CSVs, a glob in quotes (e.g. 'docs/study_30m_bf16*.csv')")
    ap.add_argument('--goal', type=float, default=GOAL, help='the HTER each lever is read against')
    args = ap.parse_args()
    paths = glob.glob(args.pattern)
    if not paths: raise SystemExit(f"lever_ledger: no study CSV matches {args.pattern}")
    frame = ledger(paths)
    print(markdown(frame, args.goal))
    reach = int((frame.best_allowed <= args.goal).sum())
    print(f"{len(frame)} levers from {len(paths)} studies; the best allowed HTER is {frame.best_allowed.min():.4f}; "
          f"{reach} reach {args.goal:.3f} within their interval")


if __name__ == '__main__': main()
