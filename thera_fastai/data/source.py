"""Finding the exercise's images and labels in a zip or a folder, and checking them.

A zip and a folder are read through one interface (`members`, `read`, `fingerprint`), so the
layout checks are written once for both."""
import os, re, zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TheraError
from ..infer.onnx_predict import IMAGE_EXTS, is_image_name, natural_key  # numpy only: the exported predictor's rules

__all__ = ['ImageSource', 'Dataset', 'open_dataset', 'open_images', 'read_labels', 'IMAGE_EXTS']

TRAIN_DIR, VAL_DIR, LABEL_FILE = 'train_img', 'val_img', 'label_train.txt'
LAYOUT = f"expected {LABEL_FILE}, {TRAIN_DIR}/, {VAL_DIR}/"
_NUMBERED = re.compile(r'^(\d+)\.jpe?g$', re.IGNORECASE)


class _Zip:
    "A zip's members; the archive is parsed once and its reads are thread-safe."
    sep = '!'
    def __init__(self, path):
        self.path = path
        try: self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e: raise TheraError(f"not a readable zip ({e})", path) from None
    def members(self): return [m for m in self.zf.namelist() if '__MACOSX' not in m]
    def read(self, member): return self.zf.read(member)
    def fingerprint(self, member): return self.zf.getinfo(member).CRC


class _Folder:
    "The files of a folder (and its folders, as 'name/'), up to three levels deep: the folder above the exercise's, the exercise's, its image folders."
    sep = '/'
    def __init__(self, path): self.path = path
    def members(self):
        out = []
        for top, dirs, files in os.walk(self.path):
            rel = os.path.relpath(top, self.path)
            depth = 0 if rel == '.' else rel.count(os.sep) + 1
            if depth >= 2: dirs[:] = []
            prefix = '' if rel == '.' else rel.replace(os.sep, '/') + '/'
            out += [prefix + f for f in files] + [prefix + d + '/' for d in dirs]
        return out
    def read(self, member): return (self.path/member).read_bytes()
    def fingerprint(self, member): s = (self.path/member).stat(); return s.st_size, s.st_mtime_ns


def _open(path):
    path = Path(path).expanduser()
    if not path.exists(): raise TheraError("does not exist", path)
    return _Zip(path) if path.is_file() else _Folder(path)


@dataclass
class ImageSource:
    "The JPEG files of one folder of a zip or a folder on disk: member name = `prefix` + file name."
    container: object = field(repr=False)
    prefix: str
    names: list = field(default_factory=list)  # file names, in file-name order

    @property
    def path(self): return self.container.path
    @property
    def is_zip(self): return isinstance(self.container, _Zip)
    def display(self, name=''): return f"{self.container.path}{self.container.sep}{self.prefix}{name}".rstrip('/!')
    def __len__(self): return len(self.names)
    def read(self, name):
        "The bytes of file `name`."
        return self.container.read(self.prefix + name)
    def fingerprint(self):
        "What identifies this source's content cheaply: names plus zip CRCs, or sizes and mtimes on disk."
        return [(n, self.container.fingerprint(self.prefix + n)) for n in self.names]


@dataclass
class Dataset:
    "The exercise's layout: labelled `train`, unlabelled `val` (possibly absent) and where it came from."
    path: Path
    train: ImageSource
    labels: np.ndarray
    val: ImageSource = None


def _image_names(names):
    "Image file names among `names`, hidden files left out, in natural file-name order."
    names = [n for n in names if is_image_name(n)]
    return sorted(names) if _zero_padded(names) else sorted(names, key=natural_key)


def _zero_padded(names):
    "Whether all names are numbers of one width with one extension (000001.jpg...): string order is then natural order."
    if not names: return True
    ext = names[0][names[0].rfind('.'):]
    width = len(names[0])
    return all(len(n) == width and n.endswith(ext) and n[:-len(ext)].isascii() and n[:-len(ext)].isdigit() for n in names)


def _folder_source(container, members, prefix):
    "The images directly inside `prefix` (a folder of the container, '' for its top)."
    inside = (m[len(prefix):] for m in members if m.startswith(prefix))
    return ImageSource(container, prefix, _image_names(n for n in inside if '/' not in n))


def _roots(members, marker):
    "Folders (as member prefixes, shortest first) that hold `marker` (a file, or a folder when it ends in /)."
    if marker.endswith('/'): found = {'' if m.startswith(marker) else m[:m.find('/' + marker) + 1]
                                      for m in members if m.startswith(marker) or f"/{marker}" in m}
    else: found = {m[:-len(marker)] for m in members if m == marker or m.endswith('/' + marker)}
    return sorted(found, key=lambda r: (r.count('/'), r))


def read_labels(text, where):
    "Parses one 0/1 label per line; CRLF and trailing blank lines are accepted, anything else is refused."
    lines = text.splitlines()
    while lines and not lines[-1].strip(): lines.pop()
    if not lines: raise TheraError("label file is empty", where)
    labels = np.empty(len(lines), dtype=np.int8)
    for i, line in enumerate(lines):
        value = line.strip()
        if value not in ('0', '1'):
            shown = 'a blank line' if not value else repr(value[:20])
            raise TheraError(f"line {i+1} is {shown}; every label must be 0 or 1", where)
        labels[i] = int(value)
    return labels


def _check_numbered(source, n_labels, label_where):
    "Train images must be 1..N (any zero padding), one per label line, none missing or extra."
    numbers = []
    for name in source.names:
        m = _NUMBERED.match(name)
        if not m: raise TheraError("image name is not a number; train images must be named 000001.jpg, 000002.jpg, ...", source.display(name))
        numbers.append(int(m.group(1)))
    if not numbers: raise TheraError("folder holds no JPEG images", source.display())
    seen = set(numbers)
    if len(seen) != len(numbers): raise TheraError("two images share a number", source.display())
    gap = next((i for i in range(1, max(numbers) + 1) if i not in seen), None)
    if gap is not None: raise TheraError(f"image number {gap} is missing (found {len(numbers)} images up to {max(numbers)})", source.display())
    if len(numbers) > n_labels:
        raise TheraError(f"{len(numbers)} images but only {n_labels} labels: {source.names[n_labels]} has no label", label_where)
    if len(numbers) < n_labels:
        raise TheraError(f"{n_labels} labels but only {len(numbers)} images in {source.display()}", label_where)


def _check_val(val, where):
    if val is None: raise TheraError(f"no {VAL_DIR}/ folder to predict", where)
    if not len(val): raise TheraError("folder holds no JPEG images", val.display())


def open_dataset(path, need_val=False):
    "Opens the exercise from its zip or extracted folder (or the folder above it) and checks names and labels against each other."
    container = _open(path)
    members = container.members()
    layouts = [r for r in _roots(members, LABEL_FILE) if any(m.startswith(r + TRAIN_DIR + '/') for m in members)]
    if len(layouts) > 1:  # two copies of the data (other labels?): reading either one silently would be a guess
        raise TheraError(f"holds the exercise layout in {len(layouts)} folders ({', '.join(r or './' for r in layouts)}): "
                         "give the one to use (its folder, or a zip of it alone)", container.path)
    root = layouts[0] if layouts else None
    if root is None:
        missing = f"{TRAIN_DIR}/" if _roots(members, LABEL_FILE) else LABEL_FILE
        kind = 'zip' if isinstance(container, _Zip) else 'folder'
        raise TheraError(f"{kind} without the expected layout: no {missing} ({LAYOUT})", container.path)
    label_where = f"{container.path}{container.sep}{root}{LABEL_FILE}"
    try: text = container.read(root + LABEL_FILE).decode('utf-8-sig')
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as e: raise TheraError(f"cannot read labels ({e})", label_where) from None
    labels = read_labels(text, label_where)
    train = _folder_source(container, members, root + TRAIN_DIR + '/')
    _check_numbered(train, len(labels), label_where)
    has_val = any(m.startswith(root + VAL_DIR + '/') for m in members)
    val = _folder_source(container, members, root + VAL_DIR + '/') if has_val else None
    if need_val: _check_val(val, container.path)
    return Dataset(container.path, train, labels, val)


def open_images(path):
    "Images to predict: the `val_img/` of a dataset zip or folder (with or without its training part), or any folder of JPEGs."
    container = _open(path)
    members = container.members()
    roots = _roots(members, VAL_DIR + '/')
    if len(roots) > 1:
        raise TheraError(f"holds {VAL_DIR}/ in {len(roots)} folders ({', '.join(r or './' for r in roots)}): give the one to use",
                         container.path)
    if roots: val = _folder_source(container, members, roots[0] + VAL_DIR + '/')
    elif isinstance(container, _Folder): val = _folder_source(container, members, '')
    else: val = None
    _check_val(val, container.path)
    return val
