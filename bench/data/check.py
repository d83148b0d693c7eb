"""Checking a dataset on disk (`dmlbench datasets check`): its layout, its image and class
counts against the published ones, and every image decoded once, unreadable ones reported by
path."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from dmlbench.bench.data.real import COUNT_KEYS, DATASET_INFO, DatasetInfo
from dmlbench.bench.errors import UserError

__all__ = ["CHECKABLE", "LOCAL_DATASETS", "CheckReport", "check", "count", "dataset_info",
           "layout_problems", "read_image"]

# `check` also takes the user's own on-disk datasets: layout and images, no published counts.
LOCAL_DATASETS = ("folder", "csv")
CHECKABLE = (*DATASET_INFO, *LOCAL_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The published facts of a downloadable dataset; UserError naming the valid ones."""
    if name not in DATASET_INFO:
        from dmlbench.bench.errors import unknown_name

        raise unknown_name("downloadable dataset", name, list(DATASET_INFO))
    return DATASET_INFO[name]


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
        dataset_info(name)
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
