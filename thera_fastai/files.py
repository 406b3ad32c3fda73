"""Writing and reading the files of a run safely: atomic writes, short content hashes, JSON with clear errors."""
import errno, hashlib, json, os, re, tempfile, time
from contextlib import contextmanager
from pathlib import Path

from .errors import TheraError

__all__ = ['atomic_write', 'atomic_folder', 'file_mode', 'create_exclusive', 'make_folder', 'write_json', 'read_json', 'short_hash', 'file_hash', 'clean_stale_temps', 'require_free_space', 'os_reason']

_TMP = re.compile(r'^\.(?P<name>.+)\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.(tmp|tmpdir|old)$')


def _umask():
    mask = os.umask(0o022); os.umask(mask)
    return mask


def file_mode(folder=False):
    "The mode a new file (or `folder`) gets under this process's umask: 0o644 (0o755) under the usual 022."
    return (0o777 if folder else 0o666) & ~_umask()


def _tmp_prefix(path): return f".{path.name}.{os.uname().nodename.replace('.', '_')}-{os.getpid()}."


def os_reason(e):
    "An OSError's cause in the words every message of the package uses (no space, no permission, read-only)."
    return {errno.ENOSPC: 'no space left on the device', errno.EDQUOT: 'disk quota exceeded',
            errno.EACCES: 'permission denied', errno.EROFS: 'read-only file system'}.get(e.errno, e.strerror or str(e))


def _space_error(e, path):
    "An OSError while writing `path` as one clear TheraError."
    return TheraError(f"cannot write ({os_reason(e)})", path)


@contextmanager
def _temp_beside(path):
    "A unique empty temporary file beside `path`, removed afterwards; an OSError inside is one `TheraError` naming `path`."
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix='.tmp', dir=path.parent)
        os.fchmod(fd, file_mode())  # mkstemp makes it 0600: others sharing the run folder could not read it
        os.close(fd)
        tmp = Path(tmp)
        try: yield tmp
        finally: tmp.unlink(missing_ok=True)
    except OSError as e: raise _space_error(e, path) from None


def atomic_write(path, write):
    """Calls `write(tmp_path)` on a unique temporary file beside `path`, then renames it onto `path`.

    A killed process never leaves a half file under `path`; the temporary name carries the host and
    pid, so processes on several machines sharing a folder never collide, and `clean_stale_temps`
    (run first) removes a dead writer's leftovers, never a live one's. A full disk or a permission problem
    becomes one `TheraError` naming `path`, with the temporary file removed."""
    path = Path(path)
    if path.parent.is_dir(): clean_stale_temps(path.parent)  # what a writer killed here before left behind
    with _temp_beside(path) as tmp:
        write(tmp)
        os.replace(tmp, path)


@contextmanager
def atomic_folder(path, what='output'):
    """A temporary folder beside `path` to fill inside the block, renamed onto `path` at its end (an older `path` is
    replaced), so `path` appears whole or not at all; on an error the temporary folder is removed."""
    import shutil
    path = Path(path)
    if path.exists() and not path.is_dir(): raise TheraError(f"cannot create the {what} folder (a file is in the way)", path)
    make_folder(path.parent, what)
    clean_stale_temps(path.parent)  # an earlier writer killed inside the block left its folder
    try: tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix='.tmpdir', dir=path.parent))
    except OSError as e: raise _space_error(e, path) from None
    try:
        os.chmod(tmp, file_mode(folder=True))  # mkdtemp makes it 0700
        yield tmp
        old = path.with_name(tmp.name.replace('.tmpdir', '.old'))
        if path.exists(): os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _space_error(e, path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def create_exclusive(path, text):
    """Creates `path` with `text` unless it exists, atomically (a hard link of a complete file); returns whether it did.

    Of several processes (or hosts sharing the folder) that create it at once, exactly one wins."""
    path = Path(path)
    with _temp_beside(path) as tmp:
        tmp.write_text(text)
        try: os.link(tmp, path)
        except FileExistsError: return False
    return True


def make_folder(path, what):
    "Creates folder `path` (and its parents); one clear `TheraError` when it cannot be created or written to."
    path = Path(path)
    try: path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError): raise TheraError(f"cannot create the {what} folder (a file is in the way)", path) from None
    except OSError as e: raise TheraError(f"cannot create the {what} folder ({os_reason(e)})", path) from None
    if not os.access(path, os.W_OK | os.X_OK): raise TheraError(f"{what} folder is not writable", path)
    return path


def write_json(path, obj):
    "Writes `obj` as indented JSON, atomically."
    text = json.dumps(obj, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path, what='file'):
    "The JSON object in `path`; a missing, empty or invalid file is one `TheraError` saying which."
    path = Path(path)
    try: text = path.read_text()
    except FileNotFoundError: raise TheraError(f"{what} is missing", path) from None
    except OSError as e: raise TheraError(f"cannot read {what} ({e.strerror})", path) from None
    if not text.strip(): raise TheraError(f"{what} is empty", path)
    try: obj = json.loads(text)
    except json.JSONDecodeError as e: raise TheraError(f"{what} is not valid JSON ({e.msg} at line {e.lineno})", path) from None
    if not isinstance(obj, dict): raise TheraError(f"{what} does not hold a JSON object", path)
    return obj


def short_hash(*parts):
    "A 16-hex-digit SHA-1 of `parts` (bytes as they are, anything else as sorted JSON)."
    h = hashlib.sha1()
    for p in parts: h.update(p if isinstance(p, (bytes, bytearray, memoryview)) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:16]


def file_hash(path):
    "`short_hash` of a file's bytes, read in 16 MiB blocks."
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(16 << 20), b''): h.update(block)
    return h.hexdigest()[:16]


def _alive(pid):
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    except PermissionError: return True
    return True


def clean_stale_temps(folder, min_age_s=3600):
    """Removes temporary files and folders (`atomic_folder`'s) in `folder` left by dead writers; returns their paths.

    A temporary file of this host is removed when its process is gone; one of another host (a shared
    folder) only when untouched for `min_age_s`, since its process cannot be asked."""
    import shutil
    host, removed = os.uname().nodename.replace('.', '_'), []
    for p in Path(folder).glob('.*'):
        m = _TMP.match(p.name)
        if not m: continue
        try:
            stale = not _alive(int(m['pid'])) if m['host'] == host else time.time() - p.stat().st_mtime > min_age_s
            if not stale or int(m['pid']) == os.getpid(): continue
            if p.is_dir(): shutil.rmtree(p)
            else: p.unlink()
            removed.append(p)
        except FileNotFoundError: pass
    return removed


def require_free_space(folder, n_bytes, what='write'):
    "Refuses, with one clear line, to start a write of `n_bytes` into `folder` that cannot fit."
    import shutil
    free = shutil.disk_usage(folder).free
    if free < n_bytes:
        raise TheraError(f"not enough space to {what}: needs {n_bytes / 2**20:,.1f} MiB, {free / 2**20:,.1f} MiB free", folder)
