"""The README's prototyping loop, timed as a user runs it: two ideas fit on fold 0 at one time budget, compared,
the winner scaled to every fold, predicted and exported; each step is the installed command in a fresh process
(start-up included), run from `--out` so the runs land in its runs/ without a folder being chosen.

Run:  .venv/bin/python bench/prototyping_loop.py --data ../shared/data/ml_exercise_therapanacea.zip --out /tmp/loop \
          [--sample 10000] [--budget 2m] [--idea lr=1e-3]
Writes `prototyping_loop.csv` (step, command, seconds, what it printed last) under `--out` and prints the Markdown
table generated from it (`--table CSV` regenerates the table alone)."""
import argparse, os, platform, re, shlex, subprocess, sys, time
from pathlib import Path

import pandas as pd

BIN = Path(sys.executable).parent


def run(step, args, cwd, rows, result=None):
    """Runs one installed command, records its wall time and what it said (`result(stdout)`, else its last line) in
    `cwd`/prototyping_loop.csv (rewritten after every step, so a stopped loop keeps the steps it finished); a failure
    stops the loop. The command is recorded as a user types it: the data by its file name."""
    t0 = time.time()
    res = subprocess.run([str(BIN/args[0]), *map(str, args[1:])], cwd=cwd, capture_output=True, text=True)
    seconds = time.time() - t0
    last = (result(res.stdout) if result and not res.returncode else (res.stdout.strip().splitlines() or [''])[-1])[:200]
    shown = [Path(a).name if isinstance(a, Path) and a.is_absolute() and a.suffix == '.zip' else a for a in args]
    rows.append(dict(step=step, command=' '.join(shlex.quote(str(a)) for a in shown), seconds=round(seconds, 1), result=last))
    print(f"{step}: {seconds / 60:.1f} min: {last}", flush=True)
    pd.DataFrame(rows).to_csv(Path(cwd)/'prototyping_loop.csv', index=False)
    if res.returncode: sys.exit(f"{step} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res.stdout


def _folder(stdout):
    "The run folder a thera-fit without --out named (its first line)."
    return next(l.split(': ', 1)[1].split(' (')[0] for l in stdout.splitlines() if l.startswith('run folder: '))


def fit_result(stdout):
    "A fit's pooled HTER in a few words, and the folder it landed in."
    line = next(l for l in stdout.splitlines() if l.startswith('pooled out-of-fold HTER over'))
    m = re.match(r'pooled out-of-fold HTER over (.+?): ([\d.]+) at 0\.5, ([\d.]+) at a cross-fitted threshold', line)
    return f"HTER {m[3]} cross-fitted ({m[2]} at 0.5) over {m[1]} -> {_folder(stdout)}"


def compare_result(paired_csv):
    "The comparison's verdict on B against A, with the paired interval."
    def say(stdout):
        r = pd.read_csv(paired_csv).iloc[0]
        return f"B minus A {r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]: {r['verdict']}"
    return say


def b_wins(paired_csv, b):
    "Whether the comparison's paired interval says run `b` is better than the first run (otherwise the default stays)."
    paired = pd.read_csv(paired_csv)
    return bool(paired['verdict'].str.startswith(f"{Path(b).name} is better").any())


def markdown(frame):
    "The table of the README's section, generated from the CSV."
    lines = ["| step | command | minutes | result |", "|---|---|---|---|"]
    lines += [f"| {r.step} | `{r.command}` | {'-' if r.seconds != r.seconds else f'{r.seconds / 60:.1f}'} | {r.result} |"
              for r in frame.itertuples()]
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--data'); ap.add_argument('--out', default='/tmp/loop'); ap.add_argument('--sample', type=int, default=10000)
    ap.add_argument('--budget', default='2m'); ap.add_argument('--idea', default='lr=1e-3'); ap.add_argument('--table')
    a = ap.parse_args()
    if a.table: print(markdown(pd.read_csv(a.table))); return
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    data = Path(a.data).resolve()
    key, value = a.idea.split('=')
    common = ['--data', data, '--sample', a.sample, '--folds', 5, '--budget', a.budget]
    rows = []
    folder_a = _folder(run('idea A: the default recipe, fold 0', ['thera-fit', *common, '--fold', 0], out, rows, fit_result))
    folder_b = _folder(run(f'idea B: {a.idea}, fold 0', ['thera-fit', *common, '--fold', 0, f'--{key}', value], out, rows, fit_result))
    paired = out/Path(folder_a).parent/'compare'/'paired.csv'
    run('compare them', ['thera-compare', folder_a, folder_b, '--n', 0], out, rows, compare_result(paired))
    b_better = b_wins(paired, folder_b)
    folder = folder_b if b_better else folder_a
    run('scale the winner to 5 folds', ['thera-fit', *common, *([f'--{key}', value] if b_better else [])], out, rows, fit_result)
    run('predict the 20,000 val images', ['thera-predict', '--models', folder, '--data', data, '--out', out/'label_val.txt'], out, rows)
    run('export to ONNX', ['thera-export', '--models', folder, '--out', out/'export'], out, rows)
    print(markdown(pd.DataFrame(rows)))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPU flags: {cpu_flags()}")


def cpu_flags():
    "The CPU's vector flags that decide the speed here (AVX2, AVX-512, bf16, AMX)."
    try: flags = next(l for l in open('/proc/cpuinfo') if l.startswith('flags')).split()
    except (OSError, StopIteration): return 'unknown'
    return ' '.join(f for f in flags if f.startswith(('avx', 'amx'))) or 'no AVX'



if __name__ == '__main__': main()
