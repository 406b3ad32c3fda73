"""Training speed of a recipe with and without `torch.compile`, through the package's DataLoaders and learner.

Run:  .venv/bin/python bench/train_compile.py --data ../shared/data/ml_exercise_therapanacea.zip --arch airbench --threads 1
Prints images/s eager and compiled (12 timed batches each after the first two, the compile's among them),
`--repeats` times interleaved, and the ratio of the best of each."""
import argparse, time, warnings

warnings.filterwarnings('ignore')
import thera_fastai as tf  # noqa: E402
from budget_study import images_per_second  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--data', required=True)
    ap.add_argument('--arch', default=tf.FitConfig.arch)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--precision', default='auto', help='fp32, bf16 or auto (bf16 where native)')
    a = ap.parse_args()
    cfg, best = tf.FitConfig(arch=a.arch, folds=5), {}
    for _ in range(a.repeats):
        for compiled in (False, True):
            t = time.time()
            rate = images_per_second(a.data, cfg, a.threads, compile=compiled, precision=a.precision)[1]
            best[compiled] = max(best.get(compiled, 0), rate)
            print(f"{a.arch} {a.precision} {'compiled' if compiled else 'eager'}: {rate:.1f} img/s ({time.time() - t:.0f} s with setup)", flush=True)
    print(f"compiled / eager, best of {a.repeats}: {best[True] / best[False]:.2f}")


if __name__ == '__main__': main()
