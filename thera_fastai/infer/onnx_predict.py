"""Predicts label_val.txt with an exported thera_fastai ensemble: needs onnxruntime, numpy and a JPEG decoder
(simplejpeg or Pillow), nothing of torch or fastai. `thera-export` copies this file next to the models.

    python predict.py EXPORT_DIR IMAGES [--out label_val.txt] [--votes votes.csv]

IMAGES is a folder of JPEGs, a folder or zip holding val_img/, or any zip of JPEGs. Each fold model
gives P(clean face) (normalization and sigmoid are inside the ONNX graph, no TTA) and the folds vote by the export's
rule: soft, the mean margin over the folds' thresholds (the mean probability at the mean threshold), or hard, the
majority of the folds' votes at their own thresholds, a tie going to the mean margin.

Bad input (a missing folder, an unreadable image, an output folder that does not exist) is one line on stderr and
exit code 2, checked before any prediction where it can be; the label file and the votes CSV are written whole or
not at all."""
import argparse, io, json, os, re, sys, tempfile, zipfile
from pathlib import Path

import numpy as np

__all__ = ['IMAGE_EXTS', 'natural_key', 'is_image_name', 'load_ensemble', 'list_images', 'read_images', 'predict', 'VOTE_RULES', 'vote', 'votes_rows', 'main', 'BadInput']


class BadInput(Exception):
    "A problem with what the command was given: shown as one line, exit code 2."


def _fail(message): raise BadInput(message)


IMAGE_EXTS = ('.jpg', '.jpeg')


# The package takes these three from here: the exported predictor carries them without the package, so they are
# written once, in the one file an export copies.
def natural_key(name):
    "Sort key of a file name in natural order: 2.jpg before 10.jpg, case ignored."
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r'(\d+)', name)]


def is_image_name(name):
    "Whether a file name (no folder) is a JPEG to read: a .jpg/.jpeg extension, not hidden (.DS_Store, ._000001.jpg)."
    return name.lower().endswith(IMAGE_EXTS) and not name.startswith('.')


def list_images(path):
    "(reader, names) of the JPEGs to predict, in natural file-name order: a val_img/ inside `path` if there is one."
    path = Path(path)
    if not path.exists(): _fail(f"{path}: does not exist")
    if path.is_file():
        try: zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e: _fail(f"{path}: not a readable zip or folder of JPEGs ({e})")
        members = [m for m in zf.namelist() if is_image_name(m.rsplit('/', 1)[-1]) and '__MACOSX' not in m]
        val = [m for m in members if '/val_img/' in f"/{m}"]
        chosen = val or members
        return zf.read, sorted(chosen, key=natural_key)
    folders = [path/'val_img', *sorted(path.glob('*/val_img'))]
    folder = next((f for f in folders if f.is_dir()), path)
    names = [str(p) for p in folder.iterdir() if is_image_name(p.name)]
    return (lambda n: Path(n).read_bytes()), sorted(names, key=lambda n: natural_key(Path(n).name))


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
        try: img = decode(read(n))
        except Exception as e: _fail(f"{n}: not a readable JPEG ({type(e).__name__}: {str(e)[:120]})")
        if img.shape != tuple(size): _fail(f"{n}: image is {img.shape[1]}x{img.shape[0]}, expected {size[1]}x{size[0]}")
        out[i] = img
    return out


def load_ensemble(folder):
    "(fold models as onnxruntime runners, manifest) of an export folder."
    import onnxruntime as ort
    folder = Path(folder)
    try: manifest = json.loads((folder/'ensemble.json').read_text())
    except FileNotFoundError: _fail(f"{folder/'ensemble.json'}: does not exist (not a thera-export folder)")
    except (OSError, ValueError) as e: _fail(f"{folder/'ensemble.json'}: not a readable export manifest ({e})")
    try:
        thresholds = [float(f['threshold']) for f in manifest['folds']]
        files, size = [folder/f['file'] for f in manifest['folds']], tuple(int(v) for v in manifest['image_size'])
        assert files and len(size) == 3
    except (KeyError, TypeError, ValueError, AssertionError): _fail(f"{folder/'ensemble.json'}: lacks folds (file, threshold) or image_size")
    rule = manifest.get('vote_rule', 'hard')
    if rule not in VOTE_RULES: _fail(f"{folder/'ensemble.json'}: unknown vote rule {rule!r} (this predictor knows {', '.join(VOTE_RULES)})")
    runners = []
    for f in files:
        try: runners.append(ort.InferenceSession(str(f), providers=['CPUExecutionProvider']))
        except Exception as e: _fail(f"{f}: not a readable ONNX model ({type(e).__name__})")
    return runners, dict(manifest, image_size=size, thresholds=thresholds, vote_rule=rule)


def predict(runners, images, bs=512):
    "(K, N) probabilities of the K fold models."
    return np.stack([np.concatenate([s.run(None, {'images': images[i:i + bs]})[0] for i in range(0, len(images), bs)])
                     for s in runners]).astype(np.float64)


# How the folds' probabilities become one label (the package's default: config.COMMAND_DEFAULTS['vote']); exports
# written before the rule was recorded in ensemble.json voted hard.
VOTE_RULES = {'soft': "the mean of the folds' (prob - threshold) >= 0: the mean probability at the mean threshold",
              'hard': "majority of the folds at their own thresholds; a tie goes to the mean of (prob - threshold)"}


def vote(probs, thresholds, rule):
    """Each image's 0/1 label from the (K, N) probabilities of K folds and their thresholds, by `rule` (`VOTE_RULES`):
    soft, the mean margin over the thresholds is at least 0; hard, the majority of the folds' own votes, a tie going to
    the mean margin."""
    if rule not in VOTE_RULES: raise ValueError(f"vote rule must be one of {', '.join(VOTE_RULES)} (got {rule!r})")
    thresholds = np.asarray(thresholds, dtype=np.float64)[:, None]
    share, margin = (probs >= thresholds).mean(0), (probs - thresholds).mean(0)
    soft = (margin >= 0).astype(int)
    return soft if rule == 'soft' else np.where(share > 0.5, 1, np.where(share < 0.5, 0, soft))


def votes_rows(names, folds, probs, thresholds, labels):
    "The votes table as CSV text, with thera-predict's columns: image, prob_fold<k>, vote_fold<k>, mean_prob, label."
    votes = (probs >= np.asarray(thresholds)[:, None]).astype(int)
    head = ['image', *(f"prob_fold{k}" for k in folds), *(f"vote_fold{k}" for k in folds), 'mean_prob', 'label']
    rows = [','.join([Path(n).name, *(f"{p:.5f}" for p in probs[:, i]), *(str(v) for v in votes[:, i]), f"{probs[:, i].mean():.5f}",
                      str(labels[i])]) for i, n in enumerate(names)]
    return '\n'.join([','.join(head), *rows]) + '\n'


def _writable(path):
    "`path` as an output file whose folder exists and is writable, checked before any prediction."
    path = Path(path)
    folder = path.parent if str(path.parent) else Path('.')
    if not folder.is_dir(): _fail(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK): _fail(f"{folder}: output folder is not writable")
    if path.is_dir(): _fail(f"{path}: is a folder, expected a file")
    return path


def _write_whole(path, text):
    "Writes `text` to a temporary file beside `path`, then renames it over `path`: the file is whole or absent."
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else '.', prefix=f".{path.name}.", suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f: f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        _fail(f"{path}: cannot write ({e.strerror})")


def _umask():
    mask = os.umask(0); os.umask(mask)
    return mask


def main(argv=None):
    "The command line: reads the export and the images, writes the label file (and the votes CSV)."
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('export'); ap.add_argument('images')
    ap.add_argument('--out', default='label_val.txt'); ap.add_argument('--votes', default=None)
    a = ap.parse_args(argv)
    try:
        out, votes_path = _writable(a.out), a.votes and _writable(a.votes)
        runners, manifest = load_ensemble(a.export)
        read, names = list_images(a.images)
        if not names: _fail(f"{a.images}: no JPEG images")
        probs = predict(runners, read_images(read, names, manifest['image_size']))
        labels = vote(probs, manifest['thresholds'], manifest['vote_rule'])
        if votes_path: _write_whole(votes_path, votes_rows(names, [f['fold'] for f in manifest['folds']], probs, manifest['thresholds'], labels))
        _write_whole(out, ''.join(f"{v}\n" for v in labels))
    except BadInput as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(names)} images, {len(runners)} fold model{'s' * (len(runners) != 1)}: class 0 {1 - labels.mean():.2%}; wrote {a.out}")


if __name__ == '__main__': main()
