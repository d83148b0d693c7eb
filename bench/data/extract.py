"""Safe extraction of tar and zip archives: every member is checked (no absolute path, no '..'
escape, no link, device or other special file) before anything is written."""
from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dmlbench.bench.errors import UserError

__all__ = ["CHUNK", "safe_extract"]

CHUNK = 1 << 20


def _unsafe_name(name: str) -> str | None:
    """Why an archive member name must not be extracted, or None."""
    if not name or "\x00" in name:
        return "an empty or NUL name"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "a '..' path that escapes the target folder"
    return None


def _target(base: Path, name: str) -> Path:
    t = (base / name.replace("\\", "/")).resolve()
    if t != base and base not in t.parents:
        raise UserError(f"archive member {name!r} would be written outside {base}; refusing")
    return t


def _tar_members(tf: tarfile.TarFile):
    """(name, what makes it special or None, is a folder, opener) of each tar member."""
    for m in tf.getmembers():
        if m.issym() or m.islnk():
            special = f"a {'symbolic' if m.issym() else 'hard'} link to {m.linkname!r}"
        elif not (m.isfile() or m.isdir()):
            special = "a device, FIFO or other special file"
        else:
            special = None
        yield m.name, special, m.isdir(), (lambda m=m: tf.extractfile(m))


def _zip_members(zf: zipfile.ZipFile):
    """(name, what makes it special or None, is a folder, opener) of each zip member."""
    for i in zf.infolist():
        mode = i.external_attr >> 16
        special = None
        if i.create_system == 3 and stat.S_ISLNK(mode):
            special = "a symbolic link"
        elif i.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            special = "a device, FIFO or other special file"
        yield i.filename, special, i.is_dir(), (lambda i=i: zf.open(i))


def safe_extract(path: Path, dest: Path, *, kind: str) -> None:
    """Extract a tar or zip archive into `dest` after checking every member; any absolute path,
    '..' escape, link, device or other special member refuses the whole archive before
    anything is written."""
    dest = dest.resolve()
    if kind not in ("tar", "zip"):
        raise ValueError(f"unknown archive kind {kind!r}")
    try:
        with (tarfile.open(path, "r:*") if kind == "tar" else zipfile.ZipFile(path)) as archive:
            members = list(_tar_members(archive) if kind == "tar" else _zip_members(archive))
            for name, special, _, _ in members:
                why = _unsafe_name(name) or special
                if why:
                    raise UserError(f"refusing to extract {path.name}: member {name!r} is {why}; "
                                    "the archive is unsafe or corrupt")
                _target(dest, name)
            for name, _, is_dir, open_member in members:
                t = _target(dest, name)
                if is_dir:
                    t.mkdir(parents=True, exist_ok=True)
                    continue
                t.parent.mkdir(parents=True, exist_ok=True)
                with open_member() as src, open(t, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise UserError(f"cannot extract {path.name} ({type(e).__name__}: {e}); the archive is "
                        f"corrupt; remove {path} and download again") from None
