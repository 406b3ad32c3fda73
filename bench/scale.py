"""Scaling on one machine: fold jobs in parallel against the same folds in sequence, and data-parallel overhead per step.

Run:  .venv/bin/python bench/scale.py --data ../shared/data/ml_exercise_therapanacea.zip --sample 8000 --epochs 1
Prints two Markdown tables. Every fit is an ordinary `thera-fit` process on fold 0 or 1 of a stratified sample,
so the figures include start-up, decoding checks and out-of-fold prediction, as a user's jobs would."""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

BIN = Path(sys.executable).parent


def _cmd(data, out, fold, threads, a, launcher=()):
    return [*launcher, str(BIN/'thera-fit'), '--data', str(data), '--out', str(out), '--fold', str(fold), '--sample', str(a.sample),
            '--epochs', str(a.epochs), '--bs', str(a.bs), '--tta', '0', '--precision', a.precision, '--threads', str(threads), '--quiet']


def run_jobs(cmds, env):
    "Runs the commands at once; returns (wall seconds, CPU seconds of the children)."
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode: sys.exit(f"failed: {err[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.time() - t, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def fold_info(out, fold): return json.loads((Path(out)/f"fold{fold}"/'fold.json').read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--data', required=True)
    ap.add_argument('--sample', type=int, default=8000)
    ap.add_argument('--epochs', type=int, default=1)
    ap.add_argument('--bs', type=int, default=128)
    ap.add_argument('--precision', default='auto')
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='thera-scale-'))
    env = {**os.environ, 'ACCELERATE_USE_CPU': '1'}
    run_jobs([[str(BIN/'thera-fit'), '--data', str(a.data), '--out', str(tmp/'warm'), '--fold', '0', '--sample', '400',
               '--epochs', '1', '--tta', '0', '--quiet']], env)   # decode the cache once, outside the timings
    print(f"{os.cpu_count()} cores; folds 0 and 1 of a {a.sample}-image sample, {a.epochs} epoch(s), bs {a.bs}, {a.precision}\n")
    print("| layout | wall s | CPU s | fit s per fold |\n|---|---|---|---|")
    wall, cpu = run_jobs([_cmd(a.data, tmp/'seq', k, 2, a) for k in (0,)], env)
    wall2, cpu2 = run_jobs([_cmd(a.data, tmp/'seq', k, 2, a) for k in (1,)], env)
    fits = [fold_info(tmp/'seq', k)['fit_seconds'] for k in (0, 1)]
    print(f"| 2 folds in sequence, 2 threads each | {wall + wall2:.0f} | {cpu + cpu2:.0f} | {fits[0]:.0f}, {fits[1]:.0f} |")
    wall, cpu = run_jobs([_cmd(a.data, tmp/'par', k, 1, a) for k in (0, 1)], env)
    fits = [fold_info(tmp/'par', k)['fit_seconds'] for k in (0, 1)]
    print(f"| 2 fold jobs at once, 1 thread each | {wall:.0f} | {cpu:.0f} | {fits[0]:.0f}, {fits[1]:.0f} |")

    print("\n| fold 0 trained by | processes x threads | global batch | steps | fit s | s per step | images/s |\n|---|---|---|---|---|---|---|")
    run_jobs([_cmd(a.data, tmp/'one', 0, 1, a)], env)   # alone on the machine: the baseline step time
    one = fold_info(tmp/'one', 0)
    steps = a.epochs * (one['n_train'] // a.bs)
    print(f"| one process | 1 x 1 | {a.bs} | {steps} | {one['fit_seconds']:.0f} | {one['fit_seconds'] / steps:.3f} | "
          f"{a.epochs * one['n_train'] / one['fit_seconds']:.0f} |")
    torchrun = (str(BIN/'torchrun'), '--standalone', '--nproc_per_node', '2')
    run_jobs([_cmd(a.data, tmp/'ddp', 0, 1, a, torchrun)], env)
    ddp = fold_info(tmp/'ddp', 0)
    ddp_steps = a.epochs * -(-ddp['n_train'] // (2 * a.bs))
    print(f"| torchrun, gloo data-parallel | 2 x 1 | {2 * a.bs} | {ddp_steps} | {ddp['fit_seconds']:.0f} | "
          f"{ddp['fit_seconds'] / ddp_steps:.3f} | {a.epochs * ddp['n_train'] / ddp['fit_seconds']:.0f} |")
    print(f"\nper-step overhead of data parallelism (each process runs a batch of {a.bs} as the single process does): "
          f"{ddp['fit_seconds'] / ddp_steps - one['fit_seconds'] / steps:+.3f} s; runs in {tmp}")


if __name__ == '__main__': main()
