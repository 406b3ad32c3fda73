"""Finding the exercise's images and labels in a zip or a folder, and checking them."""
import re, zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import TheraError

__all__ = ['ImageSource', 'Dataset', 'open_dataset', 'open_images', 'read_labels', 'IMAGE_EXTS']

IMAGE_EXTS = ('.jpg', '.jpeg')
TRAIN_DIR, VAL_DIR, LABEL_FILE = 'train_img', 'val_img', 'label_train.txt'
_NUMBERED = re.compile(r'^(\d+)\.jpe?g$', re.IGNORECASE)


@dataclass
class ImageSource:
    "JPEG files of one folder, in a zip (`container` is the zip) or on disk (`container` is the folder)."
    container: Path
    prefix: str  # folder inside the zip ('' on disk): member name = prefix + name
    names: list = field(default_factory=list)  # file names, in file-name order

    @property
    def is_zip(self): return self.container.is_file()
    def display(self, name=''): return f"{self.container}{'!' if self.is_zip else '/'}{self.prefix}{name}".rstrip('/')
    def __len__(self): return len(self.names)

    zip_file: zipfile.ZipFile = field(default=None, repr=False, compare=False)

    def zip(self):
        "The open zip, parsed once and shared: its reads are thread-safe."
        if self.zip_file is None: self.zip_file = zipfile.ZipFile(self.container)
        return self.zip_file

    def read(self, name):
        "The bytes of file `name`."
        return self.zip().read(self.prefix + name) if self.is_zip else (self.container/name).read_bytes()

    def fingerprint(self):
        "What identifies this source's content cheaply: names plus zip CRCs, or sizes and mtimes on disk."
        if self.is_zip: return [(n, self.zip().getinfo(self.prefix + n).CRC) for n in self.names]
        return [(n, (s := (self.container/n).stat()).st_size, s.st_mtime_ns) for n in self.names]


@dataclass
class Dataset:
    "The exercise's layout: labelled `train`, unlabelled `val` (possibly absent) and where it came from."
    path: Path
    train: ImageSource
    labels: np.ndarray
    val: ImageSource = None


def _natural_key(name): return [int(t) if t.isdigit() else t.lower() for t in re.split(r'(\d+)', name)]


def _image_names(names):
    "Image file names among `names`, hidden files left out, in natural file-name order."
    names = [n for n in names if n.lower().endswith(IMAGE_EXTS) and not n.startswith('.')]
    return sorted(names) if _zero_padded(names) else sorted(names, key=_natural_key)


def _zero_padded(names):
    "Whether all names are numbers of one width with one extension (000001.jpg...): string order is then natural order."
    if not names: return True
    ext = names[0][names[0].rfind('.'):]
    width = len(names[0])
    return all(len(n) == width and n.endswith(ext) and n[:-len(ext)].isascii() and n[:-len(ext)].isdigit() for n in names)


def _open_zip(path):
    try: return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e: raise TheraError(f"not a readable zip ({e})", path) from None


def _zip_root(path, members):
    "The folder inside the zip that holds `label_train.txt` and `train_img/`."
    roots = [m[:-len(LABEL_FILE)] for m in members if m.endswith(LABEL_FILE) and '__MACOSX' not in m]
    for root in roots:
        if any(m.startswith(root + TRAIN_DIR + '/') for m in members): return root
    missing = LABEL_FILE if not roots else f"{TRAIN_DIR}/"
    raise TheraError(f"zip without the expected layout: no {missing} (expected {LABEL_FILE}, {TRAIN_DIR}/, {VAL_DIR}/)", path)


def _zip_folder(zf, prefix):
    members = zf.namelist()
    names = _image_names(m[len(prefix):] for m in members if m.startswith(prefix) and '/' not in m[len(prefix):])
    return ImageSource(Path(zf.filename), prefix, names, zf)


def _disk_folder(folder):
    if not folder.is_dir(): raise TheraError("is not a folder", folder)
    return ImageSource(folder, '', _image_names(p.name for p in folder.iterdir() if p.is_file()))


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


def open_dataset(path, need_val=False):
    "Opens the exercise from its zip or extracted folder and checks names and labels against each other."
    path = Path(path).expanduser()
    if not path.exists(): raise TheraError("does not exist", path)
    if path.is_file():
        zf = _open_zip(path)
        root = _zip_root(path, zf.namelist())
        train, val = _zip_folder(zf, root + TRAIN_DIR + '/'), _zip_folder(zf, root + VAL_DIR + '/')
        has_val = any(m.startswith(root + VAL_DIR + '/') for m in zf.namelist())
        try: text = zf.read(root + LABEL_FILE).decode('utf-8-sig')
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as e: raise TheraError(f"cannot read {LABEL_FILE} ({e})", path) from None
        label_where = f"{path}!{root}{LABEL_FILE}"
    else:
        path = _dataset_folder(path)
        train = _disk_folder(path/TRAIN_DIR)
        has_val = (path/VAL_DIR).is_dir()
        val = _disk_folder(path/VAL_DIR) if has_val else None
        label_where = path/LABEL_FILE
        try: text = label_where.read_text(encoding='utf-8-sig')
        except (OSError, UnicodeDecodeError) as e: raise TheraError(f"cannot read labels ({e})", label_where) from None
    labels = read_labels(text, label_where)
    _check_numbered(train, len(labels), label_where)
    if need_val: _check_val(val if has_val else None, path)
    return Dataset(path, train, labels, val if has_val else None)


def _dataset_folder(path):
    "The folder itself, or its single exercise subfolder, whichever holds the expected layout."
    for cand in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if (cand/LABEL_FILE).is_file() and (cand/TRAIN_DIR).is_dir(): return cand
    missing = LABEL_FILE if not (path/LABEL_FILE).exists() else f"{TRAIN_DIR}/"
    raise TheraError(f"folder without the expected layout: no {missing} (expected {LABEL_FILE}, {TRAIN_DIR}/, {VAL_DIR}/)", path)


def _check_val(val, where):
    if val is None: raise TheraError(f"no {VAL_DIR}/ folder to predict", where)
    if not len(val): raise TheraError("folder holds no JPEG images", val.display())


def open_images(path):
    "Images to predict: a dataset's `val_img/` (zip or folder), or any folder of JPEGs."
    path = Path(path).expanduser()
    if not path.exists(): raise TheraError("does not exist", path)
    if path.is_file():
        zf = _open_zip(path)
        root = _zip_root(path, zf.namelist())
        val = _zip_folder(zf, root + VAL_DIR + '/')
        _check_val(val if any(m.startswith(root + VAL_DIR + '/') for m in zf.namelist()) else None, path)
        return val
    if (path/VAL_DIR).is_dir() or (path/LABEL_FILE).exists(): folder = path/VAL_DIR
    else: folder = next((c/VAL_DIR for c in sorted(path.iterdir()) if (c/VAL_DIR).is_dir()), path)
    val = _disk_folder(folder)
    _check_val(val, path)
    return val
