"""Files that several processes share: atomic writes (unique temp name, rename, the umask
respected), the errors a user can fix when a write fails (full disk, no permission, read-only),
the output folder check, and exclusive OS locks (`flock`) on files and run folders.

`bench.records` re-exports these names.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from dmlbench.bench.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks (one process per folder)
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_write_bytes", "atomic_write_text", "disk_error", "check_output_dir",
           "LOCK_FILE", "RunHeld", "file_lock", "run_lock"]


_UMASK: int | None = None


def _file_mode() -> int:
    """0o666 less the process umask: the mode `open()` would give a new file."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def atomic_write_bytes(path: "str | os.PathLike[str]", data: bytes) -> None:
    """Write `data` to `path` via a uniquely named temp file in the same folder and an atomic
    rename; the file gets the mode a plain `open()` would give it (the umask is respected).
    Nothing is left behind on failure; a full disk, a folder without write permission or a
    read-only file system raise UserError naming the path (see `disk_error`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise disk_error(e, path, len(data)) or e from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        err = disk_error(e, path, len(data)) if isinstance(e, OSError) else None
        if err is not None:
            raise err from None
        raise


# errno -> what a user is told when a write fails with it
_DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EROFS: "read-only file system"}


def disk_error(e: BaseException, path: "str | os.PathLike[str]", nbytes: int | None = None
               ) -> UserError | None:
    """The UserError for an OSError that the user can fix (full disk or quota, no permission,
    read-only file system, a file where a folder should be) while writing `path` (`nbytes`:
    the size of the write, where known), or None for any other error."""
    if not isinstance(e, OSError):
        return None
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        in_the_way = _file_in_the_way(Path(path).parent)
        if not in_the_way.is_file():
            return None
        return UserError(f"cannot write {path}: {in_the_way} is a file, not a folder; choose "
                         "another output folder (--out)")
    if e.errno not in _DISK_ERRORS:
        return None
    what = _DISK_ERRORS[e.errno]
    size = f" (needs about {nbytes} bytes)" if nbytes else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space (or choose another output folder) and re-run the command: it " \
              "resumes from what is saved"
    elif e.errno == errno.EROFS:
        fix = "choose another output folder (--out)"
    else:
        fix = f"make {Path(path).parent} writable or choose another output folder (--out)"
    return UserError(f"{what} writing {path}{size}; {fix}")


def _file_in_the_way(path: Path) -> Path:
    """The first part of `path` that exists and is not a folder (or `path` itself)."""
    for p in [*reversed(path.parents), path]:
        if p.exists() and not p.is_dir():
            return p
    return path


def check_output_dir(path: "str | os.PathLike[str]") -> Path:
    """Create the output folder `path` if needed and write and delete a small file there, so
    that a folder that cannot hold results fails before any training: UserError naming the
    path and the fix (a file in the way, no permission, read-only, full)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"output folder {path} cannot be created: {_file_in_the_way(path)} is "
                        "a file, not a folder; choose another output folder (--out)") from None
    except OSError as e:
        raise _output_error(e, path) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".dmlbench-write-check-", suffix=".tmp", dir=path)
    except OSError as e:
        raise _output_error(e, path) from None
    try:
        try:
            os.write(fd, b"dmlbench write check\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _output_error(e, path) from None
    finally:
        try:
            os.unlink(probe)
        except FileNotFoundError:
            pass
    return path


def _output_error(e: OSError, path: Path) -> "UserError | OSError":
    why = {errno.EACCES: "is not writable (permission denied); make it writable "
                         f"(chmod u+w {path}) or choose another output folder (--out)",
           errno.EPERM: "is not writable (operation not permitted); choose another output "
                        "folder (--out)",
           errno.EROFS: "is on a read-only file system; choose another output folder (--out)",
           errno.ENOSPC: "is on a full disk (no space left on device); free some space or "
                         "choose another output folder (--out)",
           errno.EDQUOT: "is over its disk quota; free some space or choose another output "
                         "folder (--out)"}.get(e.errno)
    if why is None:
        return e
    return UserError(f"output folder {path} {why}")


# ----------------------------------------------------------------------------- locks

LOCK_FILE = "run.lock"
# lock files this process holds: path -> [fd, depth]; a nested lock of the same file is free
_HELD: dict[str, list[int]] = {}


class RunHeld(UserError):
    """Another process holds the lock; `holder` says who ("pid N on HOST"), where known."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path.parent} is being written by another process ({holder}); "
                         "wait for it to finish, or use another output folder")
        self.path = path
        self.holder = holder


@contextlib.contextmanager
def file_lock(path: "str | os.PathLike[str]", *, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive OS lock (`flock`) on the file `path` (created, with its folder, if
    needed) for the duration of the block. The kernel releases it when the process ends,
    however it ends (kill -9 too), so a lock is never stale. Another process holding it
    raises `RunHeld`, or with `wait` is waited for. The same process may nest locks of one
    file. The file (and a folder created only for it) is removed on release. Locks work
    between processes of one machine and, where the file system supports flock (NFSv4,
    Lustre with flock), of several."""
    path = Path(path).absolute()
    key = str(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    made = [p for p in [*reversed(path.parent.parents), path.parent] if not p.exists()]
    fd = _acquire(path, wait)
    _HELD[key] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[key]
        try:
            os.unlink(path)  # while still held: a waiter re-checks the path (see _acquire)
        except OSError:
            pass
        os.close(fd)
        for p in reversed(made):  # folders made for the lock alone, if still empty
            try:
                p.rmdir()
            except OSError:
                break


def _acquire(path: Path, wait: bool) -> int:
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, _file_mode())
        except FileNotFoundError:  # its folder was just removed by a releasing process
            continue
        except OSError as e:
            raise disk_error(e, path) or e from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunHeld(path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the file we locked may have been removed (released) in the meantime
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError:
            pass  # only informative
        return fd


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


def run_lock(run_dir: "str | os.PathLike[str]", *, wait: bool = False):
    """The lock of one run (or MLRC reproduction) folder: `file_lock(run_dir / LOCK_FILE)`.
    A process that finds it held skips the run (RunHeld) or, with `wait`, waits for it."""
    return file_lock(Path(run_dir) / LOCK_FILE, wait=wait)


def atomic_write_text(path: "str | os.PathLike[str]", text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically; see `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))
