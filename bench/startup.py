"""Start-up of the commands: wall seconds of each, in a fresh process, best of `--repeats`, on a run folder.

Run:  .venv/bin/python bench/startup.py --runs RUN_A RUN_B --out /tmp/startup   [--repeats 3]
Writes `startup.csv` (what, command, seconds: best, all) under `--out` and prints the Markdown table generated from it
(`--table CSV` regenerates the table alone). Pin it to an idle core (`taskset -c 1`) so the figures are the machine's."""
import argparse, os, subprocess, sys, time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from prototyping_loop import cpu_flags  # noqa: E402

BIN = Path(sys.executable).parent


def commands(a, b, out):
    "(what, argv) of each start-up measured."
    py = str(BIN/'python')
    return [('import thera_fastai.config', [py, '-c', 'import thera_fastai.config']),
            ('import thera_fastai.cli (every command\'s module)', [py, '-c', 'import thera_fastai.cli']),
            ('import thera_fastai.train.learner (torch, fastai, timm)', [py, '-c', 'import thera_fastai.train.learner']),
            ('thera-report --version', [str(BIN/'thera-report'), '--version']),
            ('thera-report RUN', [str(BIN/'thera-report'), a]),
            ('thera-compare RUN RUN --n 0 --boot 200', [str(BIN/'thera-compare'), a, b, '--n', '0', '--boot', '200', '--out', str(out/'cmp')])]


def timed(argv, repeats):
    "Wall seconds of each of `repeats` runs of `argv`; a failure stops the bench."
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, text=True)
        seconds.append(time.perf_counter() - t0)
        if res.returncode: sys.exit(f"{' '.join(argv)} failed:\n{res.stderr[-2000:]}")
    return seconds


def markdown(frame):
    "The table of docs/speed.md, generated from the CSV."
    lines = ["| what | seconds (best of the runs) |", "|---|---|"]
    return '\n'.join(lines + [f"| `{r.what}` | {r.seconds:.2f} |" for r in frame.itertuples()]) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--runs', nargs=2); ap.add_argument('--out', default='/tmp/startup'); ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--table')
    a = ap.parse_args()
    if a.table: print(markdown(pd.read_csv(a.table))); return
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    rows = []
    for what, argv in commands(*a.runs, out):
        s = timed(argv, a.repeats)
        rows.append(dict(what=what, seconds=round(min(s), 2), all=' '.join(f"{x:.2f}" for x in s)))
        print(f"{what}: {min(s):.2f} s", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out/'startup.csv', index=False)
    print(markdown(frame))
    print(f"machine: {os.cpu_count()} cores, CPU flags: {cpu_flags()}")


if __name__ == '__main__': main()
