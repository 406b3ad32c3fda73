"""Predicts label_val.txt with an exported thera_fastai ensemble: needs onnxruntime, numpy and a JPEG decoder
(simplejpeg or Pillow), nothing of torch or fastai. `thera-export` copies this file next to the models.

    python predict.py EXPORT_DIR IMAGES [--out label_val.txt] [--votes votes.csv]

IMAGES is a folder of JPEGs, a folder or zip holding val_img/, or any zip of JPEGs. Each fold model
gives P(clean face) (normalization and sigmoid are inside the ONNX graph, no TTA), each fold votes at
its own threshold, the majority wins, a tie goes to the mean margin over the thresholds."""
import argparse, io, json, re, sys, zipfile
from pathlib import Path

import numpy as np

__all__ = ['load_ensemble', 'list_images', 'read_images', 'predict', 'vote', 'main']


def _natural(name): return [int(t) if t.isdigit() else t.lower() for t in re.split(r'(\d+)', name)]


def list_images(path):
    "(reader, names) of the JPEGs to predict, in natural file-name order: a val_img/ inside `path` if there is one."
    path = Path(path)
    if path.is_file():
        zf = zipfile.ZipFile(path)
        members = [m for m in zf.namelist() if m.lower().endswith(('.jpg', '.jpeg')) and '__MACOSX' not in m]
        val = [m for m in members if '/val_img/' in f"/{m}"]
        chosen = val or members
        return zf.read, sorted(chosen, key=_natural)
    folders = [path/'val_img', *sorted(path.glob('*/val_img'))]
    folder = next((f for f in folders if f.is_dir()), path)
    names = [str(p) for p in folder.iterdir() if p.suffix.lower() in ('.jpg', '.jpeg') and not p.name.startswith('.')]
    return (lambda n: Path(n).read_bytes()), sorted(names, key=lambda n: _natural(Path(n).name))


def _decoder():
    try:
        import simplejpeg
        return lambda data: simplejpeg.decode_jpeg(data, colorspace='RGB')
    except ImportError:
        from PIL import Image
        return lambda data: np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def read_images(read, names, size):
    "The images as one (N, H, W, 3) uint8 array; an image of another size is refused with its name."
    decode, out = _decoder(), np.empty((len(names), *size), np.uint8)
    for i, n in enumerate(names):
        img = decode(read(n))
        if img.shape != tuple(size): sys.exit(f"{n}: image is {img.shape[1]}x{img.shape[0]}, expected {size[1]}x{size[0]}")
        out[i] = img
    return out


def load_ensemble(folder):
    "(fold models as onnxruntime runners, manifest) of an export folder."
    import onnxruntime as ort
    folder = Path(folder)
    manifest = json.loads((folder/'ensemble.json').read_text())
    runners = [ort.InferenceSession(str(folder/f['file']), providers=['CPUExecutionProvider']) for f in manifest['folds']]
    return runners, manifest


def predict(runners, images, bs=512):
    "(K, N) probabilities of the K fold models."
    return np.stack([np.concatenate([s.run(None, {'images': images[i:i + bs]})[0] for i in range(0, len(images), bs)])
                     for s in runners]).astype(np.float64)


def vote(probs, thresholds):
    "Majority of the folds' votes at their own thresholds; a tie goes to the mean margin over the thresholds."
    thresholds = np.asarray(thresholds, dtype=np.float64)[:, None]
    share, margin = (probs >= thresholds).mean(0), (probs - thresholds).mean(0)
    return np.where(share > 0.5, 1, np.where(share < 0.5, 0, (margin >= 0).astype(int)))


def main(argv=None):
    "The command line: reads the export and the images, writes the label file (and the votes CSV)."
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('export'); ap.add_argument('images')
    ap.add_argument('--out', default='label_val.txt'); ap.add_argument('--votes', default=None)
    a = ap.parse_args(argv)
    runners, manifest = load_ensemble(a.export)
    read, names = list_images(a.images)
    if not names: sys.exit(f"{a.images}: no JPEG images")
    probs = predict(runners, read_images(read, names, manifest['image_size']))
    labels = vote(probs, [f['threshold'] for f in manifest['folds']])
    Path(a.out).write_text(''.join(f"{v}\n" for v in labels))
    if a.votes:
        head = ['image'] + [f"prob_fold{f['fold']}" for f in manifest['folds']] + ['label']
        rows = [','.join([Path(n).name, *(f"{p:.6f}" for p in probs[:, i]), str(labels[i])]) for i, n in enumerate(names)]
        Path(a.votes).write_text('\n'.join([','.join(head), *rows]) + '\n')
    print(f"{len(names)} images, {len(runners)} fold model{'s' * (len(runners) != 1)}: class 0 {1 - labels.mean():.2%}; wrote {a.out}")


if __name__ == '__main__': main()
