"""User data: an image folder per class (`folder`), or a CSV of `path,label[,split]` (`csv`).

Classes are sorted by name; without a `split` column the first half of the classes trains
and the second half tests (class-disjoint, like CUB/CARS). Images are decoded lazily by the
training loop; a missing or unreadable file is reported there by path.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from dmlbench.bench.data import DMLDataset, register_dataset
from dmlbench.bench.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _need_root(name: str, root: str | None) -> Path:
    if root is None:
        raise UserError(f"dataset {name!r} needs a root folder; set dataset.root=/path/to/data")
    p = Path(root).expanduser()
    if not p.exists():
        raise UserError(f"dataset root {str(p)!r} does not exist; check dataset.root")
    return p


def _half_split(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    half = num_classes // 2
    return np.arange(half), np.arange(half, num_classes)


@register_dataset("folder")
def load_folder(root: str | None = None, **options) -> DMLDataset:
    """ROOT/<class name>/<image files>: one sub-folder per class."""
    p = _need_root("folder", root)
    if options:
        raise UserError(f"dataset 'folder' takes no options, got {sorted(options)}")
    if not p.is_dir():
        raise UserError(f"dataset root {str(p)!r} is not a folder; 'folder' expects "
                        "ROOT/<class name>/<images>")
    classes = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for c, name in enumerate(classes):
        files = sorted(f for f in (p / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(f) for f in files]
        labels += [c] * len(files)
    if len(classes) < 2 or not paths:
        raise UserError(f"dataset root {str(p)!r} has the wrong layout: expected at least two "
                        "class sub-folders with images (ROOT/<class name>/<image files>)")
    train, test = _half_split(len(classes))
    return DMLDataset("folder", np.array(labels), classes, train, test, paths=paths,
                      meta={"root": str(p)})


@register_dataset("csv")
def load_csv(root: str | None = None, *, file: str = "labels.csv", **options) -> DMLDataset:
    """ROOT/labels.csv with columns path,label and optionally split (train|test); paths are
    relative to ROOT unless absolute."""
    p = _need_root("csv", root)
    if options:
        raise UserError(f"dataset 'csv' takes only the option `file`, got {sorted(options)}")
    f = p / file if p.is_dir() else p
    base = f.parent
    try:
        with open(f, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise UserError(f"CSV file {str(f)!r} not found; put labels.csv in the dataset root or "
                        "set dataset.options.file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"CSV file {str(f)!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} "
                        f"at position {e.start}); save it as UTF-8") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise UserError(f"CSV file {str(f)!r} needs a header with columns path,label[,split]")
    for i, r in enumerate(rows, 2):
        if not r["path"] or not r["label"]:
            raise UserError(f"CSV file {str(f)!r} line {i}: a row needs a path and a label "
                            "(columns path,label[,split])")
    names = sorted({r["label"] for r in rows})
    if len(names) < 2:
        raise UserError(f"CSV file {str(f)!r} names {len(names)} class; a run needs at least "
                        "two (training and test classes are disjoint)")
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index[r["label"]] for r in rows])
    paths = [r["path"] if Path(r["path"]).is_absolute() else str(base / r["path"]) for r in rows]
    if "split" in rows[0]:
        bad = {r["split"] for r in rows} - {"train", "test"}
        if bad:
            raise UserError(f"CSV file {str(f)!r}: split must be train or test, got "
                            f"{sorted(map(str, bad))}")
        tr = sorted({index[r["label"]] for r in rows if r["split"] == "train"})
        te = sorted({index[r["label"]] for r in rows if r["split"] == "test"})
        if set(tr) & set(te):
            raise UserError(f"CSV file {str(f)!r}: classes must not be in both splits "
                            "(deep metric learning splits are class-disjoint)")
        for role, got in (("train", tr), ("test", te)):
            if not got:
                raise UserError(f"CSV file {str(f)!r} has no rows with split={role}: a run needs "
                                f"both train and test classes; mark some classes {role}, or "
                                "drop the split column (then the first half of the classes "
                                "trains and the second half tests)")
        train, test = np.array(tr), np.array(te)
    else:
        train, test = _half_split(len(names))
    return DMLDataset("csv", labels, names, train, test, paths=paths,
                      meta={"root": str(base),
                            "check_root": str(f if file != "labels.csv" else base)})
