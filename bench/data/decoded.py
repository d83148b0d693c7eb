"""The decoded-image cache's file (`bench.data.cache` draws the crops from it).

The file. Each image is decoded by PIL and resized exactly as the preset's eval `Resize(side)`
does (torchvision on the PIL image: shorter side = `side`, bilinear with antialiasing, longer
side truncated to an integer), so every stored image has the same short side. An image is
stored long axis first, as a (long, side, 3) uint8 slab (a landscape image transposed), and the
slabs are packed end to end in one raw file, memory-mapped as a (sum of long sides, side, 3)
array: no padding, about side * mean(long side) * 3 bytes an image (CUB ~3 GB, CARS ~4 GB,
SOP ~31 GB at 256 px). An index (offsets, long sides, which are transposed, original sizes)
sits beside it. The folder, `$DMLBENCH_CACHE/decoded/<name>-<side>px-v<V>-<digest>`, is keyed
by a digest of the cache version, the side, Pillow's version and every source file's path,
size and mtime, so a changed dataset is decoded again; it is written under a temporary name
and renamed, and an OS lock lets one process decode while others wait.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from typing import Iterator

import numpy as np
import torch

from dmlbench.bench.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock (temp name + rename still hold)
    fcntl = None  # type: ignore[assignment]

__all__ = ["CACHE_VERSION", "DecodedCache", "default_cache_dir", "resized_size", "source_digest"]

# one logger name for the whole decoded-image cache (file and crops)
log = logging.getLogger("dmlbench.bench.data.cache")

CACHE_VERSION = 1


def resized_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) after torchvision's `Resize(side)`: the shorter side becomes `side`,
    the longer one int(side * long / short)."""
    if width <= height:
        return int(side * height / width), side
    return side, int(side * width / height)


def default_cache_dir() -> str:
    """`$DMLBENCH_CACHE/decoded`, else ~/.cache/dmlbench/decoded."""
    from dmlbench.bench.data.glyphs import default_cache_dir as base

    return os.path.join(base(), "decoded")


def source_digest(paths: list[str], side: int) -> str:
    """A digest of everything the decoded pixels depend on: the cache version, the side,
    Pillow's version and each source file's path, size and mtime."""
    import PIL

    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "side": side,
                                   "pillow": PIL.__version__}).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            raise UserError(f"image file {p} is missing; check the dataset root") from None
    return h.hexdigest()[:16]


class _Decode:
    """PIL image -> (long, side, 3) uint8 slab, transposed flag, original (h, w)."""

    def __init__(self, side: int) -> None:
        self.side = side

    def __call__(self, img):
        from torchvision import transforms as T

        w0, h0 = img.size
        arr = np.asarray(T.Resize(self.side)(img))
        if arr.shape[:2] != resized_size(h0, w0, self.side):
            raise RuntimeError(f"Resize({self.side}) of a {w0}x{h0} image gave {arr.shape}")
        transposed = w0 > h0
        arr = np.array(arr.transpose(1, 0, 2) if transposed else arr, order="C")
        return arr, transposed, h0, w0


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive OS lock on the file `path` (waited for), removed on release; the kernel
    releases it however the process ends."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:
            break
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # the holder before us may have removed the file: lock the one at `path`
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held, so a waiter sees the change
        os.close(fd)


class DecodedCache:
    """One dataset's decoded images: `pixels` (T, side, 3) uint8 memory map, and per image
    `offsets`, `lengths` (long side), `transposed`, `orig` (original h, w)."""

    PIXELS, INDEX = "pixels.u8", "index.npz"

    def __init__(self, folder: str, digest: str, side: int, count: int) -> None:
        with np.load(os.path.join(folder, self.INDEX), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in ("offsets", "lengths", "transposed", "orig")}
        if meta != {"version": CACHE_VERSION, "digest": digest, "side": side, "count": count}:
            raise ValueError(f"index is for {meta}")
        self.folder, self.side = folder, side
        self.offsets = arrays["offsets"].astype(np.int64)
        self.lengths = arrays["lengths"].astype(np.int64)
        self.transposed = arrays["transposed"].astype(bool)
        self.orig = arrays["orig"].astype(np.int64)
        total = int(self.lengths.sum())
        if (len(self.offsets) != count or self.orig.shape != (count, 2)
                or not np.array_equal(self.offsets, np.cumsum(self.lengths) - self.lengths)):
            raise ValueError("inconsistent index")
        path = os.path.join(folder, self.PIXELS)
        if os.path.getsize(path) != total * side * 3:
            raise ValueError(f"{path} has {os.path.getsize(path)} bytes, not {total * side * 3}")
        self.pixels = np.memmap(path, dtype=np.uint8, mode="c", shape=(total, side, 3))

    @property
    def nbytes(self) -> int:
        return int(self.pixels.size)

    @classmethod
    def open_or_build(cls, dataset, side: int, *, num_workers: int = 0,
                      cache_dir: str | None = None) -> "DecodedCache":
        """The cache of `dataset` (a DMLDataset with paths) at short side `side`, decoded now
        if it is missing, stale or unreadable."""
        paths = dataset.paths
        digest = source_digest(paths, side)
        parent = os.path.expanduser(cache_dir or default_cache_dir())
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset.name)
        final = os.path.join(parent, f"{name}-{side}px-v{CACHE_VERSION}-{digest}")
        try:
            return cls(final, digest, side, len(paths))
        except FileNotFoundError:
            pass
        except Exception as e:  # corrupt or truncated: decoded again below
            log.warning("decoded-image cache %s is unreadable (%s: %s); decoding again",
                        final, type(e).__name__, e)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the image cache folder {parent} ({e}); set "
                            "DMLBENCH_CACHE to a writable folder or use dataset.cache=none"
                            ) from None
        try:
            with _locked(final + ".lock"):
                try:  # another process may have written it while we waited
                    return cls(final, digest, side, len(paths))
                except Exception:
                    pass
                if os.path.exists(final):
                    trash = f"{final}.{uuid.uuid4().hex[:8]}.stale"
                    os.rename(final, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                _remove_orphans(final)
                _build(dataset, side, digest, final, num_workers)
        except OSError as e:  # full disk, no permission: the images themselves raise UserError
            raise UserError(f"cannot write the decoded-image cache {final} ({e}); free space "
                            "there (about 3 bytes x 256 x 340 an image at 256 px), set "
                            "DMLBENCH_CACHE to another folder, or use dataset.cache=none"
                            ) from None
        return cls(final, digest, side, len(paths))


def _temp_name(final: str) -> str:
    return f"{final}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _remove_orphans(final: str) -> None:
    """Remove temporary folders of `final` left by processes of this host that have died
    (killed mid-decode)."""
    parent, name = os.path.split(final)
    host = socket.gethostname()
    for entry in os.listdir(parent):
        parts = entry[len(name) + 1:].split(".")
        if not (entry.startswith(name + ".") and entry.endswith(".tmp") and len(parts) >= 4
                and ".".join(parts[:-3]) == host and parts[-3].isdigit()):
            continue
        try:
            os.kill(int(parts[-3]), 0)
        except ProcessLookupError:
            log.info("removing %s, left by a process that ended mid-decode", entry)
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except OSError:
            pass


def _build(dataset, side: int, digest: str, final: str, num_workers: int) -> None:
    """Decode every image of `dataset` into the folder `final` (temp folder + rename)."""
    import time

    from dmlbench.bench.data.loading import FileImages, Split

    tmp = _temp_name(final)
    os.mkdir(tmp)  # the umask applies, as to the files below
    n = len(dataset.paths)
    log.info("decoding %d images of %s to %d px into %s (%d workers)", n, dataset.name, side,
             final, num_workers)
    t0 = time.perf_counter()
    try:
        files = FileImages(Split(dataset, np.arange(n)), _Decode(side))
        # its own generator: decoding leaves torch's global random state as it was
        loader = torch.utils.data.DataLoader(files, batch_size=None, num_workers=num_workers,
                                             generator=torch.Generator().manual_seed(0))
        lengths = np.zeros(n, np.int64)
        transposed = np.zeros(n, bool)
        orig = np.zeros((n, 2), np.int64)
        with open(os.path.join(tmp, DecodedCache.PIXELS), "wb") as f:
            for i, ((arr, tr, h0, w0), _) in enumerate(loader):
                arr = np.asarray(arr)
                f.write(arr.tobytes())
                lengths[i], transposed[i], orig[i] = arr.shape[0], bool(tr), (int(h0), int(w0))
                if (i + 1) % max(1, n // 10) == 0:
                    log.info("decoded %d / %d images (%.0f s)", i + 1, n,
                             time.perf_counter() - t0)
            f.flush()
            os.fsync(f.fileno())
        meta = {"version": CACHE_VERSION, "digest": digest, "side": side, "count": n}
        with open(os.path.join(tmp, DecodedCache.INDEX), "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), offsets=np.cumsum(lengths) - lengths,
                     lengths=lengths, transposed=transposed, orig=orig)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, final)
        except OSError:  # written meanwhile by a process that did not take the lock
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("decoded %d images in %.0f s (%.2f GB)", n, time.perf_counter() - t0,
             3 * side * lengths.sum() / 1e9)
