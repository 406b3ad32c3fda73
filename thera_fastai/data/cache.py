"""Decoding JPEGs once, in parallel, into a memory-mapped uint8 array that later runs and other processes reuse."""
import json, os, warnings, zipfile, zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import simplejpeg
from filelock import FileLock

from ..config import IMAGE_SHAPE
from ..errors import TheraError
from ..files import atomic_write, clean_stale_temps, make_folder, require_free_space, short_hash

__all__ = ['IMAGE_SIZE', 'IMAGE_SHAPE', 'default_cache_dir', 'decode_jpeg', 'cached_images', 'source_key']

IMAGE_SIZE = IMAGE_SHAPE[0]
CACHE_VERSION = 1


def default_cache_dir():
    "Where caches live unless `cache` says otherwise: $THERA_CACHE (set and not empty) or ~/.cache/thera_fastai."
    return Path(os.environ.get('THERA_CACHE') or Path.home()/'.cache'/'thera_fastai')


def decode_jpeg(data, where, size=IMAGE_SIZE):
    "Decodes one JPEG to a (size, size, 3) uint8 array; grayscale/CMYK are converted with a warning, other sizes refused."
    try: h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as e: raise TheraError(f"corrupt or not a JPEG ({e})", where) from None
    if (h, w) != (size, size): raise TheraError(f"image is {w}x{h}, expected {size}x{size}", where)
    try: img = simplejpeg.decode_jpeg(data, colorspace='RGB')
    except ValueError as e: raise TheraError(f"corrupt JPEG ({e})", where) from None
    if colorspace not in ('YCbCr', 'RGB'): warnings.warn(f"{where}: {colorspace} JPEG converted to RGB")
    return img


def _decode_chunk(source, names, out, start):
    for i, name in enumerate(names):
        try: data = source.read(name)
        except (zipfile.BadZipFile, OSError, zlib.error) as e: raise TheraError(f"cannot read ({e})", source.display(name)) from None
        out[start + i] = decode_jpeg(data, source.display(name))
    return len(names)


def _decode_all(source, out, n_threads, progress):
    "Decodes `source` into `out` with `n_threads` threads (simplejpeg releases the GIL)."
    chunk = 2048
    with ThreadPoolExecutor(n_threads) as ex:
        futs = [ex.submit(_decode_chunk, source, source.names[s:s + chunk], out, s) for s in range(0, len(source), chunk)]
        try:
            for f in (progress(futs) if progress else futs): f.result()
        except BaseException:
            for f in futs: f.cancel()
            raise


def source_key(source):
    "A short hash of the source's identity and content fingerprint: the cache's name."
    return short_hash([CACHE_VERSION, source.prefix, source.fingerprint()])


def _chunk_crcs(arr, chunk=64 << 20):
    "CRC-32 of each 64 MiB of the array's bytes, computed on all cores (zlib releases the GIL)."
    flat = np.ascontiguousarray(arr).reshape(-1)
    with ThreadPoolExecutor(os.cpu_count() or 1) as ex:
        return list(ex.map(zlib.crc32, (flat[i:i + chunk] for i in range(0, flat.size, chunk))))


def _intact(arr, meta):
    "Whether the array's bytes match the checksums in its metadata (caches of thera_fastai 0.1 hold one whole CRC)."
    if 'crc32_chunks' in meta: return _chunk_crcs(arr) == meta['crc32_chunks']
    return zlib.crc32(np.ascontiguousarray(arr)) == meta.get('crc32')


def _load_valid(npy, meta_path, key, n):
    "The cached array if its metadata matches `key` and its bytes match the stored checksum, else None."
    if not (npy.exists() and meta_path.exists()): return None
    try:
        meta = json.loads(meta_path.read_text())
        arr = np.load(npy, mmap_mode='r')
    except (ValueError, OSError, json.JSONDecodeError): return None
    if meta.get('key') != key or arr.shape != (n, *IMAGE_SHAPE): return None
    if not _intact(arr, meta):
        warnings.warn(f"{npy}: cache is corrupt (checksum differs); decoding again")
        return None
    return arr


def _check_space(source, npy):
    require_free_space(npy.parent, len(source) * int(np.prod(IMAGE_SHAPE)) + 4096, f"decode {len(source)} images into the cache")


def _write_cache(source, npy, meta_path, key, n_threads, progress):
    shape = (len(source), *IMAGE_SHAPE)
    _check_space(source, npy)

    def write(tmp):
        out = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8, shape=shape)
        # Reserve the blocks now: a memory-mapped write into a sparse file on a full disk is a SIGBUS, not an error.
        with open(tmp, 'r+b') as f: os.posix_fallocate(f.fileno(), 0, os.path.getsize(tmp))
        _decode_all(source, out, n_threads or os.cpu_count() or 1, progress)
        out.flush()
        crcs = _chunk_crcs(out)
        del out
        meta = dict(key=key, source=source.display(), n=len(source), crc32_chunks=crcs, version=CACHE_VERSION)
        atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta)))
    # The meta file is written inside, before the array lands: a stale meta never vouches for a new array
    # because the array is checked against its checksum on every load.
    atomic_write(npy, write)


def _stamp(path):
    try: return path.stat().st_mtime_ns
    except FileNotFoundError: return None


def cached_images(source, cache_dir=None, n_threads=None, progress=None, log=None):
    """The source's images as a read-only memory-mapped (N, 64, 64, 3) uint8 array.

    Decoded once into `cache_dir`; reused while the source's names and CRCs (zip) or sizes and
    mtimes (folder) are unchanged and the array's checksum holds. Processes that ask for the same
    cache at once decode it once: the others wait on its lock, then map it. `log` hears of a decode."""
    cache_dir = Path(cache_dir or default_cache_dir())
    make_folder(cache_dir, 'cache')
    key = source_key(source)
    npy, meta_path = cache_dir/f"images-{key}.npy", cache_dir/f"images-{key}.json"
    seen = _stamp(npy)
    arr = _load_valid(npy, meta_path, key, len(source))
    if arr is not None: return arr
    lock = cache_dir/f"images-{key}.lock"
    if not lock.exists(): _check_space(source, npy)  # refused before the lock file exists: a full disk keeps nothing of it
    with FileLock(lock):
        clean_stale_temps(cache_dir)
        # Checked again only if another process wrote the cache while this one waited for the lock.
        arr = _load_valid(npy, meta_path, key, len(source)) if _stamp(npy) != seen else None
        if arr is None:
            if log: log(f"decoding {len(source)} images from {source.display()} into {npy}")
            _write_cache(source, npy, meta_path, key, n_threads, progress)
    return np.load(npy, mmap_mode='r')
