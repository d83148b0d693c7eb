"""The real DML benchmarks on disk: CUB-200-2011 (`cub`), CARS196 (`cars196`), Stanford Online
Products (`sop`), each in the layout its public archive unpacks to.

Labels are the original class ids ranked in sorted order (0..C-1, i.e. class_id - 1 for the
real data); the conventional split is CUB 1-100 / 101-200, CARS196 1-98 / 99-196 (the first /
second half of the sorted classes) and, for SOP, the classes of Ebay_train.txt / Ebay_test.txt.
Loaders only read the annotation files; `dmlbench datasets check` reads every image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmlbench.bench.data import DMLDataset, register_dataset
from dmlbench.bench.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a real dataset: its folder, its layout in words, and its published counts."""

    title: str
    folder: str                 # the folder `download` creates inside --root
    layout: str                 # the expected layout, for error messages
    images: int
    classes: int
    train_images: int
    test_images: int
    train_classes: int
    test_classes: int

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in COUNT_KEYS}


COUNT_KEYS = ("images", "classes", "train_images", "test_images", "train_classes", "test_classes")

DATASET_INFO: dict[str, DatasetInfo] = {
    "cub": DatasetInfo(
        "CUB-200-2011", "CUB_200_2011",
        "CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, images/}",
        11788, 200, 5864, 5924, 100, 100),
    "cars196": DatasetInfo(
        "CARS196", "CARS196",
        "either cars_annos.mat + car_ims/ (the original Stanford files) or names.csv, "
        "anno_train.csv, anno_test.csv + car_data/car_data/{train,test}/<class name>/ "
        "(the per-class folder layout)",
        16185, 196, 8054, 8131, 98, 98),
    "sop": DatasetInfo(
        "Stanford Online Products", "Stanford_Online_Products",
        "Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, Ebay_info.txt, "
        "<category>_final/}",
        120053, 22634, 59551, 60502, 11318, 11316),
}


def _layout_error(name: str, what: str) -> UserError:
    info = DATASET_INFO[name]
    return UserError(
        f"dataset {name!r}: {what}; expected the {info.title} layout {info.layout}; get it with "
        f"`dmlbench datasets download {name} --root DIR` and verify it with "
        f"`dmlbench datasets check {name} --root DIR`")


def _need_root(name: str, root: str | None) -> Path:
    if root is None:
        raise UserError(f"dataset {name!r} needs a root folder; set dataset.root=/path/to/data "
                        f"(download it with `dmlbench datasets download {name} --root DIR`)")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise UserError(f"dataset {name!r}: root {str(p)!r} is not an existing folder; set "
                        f"dataset.root, or download with `dmlbench datasets download {name} "
                        "--root DIR`")
    return p


def _find_dir(root: Path, folder_names: tuple[str, ...], marker: str) -> Path | None:
    """`root` itself or one of its sub-folders that holds `marker`."""
    for d in (root, *(root / n for n in folder_names)):
        if (d / marker).exists():
            return d
    return None


def _rank(class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ids and each sample's rank among them (contiguous labels 0..C-1)."""
    ids, labels = np.unique(class_ids, return_inverse=True)
    return ids, labels.astype(np.int64)


def _half(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    h = num_classes // 2
    return np.arange(h), np.arange(h, num_classes)


def _no_options(name: str, options: dict, allowed: tuple[str, ...] = ()) -> None:
    extra = sorted(set(options) - set(allowed))
    if extra:
        ok = f"only {', '.join(allowed)}" if allowed else "no options"
        raise UserError(f"dataset {name!r} takes {ok}, got {extra}")


def _read_table(name: str, path: Path, ncols: int, *, header: bool = False,
                sep: str | None = None) -> list[list[str]]:
    """Rows of a whitespace- (or `sep`-) separated text file with at least `ncols` fields."""
    if not path.is_file():
        raise _layout_error(name, f"missing {path}")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, 1):
            if header and i == 1 or not line.strip():
                continue
            fields = line.rstrip("\r\n").split(sep) if sep else line.split()
            if len(fields) < ncols:
                raise UserError(f"dataset {name!r}: {path} line {i} has {len(fields)} fields, "
                                f"expected {ncols}; the file is damaged, download it again")
            rows.append(fields)
    return rows


def _int(name: str, path: Path, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"dataset {name!r}: {path} has a non-integer id {value!r}; the file is "
                        "damaged, download it again") from None


def _need_dir(name: str, d: Path) -> None:
    if not d.is_dir():
        raise _layout_error(name, f"missing the image folder {d}")


# ---------------------------------------------------------------------------------------------
@register_dataset("cub")
def load_cub(root: str | None = None, **options) -> DMLDataset:
    """CUB-200-2011: ROOT (or ROOT/CUB_200_2011) with images.txt, image_class_labels.txt,
    classes.txt (optional) and images/."""
    _no_options("cub", options)
    base = _need_root("cub", root)
    d = _find_dir(base, ("CUB_200_2011",), "images.txt")
    if d is None:
        raise _layout_error("cub", f"no images.txt in {base} or {base / 'CUB_200_2011'}")
    images = _read_table("cub", d / "images.txt", 2)
    labels_rows = _read_table("cub", d / "image_class_labels.txt", 2)
    _need_dir("cub", d / "images")
    rel = {_int("cub", d / "images.txt", r[0]): r[1] for r in images}
    cls = {_int("cub", d / "image_class_labels.txt", r[0]):
           _int("cub", d / "image_class_labels.txt", r[1]) for r in labels_rows}
    if set(rel) != set(cls):
        missing = sorted(set(rel) ^ set(cls))[:5]
        raise UserError(f"dataset 'cub': images.txt and image_class_labels.txt in {d} list "
                        f"different image ids (e.g. {missing}); download the dataset again")
    order = sorted(rel)
    ids, labels = _rank(np.array([cls[i] for i in order], dtype=np.int64))
    names = {}
    if (d / "classes.txt").is_file():
        names = {_int("cub", d / "classes.txt", r[0]): r[1]
                 for r in _read_table("cub", d / "classes.txt", 2)}
    folder_of = {cls[i]: rel[i].split("/")[0] for i in order}
    class_names = [names.get(int(c), folder_of[int(c)]) for c in ids]
    train, test = _half(len(ids))
    return DMLDataset("cub", labels, class_names, train, test,
                      paths=[str(d / "images" / rel[i]) for i in order],
                      meta={"root": str(d), "layout": "cub", "class_ids": ids.tolist()})


# ---------------------------------------------------------------------------------------------
CARS_LAYOUTS = ("auto", "mat", "folders")


@register_dataset("cars196")
def load_cars196(root: str | None = None, *, layout: str = "auto", **options) -> DMLDataset:
    """CARS196: the original cars_annos.mat + car_ims/, or the per-class folder layout
    (names.csv, anno_train.csv, anno_test.csv, car_data/car_data/{train,test}/<class>/).
    The split is by class (1-98 / 99-196), not the file's train/test flag."""
    _no_options("cars196", options)
    if layout not in CARS_LAYOUTS:
        raise UserError(f"dataset 'cars196': layout must be one of {', '.join(CARS_LAYOUTS)}, "
                        f"got {layout!r}")
    base = _need_root("cars196", root)
    subdirs = ("CARS196", "cars196")
    mat = _find_dir(base, subdirs, "cars_annos.mat") if layout in ("auto", "mat") else None
    fold = _find_dir(base, subdirs, "names.csv") if layout in ("auto", "folders") else None
    if mat is not None:
        return _cars_mat(mat)
    if fold is not None:
        return _cars_folders(fold)
    what = {"auto": "cars_annos.mat nor names.csv", "mat": "cars_annos.mat",
            "folders": "names.csv"}[layout]
    raise _layout_error("cars196", f"found neither {what} in {base}" if layout == "auto"
                        else f"no {what} in {base}")


def _cars_mat(d: Path) -> DMLDataset:
    from scipy.io import loadmat

    f = d / "cars_annos.mat"
    try:
        m = loadmat(str(f), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises several types for damaged files
        raise UserError(f"dataset 'cars196': cannot read {f} ({type(e).__name__}: {e}); "
                        "download it again") from None
    if "annotations" not in m:
        raise UserError(f"dataset 'cars196': {f} has no 'annotations' struct; is it the "
                        "CARS196 cars_annos.mat?")
    annos = np.atleast_1d(m["annotations"])
    try:
        rel = [str(a.relative_im_path) for a in annos]
        cls = np.array([int(getattr(a, "class")) for a in annos], dtype=np.int64)
    except AttributeError as e:
        raise UserError(f"dataset 'cars196': {f} annotations lack a field ({e}); expected "
                        "relative_im_path, class, test") from None
    ids, labels = _rank(cls)
    raw_names = [str(n) for n in np.atleast_1d(m["class_names"])] if "class_names" in m else []
    class_names = [raw_names[c - 1] if 0 < c <= len(raw_names) else str(c) for c in ids]
    if not rel:
        raise _layout_error("cars196", f"{f} lists no images")
    _need_dir("cars196", d / Path(rel[0]).parent)
    train, test = _half(len(ids))
    return DMLDataset("cars196", labels, class_names, train, test,
                      paths=[str(d / r) for r in rel],
                      meta={"root": str(d), "layout": "mat", "class_ids": ids.tolist()})


def cars_folder_name(class_name: str) -> str:
    """The folder of a class in the per-class layout ('/' in a name becomes '-')."""
    return class_name.replace("/", "-")


def _cars_folders(d: Path) -> DMLDataset:
    names = [r[0].strip() for r in _read_table("cars196", d / "names.csv", 1, sep="\n")]
    paths, cls = [], []
    for split in ("train", "test"):
        f = d / f"anno_{split}.csv"
        img_dir = d / "car_data" / "car_data" / split
        rows = _read_table("cars196", f, 2, sep=",")
        _need_dir("cars196", img_dir)
        for r in rows:
            c = _int("cars196", f, r[-1].strip())
            if not 1 <= c <= len(names):
                raise UserError(f"dataset 'cars196': {f} has class {c} but names.csv lists "
                                f"{len(names)} classes; download the dataset again")
            paths.append(str(img_dir / cars_folder_name(names[c - 1]) / r[0].strip()))
            cls.append(c)
    ids, labels = _rank(np.array(cls, dtype=np.int64))
    train, test = _half(len(ids))
    return DMLDataset("cars196", labels, [names[c - 1] for c in ids], train, test, paths=paths,
                      meta={"root": str(d), "layout": "folders", "class_ids": ids.tolist()})


# ---------------------------------------------------------------------------------------------
@register_dataset("sop")
def load_sop(root: str | None = None, **options) -> DMLDataset:
    """Stanford Online Products: ROOT (or ROOT/Stanford_Online_Products) with Ebay_train.txt and
    Ebay_test.txt (columns image_id class_id super_class_id path). Both files are merged; the
    conventional split is by file (11,318 / 11,316 classes)."""
    _no_options("sop", options)
    base = _need_root("sop", root)
    d = _find_dir(base, ("Stanford_Online_Products",), "Ebay_train.txt")
    if d is None:
        raise _layout_error("sop", f"no Ebay_train.txt in {base} or "
                            f"{base / 'Stanford_Online_Products'}")
    paths, cls, sup, split_cls = [], [], [], {}
    for split in ("train", "test"):
        f = d / f"Ebay_{split}.txt"
        rows = _read_table("sop", f, 4, header=True)
        split_cls[split] = {_int("sop", f, r[1]) for r in rows}
        paths += [str(d / r[3]) for r in rows]
        cls += [_int("sop", f, r[1]) for r in rows]
        sup += [_int("sop", f, r[2]) for r in rows]
    if split_cls["train"] & split_cls["test"]:
        raise UserError(f"dataset 'sop': Ebay_train.txt and Ebay_test.txt in {d} share classes; "
                        "the files are damaged, download the dataset again")
    if paths:
        _need_dir("sop", Path(paths[0]).parent)
    ids, labels = _rank(np.array(cls, dtype=np.int64))
    pos = {int(c): i for i, c in enumerate(ids)}
    train = np.array(sorted(pos[c] for c in split_cls["train"]), dtype=np.int64)
    test = np.array(sorted(pos[c] for c in split_cls["test"]), dtype=np.int64)
    return DMLDataset("sop", labels, [str(c) for c in ids], train, test, paths=paths,
                      meta={"root": str(d), "layout": "sop", "class_ids": ids.tolist(),
                            "super_class_ids": np.array(sup, dtype=np.int64)})


def dataset_dir(ds: DMLDataset) -> Path:
    """The folder a loaded real dataset was read from."""
    return Path(ds.meta["root"])
