"""Which test-time views a fold model should average: its fold's held-out rows scored under each TTA scheme, every
scheme against the package's own (TTA 4: random draws of the training augmentation, blended with a plain pass, as
`thera-predict` draws them), by the cross-fitted HTER difference and the AUC difference with their paired bootstrap
intervals. No training: the fold's weights as they are.

Run:  .venv/bin/python bench/tta_study.py --data ../shared/data/ml_exercise_therapanacea.zip runs/def30w [runs/other ...] \
          [--fold 0] [--random 4,8] [--out docs/tta_study.csv]
Each view is one pass of the model over the held-out rows: the image, its mirror, and the two kept at diagonal
shifts of 1 and 2 pixels (reflected at the border), as airbench's TTA translates. The passes are kept in the run's
fold folder (`tta_views.npz`, written atomically), so a rerun only scores while the fold's weights are unchanged.
`--out` writes the raw table as CSV; `--table CSV` prints it as Markdown."""
import argparse, sys, time, warnings
from pathlib import Path

warnings.filterwarnings('ignore')
sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from thera_fastai.analysis.paired import cross_fitted_hter_of, paired_difference, ranking_verdict, verdict  # noqa: E402
from thera_fastai.analysis.report import cross_fit_groups  # noqa: E402
from thera_fastai.config import FitConfig, cpu_model  # noqa: E402
from thera_fastai.data.cache import cached_images  # noqa: E402
from thera_fastai.data.loaders import images_dl  # noqa: E402
from thera_fastai.data.source import open_dataset  # noqa: E402
from thera_fastai.infer.inference import predict_probs  # noqa: E402
from thera_fastai.metrics import auc  # noqa: E402
from thera_fastai.files import atomic_write, read_json  # noqa: E402
from thera_fastai.runs import FOLD_FILE, WEIGHTS_FILE, fold_dir, open_run, run_data  # noqa: E402
from thera_fastai.train.learner import load_fold_learner  # noqa: E402
from method_study import interval_text  # noqa: E402

VIEWS_FILE = 'tta_views.npz'
SHIFTS = (1, 2)  # the diagonal shifts, in pixels, of the translated views
VIEW_NAMES = ['plain', 'mirror', *(f'{m}shift{t}{s}' for s in SHIFTS for t in '+-' for m in ('', 'mirror_'))]


def shifted(images, dy, dx):
    "The (N, H, W, C) uint8 `images` moved by (dy, dx) pixels, the border filled by reflection, as airbench pads."
    p = max(abs(dy), abs(dx))
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect')
    h, w = images.shape[1:3]
    return np.ascontiguousarray(padded[:, p - dy:p - dy + h, p - dx:p - dx + w])


def view_images(images):
    "Each deterministic view's name and its images: plain, mirror, and both at diagonal shifts of `SHIFTS` pixels."
    mirror = np.ascontiguousarray(images[:, :, ::-1])
    out = {'plain': images, 'mirror': mirror}
    for s in SHIFTS:
        for sign, tag in ((1, '+'), (-1, '-')):
            out[f'shift{tag}{s}'] = shifted(images, sign * s, sign * s)
            out[f'mirror_shift{tag}{s}'] = shifted(mirror, sign * s, sign * s)
    return out


def view_probs(run, fold, data, random_ns, log=print):
    """P(class 1) of fold `fold`'s model on its held-out rows under each view, the package's TTA at each of `random_ns`
    draws and as the fit drew it (`fit`: its `oof.csv`; the draws fall differently over another batching of the rows),
    and the fold's `oof.csv` (its rows and labels); passes in the fold's `VIEWS_FILE` are reused while the fold's weights are those
    they were made with (by the hash `fold.json` keeps of them)."""
    folder = fold_dir(run, fold)
    oof = pd.read_csv(folder/'oof.csv')
    store, weights = folder/VIEWS_FILE, read_json(folder/FOLD_FILE, 'fold file')['files'][WEIGHTS_FILE]
    kept = dict(np.load(store)) if store.exists() else {}
    probs = {k: v for k, v in kept.items() if k != 'weights'} if str(kept.get('weights')) == weights else {}
    wanted = VIEW_NAMES + [f'random{n}' for n in random_ns]
    if any(k not in probs for k in wanted):
        learn = load_fold_learner(folder)
        flip = FitConfig.from_dict(learn.fold_info['config']).alternating_flip
        images = cached_images(open_dataset(data or run_data(open_run(run))).train)[oof['row'].to_numpy()]
        for name, imgs in view_images(images).items():
            if name in probs: continue
            start = time.time()
            probs[name] = predict_probs(learn, images_dl(learn.dls, imgs, bs=512), tta=0, compile=False)
            log(f"{run} fold {fold}: {name} in {time.time() - start:.0f} s")
        dl = images_dl(learn.dls, images, bs=512)
        for n in random_ns:
            if f'random{n}' in probs: continue
            start = time.time()
            probs[f'random{n}'] = predict_probs(learn, dl, tta=n, compile=False, flip=flip)
            log(f"{run} fold {fold}: {n} random draws in {time.time() - start:.0f} s")
        def save(tmp):
            with open(tmp, 'wb') as f: np.savez(f, weights=np.array(weights), **probs)
        atomic_write(store, save)
    return probs | {'fit': oof['prob_tta'].to_numpy()}, oof


def schemes(probs, random_ns):
    """Each TTA scheme's name, its number of passes and its probabilities, from the views' probabilities. The random
    schemes are the package's (`predict_probs`: the draws' mean blended with the plain pass)."""
    def pair(a, b): return (a + b) / 2
    flip = pair(probs['plain'], probs['mirror'])
    out = [('plain', 1, probs['plain'])]
    out += [(f'random {n} (the package)' if n == 4 else f'random {n}', n + 1, probs[f'random{n}']) for n in random_ns]
    if 'fit' in probs: out.append(("random 4, the fit's own draws", 5, probs['fit']))
    out.append(('mirror', 2, flip))
    for s in SHIFTS:
        moved = np.mean([pair(probs[f'shift{t}{s}'], probs[f'mirror_shift{t}{s}']) for t in '+-'], axis=0)
        out.append((f'mirror, shifts of {s} px (airbench)' if s == 1 else f'mirror, shifts of {s} px', 6, (flip + moved) / 2))
    every = [probs[k] for k in VIEW_NAMES]
    out.append((f'all {len(every)} views', len(every), np.mean(every, axis=0)))
    return out


def study(run, fold, data, random_ns, baseline='random 4 (the package)', n_boot=1000, log=print):
    """One row per scheme of fold `fold` of `run`: passes, HTER cross-fitted, AUC, and the paired differences of both from
    `baseline`'s, with their intervals in words."""
    probs, oof = view_probs(run, fold, data, random_ns, log)
    labels = oof['label'].to_numpy()
    groups = cross_fit_groups(oof.assign(fold=fold))
    rows = schemes(probs, random_ns)
    base = dict((n, p) for n, _, p in rows)[baseline]
    table = []
    for name, passes, p in rows:
        d = None if name == baseline else paired_difference(base, p, labels, groups, n_boot=n_boot)
        table.append(dict(run=Path(run).name, fold=fold, scheme=name, passes=passes,
                          hter_cross=cross_fitted_hter_of(p, labels, groups), auc=auc(p, labels),
                          diff=d and d['diff'], lo=d and d['lo'], hi=d and d['hi'],
                          verdict='baseline' if d is None else verdict(d, baseline, name),
                          auc_diff=d and d['auc_diff'], auc_lo=d and d['auc_lo'], auc_hi=d and d['auc_hi'],
                          ranking='baseline' if d is None else ranking_verdict(d, baseline, name)))
    return pd.DataFrame(table)


def markdown(table):
    "The study's table as Markdown, from `study`'s rows (or the CSV file `--out` writes)."
    lines = ["| run | scheme | passes | HTER cross-fitted | AUC | HTER difference from the package's TTA [95%] | verdict | "
             "AUC difference [95%] | ranking |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.run} | {r.scheme} | {r.passes} | {r.hter_cross:.4f} | {r.auc:.4f} | {interval_text(r.diff, r.lo, r.hi)} | "
                     f"{r.verdict} | {interval_text(r.auc_diff, r.auc_lo, r.auc_hi)} | {r.ranking} |")
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('runs', nargs='*', help='thera-fit run folders')
    ap.add_argument('--data', help='the exercise zip or folder (default: the one each run trained on)')
    ap.add_argument('--fold', type=int, default=0)
    ap.add_argument('--random', default='4,8', help='numbers of random draws of the package TTA to score (4 is its default)')
    ap.add_argument('--out', help='write the raw table here as CSV')
    ap.add_argument('--table', help='print the Markdown table of this CSV and stop')
    args = ap.parse_args()
    if args.table: print(markdown(pd.read_csv(args.table)), end=''); return
    if not args.runs: ap.error('name at least one run folder')
    random_ns = sorted({4, *(int(n) for n in args.random.split(','))})
    print(f"CPU: {cpu_model()}", file=sys.stderr)
    table = pd.concat([study(r, args.fold, args.data, random_ns, log=lambda m: print(m, file=sys.stderr)) for r in args.runs])
    if args.out: table.to_csv(args.out, index=False, float_format='%.6g')
    print(markdown(table), end='')


if __name__ == '__main__':
    main()
