"""Recipe study on fold 0: each variant trained with the package's own CV code, one Markdown row each.

Run:  .venv/bin/python bench/recipe_study.py --data ../shared/data/ml_exercise_therapanacea.zip \
          --epochs 2 --out runs/study-full   [--sample 10000 for a quick look]
Variants are `name:key=value,...` over `FitConfig` fields (see --variants). Every HTER is measured on
fold 0's validation rows, which the model never saw; `cross-fitted` picks the threshold on one half
of those rows and scores the other half, and vice versa. The TTA sweep reuses the baseline's learner."""
import argparse, ast, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings('ignore')
from thera_fastai.data.cache import cached_images  # noqa: E402
import thera_fastai as tf  # noqa: E402
from thera_fastai.data.loaders import images_dl  # noqa: E402
from thera_fastai.infer.inference import predict_probs  # noqa: E402
from thera_fastai.metrics import error_rates  # noqa: E402
from thera_fastai.data.source import open_dataset  # noqa: E402

VARIANTS = ('baseline:;no-flip:flip=False;plain+threshold:balance="none";loss-weighting:balance="loss";'
            'label-smoothing-0.1:label_smoothing=0.1;seed-recipe(Adam 1e-4 StepLR):schedule="step",lr=1e-4;'
            'bs64:bs=64;bs256:bs=256;resnet18-default-stem:arch="resnet18",stem="default";resnet18-nopool:arch="resnet18"')


def parse_variants(text):
    "'name:k=v,k=v;name2:...' -> [(name, {k: v})], values as Python literals (a tuple or dict may hold commas)."
    out = []
    for item in filter(None, text.split(';')):
        name, _, kvs = item.partition(':')
        call = ast.parse(f"f({kvs})", mode='eval').body  # Python's own parser splits the k=v pairs at the top-level commas
        out.append((name, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}))
    return out


def row(name, s, minutes, seen):
    "One Markdown row: HTER at 0.5, at the cross-fitted threshold, AUC, minutes, images seen."
    p = s['pooled']
    return (f"| {name} | {p['at_05']['hter']:.4f} | {p['cross_fitted']['hter']:.4f} | {p['at_05']['auc']:.4f} | "
            f"{minutes:.1f} | {seen:,} |")


def tta_sweep(run, data, ns=(0, 2, 4, 8)):
    "HTER at 0.5 and AUC of the baseline's fold-0 learner for several TTA pass counts."
    oof = pd.read_csv(Path(run)/'fold0'/'oof.csv')
    images = cached_images(open_dataset(data).train)[np.sort(oof['row'].to_numpy())]
    labels = oof.sort_values('row')['label'].to_numpy()
    learn = tf.load_fold_learner(Path(run)/'fold0')
    for n in ns:
        m = error_rates(predict_probs(learn, images_dl(learn.dls, images), n), labels)
        print(f"| TTA n={n} | {m['hter']:.4f} | {m['auc']:.4f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--data', required=True)
    ap.add_argument('--out', default='runs/study')
    ap.add_argument('--sample', type=int, default=None, help='stratified subset of N images (default: all)')
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--arch', default='simple', help="the variants' base arch (a variant's own arch wins)")
    ap.add_argument('--variants', default=VARIANTS)
    a = ap.parse_args()
    print(f"fold 0 of 5 on {f'a stratified sample of {a.sample}' if a.sample else 'all'} images, {a.epochs} epochs each\n")
    print("| variant | HTER at 0.5 (TTA 4) | HTER, cross-fitted threshold | AUC | minutes | images seen |")
    print("|---|---|---|---|---|---|")
    for name, over in parse_variants(a.variants):
        t = time.time()
        s = tf.fit(a.data, Path(a.out)/name, fold=0, log=lambda *_: None, **{**dict(arch=a.arch, folds=5, epochs=a.epochs, sample=a.sample), **over})
        print(row(name, s, (time.time() - t) / 60, s['folds'][0]['images_seen']), flush=True)
    print("\n| baseline TTA | HTER at 0.5 | AUC |\n|---|---|---|")
    tta_sweep(Path(a.out)/'baseline', a.data)


if __name__ == '__main__': main()
