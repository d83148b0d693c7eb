"""Download, verify, extract and check the real benchmarks (`dmlbench datasets download|check`).

`download(name, root)` streams the public archive to ROOT/<file>.part with a progress bar
(an interrupted transfer resumes with an HTTP Range request), verifies its published checksum
(or, where none is published, the file counts after extraction), extracts it into a temporary
folder inside ROOT, refusing any member that is absolute, escapes the folder, or is a link or a
device, and renames the dataset folder into place only when everything succeeded.

`check(name, root)` verifies the layout and the image / class counts and decodes every image
once, reporting unreadable ones by path (`bench.data.check`; safe extraction is in
`bench.data.extract`; both re-exported here).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from dmlbench.bench.data.check import (CHECKABLE, CheckReport, check, dataset_info,
                                       layout_problems, read_image)
from dmlbench.bench.data.extract import CHUNK, safe_extract
from dmlbench.bench.data.real import DATASET_INFO
from dmlbench.bench.errors import UserError

USER_AGENT = "dmlbench/0.1 (+https://github.com/; python-urllib)"


@dataclass(frozen=True)
class Archive:
    """One downloadable archive of a dataset.

    `member` is the folder inside the archive that becomes ROOT/`dest`; None means the whole
    archive content is the dataset (it has no top-level folder)."""

    urls: tuple[str, ...]
    filename: str
    kind: str                           # "tar" (any compression) or "zip"
    dest: str
    member: str | None
    md5: str | None = None              # published checksum, when one exists
    size: int | None = None             # published size in bytes, when known
    source: str = ""                    # where the URL / checksum come from
    page: str = ""                      # the human download page, for manual downloads


ARCHIVES: dict[str, Archive] = {
    "cub": Archive(
        urls=("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",),
        filename="CUB_200_2011.tgz", kind="tar", dest="CUB_200_2011", member="CUB_200_2011",
        md5="97eceeb196236b17998738112f37df78", size=1150585339,
        source="CaltechDATA record 65de6-vp158 (the URL pytorch-metric-learning uses); md5 as "
               "published by torchvision-style CUB dataset classes; size from TFDS",
        page="https://data.caltech.edu/records/65de6-vp158"),
    "cars196": Archive(
        urls=("https://www.kaggle.com/api/v1/datasets/download/jutrera/"
              "stanford-car-dataset-by-classes-folder",),
        filename="stanford-car-dataset-by-classes-folder.zip", kind="zip", dest="CARS196",
        member=None, md5=None, size=None,
        source="the Kaggle mirror pytorch-metric-learning downloads (the Stanford URLs are "
               "dead); no published checksum, so file counts are verified after extraction",
        page="https://www.kaggle.com/datasets/jutrera/stanford-car-dataset-by-classes-folder"),
    "sop": Archive(
        urls=("http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
              # the Google Drive copy linked from the authors' README (what PML downloads)
              "https://drive.usercontent.google.com/download?id=1TclrpQOF_ullUP99wk_gjGN8pKvtErG8"
              "&export=download&authuser=0&confirm=t"),
        filename="Stanford_Online_Products.zip", kind="zip", dest="Stanford_Online_Products",
        member="Stanford_Online_Products", md5="7f73d41a2f44250d4779881525aea32e",
        size=3083860082,
        source="Stanford CVGL (cvgl.stanford.edu/projects/lifted_struct); md5 as published by "
               "several SOP dataset classes; size from TFDS",
        page="https://cvgl.stanford.edu/projects/lifted_struct/"),
}


# ---------------------------------------------------------------------------------------------
# download
def download(name: str, root: str | os.PathLike, *, progress: bool = True,
             archive: Archive | None = None, expected: Mapping[str, int] | None = None,
             keep_archive: bool = False) -> Path:
    """Download, verify and extract dataset `name` into ROOT; returns the dataset folder.

    Does nothing when the folder is already there with the right counts. `archive` and
    `expected` replace the built-in archive and the published counts (tests, mirrors)."""
    dataset_info(name)
    spec = archive or ARCHIVES[name]
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    dest = root / spec.dest
    if not dest.exists() and not layout_problems(name, str(root), expected):
        return root                      # ROOT is the dataset folder itself, complete
    if dest.exists():
        problems = layout_problems(name, str(dest), expected)
        if problems:
            raise UserError(f"{dest} already exists but is not a complete {name} dataset "
                            f"({problems[0]}); remove it and download again")
        return dest
    path = root / spec.filename
    if not path.exists():
        fetch(spec, path, progress=progress)
    elif spec.md5 is not None:
        try:
            verify_md5(path, spec.md5)
        except UserError:
            path.unlink()
            raise
    extract_verified(name, spec, path, root, expected)
    if not keep_archive:
        path.unlink(missing_ok=True)
    return dest


def fetch(spec: Archive, path: Path, *, progress: bool = True) -> None:
    """Download `spec` to `path` via `path`.part (resumed if present), then verify it.

    A failed transfer keeps the .part file for resuming; a checksum or size mismatch deletes it
    (resuming a corrupt file cannot help)."""
    part = path.with_name(path.name + ".part")
    errors = []
    for url in spec.urls:
        try:
            _stream(url, part, spec, progress=progress)
            break
        except _Retryable as e:
            errors.append(f"{url}: {e}")
    else:
        have = part.stat().st_size if part.exists() else 0
        kept = (f"; the {have:,} bytes received are kept in {part} and the next run resumes"
                if have else "")
        manual = (f", or download it by hand from {spec.page} and put it at {path}"
                  if spec.page else "")
        raise UserError(f"cannot download {spec.filename} ({'; '.join(errors)}){kept}; check "
                        f"the network and run the command again{manual}")
    if spec.size is not None and part.stat().st_size != spec.size:
        got = part.stat().st_size
        part.unlink()
        raise UserError(f"downloaded {spec.filename} has {got:,} bytes, expected "
                        f"{spec.size:,}; the file was deleted, run the command again")
    if spec.md5 is not None:
        try:
            verify_md5(part, spec.md5)
        except UserError:
            part.unlink()
            raise
    os.replace(part, path)


class _Retryable(Exception):
    """A network problem: try the next URL, keep the .part file."""


def _open(url: str, offset: int):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=60)


def _stream(url: str, part: Path, spec: Archive, *, progress: bool) -> None:
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    if spec.size is not None and offset == spec.size:
        return
    if spec.size is not None and offset > spec.size:
        part.unlink()
        offset = 0
    try:
        if urllib.parse.urlsplit(url).scheme == "file":
            resp = open(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), "rb")
            total = os.fstat(resp.fileno()).st_size
            resp.seek(min(offset, total))
        else:
            try:
                resp = _open(url, offset)
            except urllib.error.HTTPError as e:
                if e.code != 416 or not offset:
                    raise
                # 416: the range starts at or past the end; the .part may be complete already
                # (unknown size) or stale: start again from zero
                if spec.size is None and spec.md5 is not None and _md5(part) == spec.md5:
                    return
                part.unlink()
                offset = 0
                resp = _open(url, 0)
            status = getattr(resp, "status", 200)
            if offset and status != 206:          # the server ignored the range: start over
                offset = 0
            elif offset and not resp.headers.get("Content-Range", "").startswith(
                    f"bytes {offset}-"):
                resp.close()
                raise _Retryable(f"server answered a resume with the wrong range "
                                 f"({resp.headers.get('Content-Range')!r})")
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else spec.size
    except urllib.error.HTTPError as e:
        raise _Retryable(f"HTTP {e.code} {e.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
        raise _Retryable(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    with resp:
        if total is not None:
            _need_space(part.parent, total - offset + total, spec.filename)
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=spec.filename, disable=not progress, leave=False)
        with bar, open(part, "ab" if offset else "wb") as out:
            try:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, ValueError, http.client.HTTPException) as e:
                raise _Retryable(f"transfer interrupted ({type(e).__name__}: {e})") from None
            except KeyboardInterrupt:
                out.flush()
                raise UserError(f"download of {spec.filename} interrupted; the "
                                f"{out.tell():,} bytes received are kept in {part} and the next "
                                "run resumes") from None
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Retryable(f"transfer ended early ({got:,} of {total:,} bytes)")


def _need_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UserError(f"not enough disk space in {folder} for {what}: need about "
                        f"{needed / 2**30:.1f} GiB (download + extraction), "
                        f"{free / 2**30:.1f} GiB free; free some space or choose another --root")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    """UserError unless the file's md5 is `md5`."""
    got = _md5(path)
    if got != md5.lower():
        raise UserError(f"checksum mismatch for {path.name}: md5 {got}, expected {md5}; the "
                        "download is corrupt or the archive changed upstream; it was deleted "
                        "and nothing was extracted; run the command again")


# ---------------------------------------------------------------------------------------------
# extraction
def extract_verified(name: str, spec: Archive, path: Path, root: Path,
                     expected: Mapping[str, int] | None = None) -> Path:
    """Extract `path` into a temp folder in `root`, check the counts, rename into place."""
    dest = root / spec.dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.dest}.extract-", dir=root))
    try:
        try:
            safe_extract(path, tmp, kind=spec.kind)
        except OSError as e:
            raise UserError(f"cannot extract {path.name} into {root} ({type(e).__name__}: {e}); "
                            "nothing was installed; free disk space or fix permissions and run "
                            "the command again") from None
        src = tmp / spec.member if spec.member else tmp
        if not src.is_dir():
            raise UserError(f"{path.name} has no folder {spec.member}/; it is not the expected "
                            f"{name} archive; remove {path} and download again")
        problems = layout_problems(name, str(src), expected)
        if problems:
            raise UserError(f"{path.name} does not unpack to a complete {name} dataset "
                            f"({'; '.join(problems)}); nothing was installed; remove {path} and "
                            "download again")
        os.replace(src, dest)  # the one step that makes the dataset appear
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


__all__ = ["ARCHIVES", "Archive", "CHECKABLE", "CheckReport", "DATASET_INFO", "check", "download",
           "fetch", "safe_extract", "verify_md5", "read_image"]
