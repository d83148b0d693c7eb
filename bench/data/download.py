"""Download, verify, extract and check the real benchmarks (`dmlbench datasets download|check`).

`download(name, root)` streams the public archive to ROOT/<file>.part with a progress bar
(an interrupted transfer resumes with an HTTP Range request), verifies its published checksum
(or, where none is published, the file counts after extraction), extracts it into a temporary
folder inside ROOT, refusing any member that is absolute, escapes the folder, or is a link or a
device, and renames the dataset folder into place only when everything succeeded.

`check(name, root)` verifies the layout and the image / class counts and decodes every image
once, reporting unreadable ones by path.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

from dmlbench.bench.data.real import COUNT_KEYS, DATASET_INFO, DatasetInfo  # noqa: F401  (re-exported)
from dmlbench.bench.errors import UserError

CHUNK = 1 << 20
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


# `check` also takes the user's own on-disk datasets: layout and images, no published counts.
LOCAL_DATASETS = ("folder", "csv")
CHECKABLE = (*DATASET_INFO, *LOCAL_DATASETS)


def _info(name: str) -> DatasetInfo:
    if name not in DATASET_INFO:
        from dmlbench.bench.errors import unknown_name

        raise unknown_name("downloadable dataset", name, list(DATASET_INFO))
    return DATASET_INFO[name]


# ---------------------------------------------------------------------------------------------
# download
def download(name: str, root: str | os.PathLike, *, progress: bool = True,
             archive: Archive | None = None, expected: Mapping[str, int] | None = None,
             keep_archive: bool = False) -> Path:
    """Download, verify and extract dataset `name` into ROOT; returns the dataset folder.

    Does nothing when the folder is already there with the right counts. `archive` and
    `expected` replace the built-in archive and the published counts (tests, mirrors)."""
    _info(name)
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


# ---------------------------------------------------------------------------------------------
# check
@dataclass
class CheckReport:
    """Result of `check`: counts found vs. expected, unreadable images, and a verdict."""

    name: str
    root: str
    counts: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)      # layout and count problems
    missing: list[str] = field(default_factory=list)       # listed image files not on disk
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: list[str] = field(default_factory=list)
    images_read: int = 0

    @property
    def ok(self) -> bool:
        return not (self.problems or self.missing or self.unreadable)

    def format(self, max_listed: int = 20) -> str:
        title = DATASET_INFO[self.name].title if self.name in DATASET_INFO else self.name
        lines = [f"{title} at {self.root}: {'OK' if self.ok else 'PROBLEMS FOUND'}"]
        for k in COUNT_KEYS:
            if k in self.counts:
                exp = self.expected.get(k)
                mark = "" if exp is None or exp == self.counts[k] else f"  MISMATCH: expected {exp:,}"
                lines.append(f"  {k.replace('_', ' ')}: {self.counts[k]:,}{mark}")
        if self.images_read:
            lines.append(f"  images decoded: {self.images_read:,}")
        shown = tuple(f"{k.replace('_', ' ')}: found " for k in self.counts)
        lines += [f"  problem: {p}" for p in self.problems if not p.startswith(shown)]
        for label, items in (("missing image", self.missing),
                             ("unreadable image", [f"{p} ({r})" for p, r in self.unreadable])):
            lines += [f"  {label}: {x}" for x in items[:max_listed]]
            if len(items) > max_listed:
                lines.append(f"  ... and {len(items) - max_listed} more {label}s")
        lines += [f"  note: {n}" for n in self.notes]
        if not self.ok:
            lines.append(f"  fix: {self.fix()}")
        return "\n".join(lines)

    def fix(self) -> str:
        """How to fix the problems found, in words."""
        if self.name not in DATASET_INFO:
            return ("replace or remove the image files listed"
                    + (" (and their rows of the CSV file)" if self.name == "csv" else ""))
        return (f"replace the files listed, or download again with "
                f"`dmlbench datasets download {self.name} --root DIR`")

    def summary(self) -> str:
        """The problems found, counted, in one line."""
        parts = [f"{len(self.problems)} layout or count problem" if self.problems else "",
                 f"{len(self.missing)} missing image" if self.missing else "",
                 f"{len(self.unreadable)} unreadable image" if self.unreadable else ""]
        parts = [p + ("s" if not p.startswith("1 ") else "") for p in parts if p]
        return ", ".join(parts) or "no problems"


def count(ds) -> dict[str, int]:
    """The six counts of a loaded dataset under its conventional split."""
    return {"images": len(ds), "classes": ds.num_classes,
            "train_images": len(ds.indices_of(ds.train_classes)),
            "test_images": len(ds.indices_of(ds.test_classes)),
            "train_classes": len(ds.train_classes), "test_classes": len(ds.test_classes)}


def _expected(name: str, expected: Mapping[str, int] | None) -> dict[str, int]:
    exp = DATASET_INFO[name].counts() if name in DATASET_INFO else {}
    if expected is not None:
        unknown = set(expected) - set(COUNT_KEYS)
        if unknown:
            raise ValueError(f"unknown count keys {sorted(unknown)}; valid: {COUNT_KEYS}")
        exp.update(expected)
    return exp


def layout_problems(name: str, root: str, expected: Mapping[str, int] | None = None
                    ) -> list[str]:
    """Layout and count problems of the dataset at `root` (annotation files only; no decoding)."""
    from dmlbench.bench.data import load_dataset

    try:
        ds = load_dataset(name, root)
    except UserError as e:
        return [str(e)]
    got, exp = count(ds), _expected(name, expected)
    return [f"{k.replace('_', ' ')}: found {got[k]:,}, expected {exp[k]:,}"
            for k in COUNT_KEYS if got[k] != exp[k]]


def read_image(path: str) -> str | None:
    """Decode one image fully; the reason it cannot be read, or None."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone switched PIL to lenient mode
        return "cannot check: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                # decode at 1/8 scale: every byte is still read, truncation still detected
                im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except FileNotFoundError:
        return "missing"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    except Image.DecompressionBombError as e:  # pragma: no cover - huge images
        return f"{type(e).__name__}: {e}"
    return None


def check(name: str, root: str | os.PathLike, *, expected: Mapping[str, int] | None = None,
          read_images: bool = True, workers: int | None = None, progress: bool = True
          ) -> CheckReport:
    """Verify the layout and counts of dataset `name` at `root` and decode every image once.

    `expected` overrides some or all of the published counts (DATASET_INFO); the user's own
    datasets (`folder`, `csv`) have none unless given."""
    from dmlbench.bench.data import load_dataset

    if name not in LOCAL_DATASETS:
        _info(name)
    report = CheckReport(name, str(root), expected=_expected(name, expected))
    try:
        ds = load_dataset(name, str(root))
    except UserError as e:
        report.problems.append(str(e))
        return report
    report.root = ds.meta.get("root", str(root))
    report.counts = count(ds)
    report.problems += [f"{k.replace('_', ' ')}: found {report.counts[k]:,}, expected "
                        f"{report.expected[k]:,}"
                        for k in COUNT_KEYS
                        if k in report.expected and report.counts[k] != report.expected[k]]
    if name == "sop":
        _check_sop_info(Path(report.root), len(ds), report)
    if ds.meta.get("layout"):
        report.notes.append(f"layout: {ds.meta['layout']}")
    if read_images:
        for path, why in _read_all(ds.paths, workers, progress):
            (report.missing.append(path) if why == "missing"
             else report.unreadable.append((path, why)))
        report.images_read = len(ds.paths) - len(report.missing) - len(report.unreadable)
    return report


def _read_all(paths: list[str], workers: int | None, progress: bool
              ) -> Iterable[tuple[str, str]]:
    from tqdm import tqdm

    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), unit="img",
                                                   desc="reading images", disable=not progress,
                                                   leave=False) as bar:
        for path, why in zip(paths, pool.map(read_image, paths, chunksize=64)):
            bar.update(1)
            if why is not None:
                yield path, why


def _check_sop_info(d: Path, n: int, report: CheckReport) -> None:
    info = d / "Ebay_info.txt"
    if not info.is_file():
        report.notes.append(f"{info} not found (not needed for training)")
        return
    with open(info, encoding="utf-8", errors="replace") as fh:
        rows = sum(1 for line in fh if line.strip()) - 1
    if rows != n:
        report.problems.append(f"Ebay_info.txt lists {rows:,} images but Ebay_train.txt + "
                               f"Ebay_test.txt list {n:,}")


__all__ = ["ARCHIVES", "Archive", "CHECKABLE", "CheckReport", "DATASET_INFO", "check", "download",
           "fetch", "safe_extract", "verify_md5", "read_image"]
