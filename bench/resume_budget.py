"""Whether a budgeted fold keeps its budget when it is interrupted and resumed on a slower machine: starts
`thera-fit --budget` on a fold, interrupts it (SIGINT, as Ctrl-C) once it has written an epoch checkpoint and run for
`--stop-after` seconds, resumes it with the same command at `--resume-threads` torch threads, and prints the fold's row
of `budget_adherence.py` with what the resume did: the seconds kept from before the interruption, the step it resumed
at, and the plan before and after the resumed process planned again. Beside it, the least the fold would have taken had
it kept the plan it was interrupted on (as folds resumed before 0.26.0 did): its minutes plus the steps the resumed
process dropped, at the resumed pace (the validations of any epochs they held not counted).

Run:  .venv/bin/python bench/resume_budget.py --data ml_exercise_therapanacea.zip --sample 20000 --budget 4m \\
          --stop-after 90 --threads 2 --resume-threads 1 --out runs/resume4 --csv docs/resume_budget.csv
      .venv/bin/python bench/resume_budget.py --table docs/resume_budget.csv   # the doc's table, from the CSV
The interruption costs the part of an epoch that runs again; the time between the two commands is not the fold's."""
import argparse, json, shlex, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from budget_adherence import fold_row  # noqa: E402

COLUMNS = ['label', 'version', 'budget_min', 'threads', 'resume_threads', 'resumed_from_epoch', 'before_resume_min',
           'fold_min', 'over_min', 'steps_at_interruption', 'steps', 'resume_replans', 'first_step_s', 'resumed_step_s',
           'kept_plan_min_at_least']


def fit_command(args, threads):
    "The `thera-fit` command line of the fold, at `threads` torch threads."
    return [str(Path(sys.executable).parent/'thera-fit'), '--data', args.data, '--folds', str(args.folds), '--fold', '0',
            '--budget', args.budget, '--threads', str(threads), '--out', str(args.out), *(['--sample', str(args.sample)] if args.sample else []),
            *shlex.split(args.fit_args)]


def interrupt_after(cmd, fold_dir, seconds, poll=1.0):
    "Runs `cmd` until it has run `seconds` and left a checkpoint in `fold_dir`, then SIGINTs it; the plan it was on."
    proc, t0 = subprocess.Popen(cmd), time.time()
    while proc.poll() is None and not (time.time() - t0 >= seconds and any(fold_dir.glob('ckpt-e*.pth'))): time.sleep(poll)
    if proc.poll() is not None: raise SystemExit(f"{' '.join(cmd)}: ended (exit {proc.returncode}) before it could be interrupted; give a longer budget")
    proc.send_signal(signal.SIGINT)
    proc.wait()
    import torch
    from thera_fastai.train.callbacks import checkpoints
    return torch.load(checkpoints(fold_dir)[0][1], weights_only=True)['state']['plan']  # the newest


def resume_row(args, info, interrupted):
    "The table's row: `budget_adherence`'s for the fold, with the plan it was interrupted on and what the resume did."
    row, plan = fold_row(args.out, info), info['steps']
    resumed = [r for r in plan.get('replans', []) if r['when'] == 'resume']
    before, resumed_s = info.get('seconds_before_resume'), resumed[0]['step_seconds'] if resumed else None
    dropped = max(interrupted['steps'] - plan['steps'], 0)
    return dict(label=args.label or Path(args.out).name, version=row['version'], budget_min=row['budget_min'],
                threads=args.threads, resume_threads=args.resume_threads, resumed_from_epoch=info['resumed_from_epoch'],
                before_resume_min=None if before is None else before / 60, fold_min=row['fold_min'], over_min=row['over_min'],
                steps_at_interruption=interrupted['steps'], steps=plan['steps'], resume_replans=len(resumed),
                first_step_s=interrupted['step_seconds'], resumed_step_s=resumed_s,
                kept_plan_min_at_least=None if resumed_s is None else row['fold_min'] + dropped * resumed_s / 60)


def markdown(table):
    "The doc's table, made from the raw one."
    lines = ['| run | version | budget min | threads, resumed at | resumed after epoch | min before the resume | fold min | over the budget | '
             'steps planned when interrupted | steps trained | s a step: first, resumed | the first plan kept: min, at least |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in table.itertuples():
        before = 'not kept' if pd.isna(r.before_resume_min) else f"{r.before_resume_min:.1f}"
        resumed = 'not timed' if pd.isna(r.resumed_step_s) else f"{r.resumed_step_s:.3f}"
        kept = '-' if pd.isna(r.kept_plan_min_at_least) else f"{r.kept_plan_min_at_least:.1f}"
        lines.append(f"| {r.label} | {r.version} | {r.budget_min:.0f} | {r.threads}, {r.resume_threads} | {r.resumed_from_epoch - 1} | {before} | "
                     f"{r.fold_min:.1f} | {r.over_min:+.1f} | {r.steps_at_interruption:,} | {r.steps:,} | {r.first_step_s:.3f}, {resumed} | {kept} |")
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data', help='the exercise zip or folder')
    ap.add_argument('--out', help='run folder (a new one: the fold must start from scratch)')
    ap.add_argument('--budget', default='4m'); ap.add_argument('--sample', type=int); ap.add_argument('--folds', type=int, default=5)
    ap.add_argument('--stop-after', type=float, default=90, help='seconds before the interruption (after an epoch checkpoint)')
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--resume-threads', type=int, default=1)
    ap.add_argument('--fit-args', default='', help="more thera-fit options, in one string ('--bs 64 --tta 0')")
    ap.add_argument('--label', help="the row's name (default: the run folder's)")
    ap.add_argument('--csv', help='CSV to append the row to')
    ap.add_argument('--table', help='a CSV this script wrote: print its Markdown table')
    args = ap.parse_args()
    if args.table: print(markdown(pd.read_csv(args.table)), end=''); return
    if not args.data or not args.out: ap.error('--data and --out are needed to run')
    args.out = Path(args.out)
    if args.out.exists(): ap.error(f"{args.out} exists: the fold must start from scratch")
    interrupted = interrupt_after(fit_command(args, args.threads), args.out/'fold0', args.stop_after)
    subprocess.run(fit_command(args, args.resume_threads), check=True)
    row = resume_row(args, json.loads((args.out/'fold0'/'fold.json').read_text()), interrupted)
    table = pd.DataFrame([row], columns=COLUMNS)
    if args.csv: table.to_csv(args.csv, mode='a', header=not Path(args.csv).exists(), index=False)
    print(markdown(table), end='')


if __name__ == '__main__': main()
