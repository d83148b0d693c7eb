"""Real-benchmark loaders (CUB-200-2011, CARS196 in both layouts, SOP) and `check`, on tiny
fixture trees written in each dataset's exact on-disk layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmlbench.bench.data import load_dataset
from dmlbench.bench.data.download import DATASET_INFO, check, read_image
from dmlbench.bench.errors import UserError
from dmlbench.protocols.splits import mlrc_folds

# ---------------------------------------------------------------------------------------------
# fixture trees (also used by tests/test_download.py)


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def cub_counts(per_class: list[int]) -> dict[str, int]:
    c = len(per_class)
    return {"images": sum(per_class), "classes": c, "train_images": sum(per_class[:c // 2]),
            "test_images": sum(per_class[c // 2:]), "train_classes": c // 2,
            "test_classes": c - c // 2}


CUB_PER_CLASS = [3, 2, 4, 2, 3, 3, 2, 4]          # 8 classes, 23 images


def build_cub(parent: Path, per_class: list[int] = CUB_PER_CLASS) -> Path:
    """parent/CUB_200_2011 with images.txt, image_class_labels.txt, classes.txt, images/."""
    d = parent / "CUB_200_2011"
    images, labels, classes = [], [], []
    k = 0
    for c, n in enumerate(per_class, 1):
        folder = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {folder}")
        for j in range(n):
            k += 1
            rel = f"{folder}/Bird_{c}_{j:04d}_{1000 + k}.jpg"
            write_jpeg(d / "images" / rel, k)
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c}")
    (d / "images.txt").write_text("\n".join(images) + "\n")
    # the real files list ids in order; reversing one checks that ids, not lines, are matched
    (d / "image_class_labels.txt").write_text("\n".join(reversed(labels)) + "\n")
    (d / "classes.txt").write_text("\n".join(classes) + "\n")
    (d / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in range(1, k + 1)))
    return d


CARS_PER_CLASS = [3, 2, 2, 3, 2, 4, 2, 3]           # 8 classes, 21 images
CARS_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi S4 Sedan 2007",
              "BMW M3 Coupe 2012", "Ram C/V Cargo Van Minivan 2012",
              "Spyker C8 Convertible 2009", "Tesla Model S Sedan 2012",
              "smart fortwo Convertible 2012"]


def build_cars_mat(d: Path, per_class: list[int] = CARS_PER_CLASS) -> Path:
    """d/cars_annos.mat (struct 'annotations' as in the original file) and d/car_ims/."""
    from scipy.io import savemat

    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    n = sum(per_class)
    annos = np.zeros((1, n), dtype=[(f, "O") for f in fields])
    # interleave classes like the real file, and set the test flag so that it contradicts
    # the class split (the DML split must ignore it)
    order = [(c, j) for j in range(max(per_class)) for c in range(1, len(per_class) + 1)
             if j < per_class[c - 1]]
    for i, (c, j) in enumerate(order):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_jpeg(d / rel, 500 + i)
        annos[0, i] = (rel, np.uint8(1), np.uint8(2), np.uint16(20), np.uint16(14),
                       np.uint8(c), np.uint8(j % 2))
    names = np.empty((1, len(per_class)), dtype=object)
    for c in range(len(per_class)):
        names[0, c] = CARS_NAMES[c]
    savemat(str(d / "cars_annos.mat"), {"annotations": annos, "class_names": names})
    return d


def build_cars_folders(d: Path, per_class: list[int] = CARS_PER_CLASS) -> Path:
    """The per-class folder layout of PML's CARS196 downloader (the Kaggle archive):
    names.csv, anno_{train,test}.csv, car_data/car_data/{train,test}/<name, '/'->'-'>/<file>."""
    (d).mkdir(parents=True, exist_ok=True)
    (d / "names.csv").write_text("\n".join(CARS_NAMES[:len(per_class)]) + "\n")
    counters = {"train": 0, "test": 0}
    rows = {"train": [], "test": []}
    for c, n in enumerate(per_class, 1):
        for j in range(n):
            split = "train" if j % 2 == 0 else "test"
            counters[split] += 1
            fname = f"{counters[split]:05d}.jpg"
            folder = CARS_NAMES[c - 1].replace("/", "-")
            write_jpeg(d / "car_data" / "car_data" / split / folder / fname, 900 + 10 * c + j)
            rows[split].append(f"{fname},3,4,20,14,{c}")
    for split in ("train", "test"):
        (d / f"anno_{split}.csv").write_text("\n".join(rows[split]) + "\n")
    return d


SOP_SUPER = ["bicycle_final", "cabinet_final", "chair_final"]
SOP_TRAIN_PER_CLASS = [2, 3, 2, 2, 3]               # classes 1..5
SOP_TEST_PER_CLASS = [2, 2, 3, 2]                   # classes 6..9


def sop_counts() -> dict[str, int]:
    tr, te = SOP_TRAIN_PER_CLASS, SOP_TEST_PER_CLASS
    return {"images": sum(tr) + sum(te), "classes": len(tr) + len(te), "train_images": sum(tr),
            "test_images": sum(te), "train_classes": len(tr), "test_classes": len(te)}


def build_sop(parent: Path) -> Path:
    """parent/Stanford_Online_Products with Ebay_{train,test,info}.txt and <super>_final/."""
    d = parent / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path"
    lines = {"train": [header], "test": [header]}
    info = [header]
    k, cls = 0, 0
    for split, per_class in (("train", SOP_TRAIN_PER_CLASS), ("test", SOP_TEST_PER_CLASS)):
        for n in per_class:
            cls += 1
            sup = cls % len(SOP_SUPER)
            for j in range(n):
                k += 1
                rel = f"{SOP_SUPER[sup]}/{111000 + cls}_{j}.JPG"
                write_jpeg(d / rel, 2000 + k)
                lines[split].append(f"{len(lines[split])} {cls} {sup + 1} {rel}")
                info.append(f"{k} {cls} {sup + 1} {rel}")
    for split in ("train", "test"):
        (d / f"Ebay_{split}.txt").write_text("\n".join(lines[split]) + "\n")
    (d / "Ebay_info.txt").write_text("\n".join(info) + "\n")
    return d


def truncate(path: str | Path, keep: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * keep)])


def assert_dml_dataset(ds, counts: dict[str, int]) -> None:
    """Contiguous labels 0..C-1, class-disjoint conventional split, counts as given, an MLRC
    split computable from the labels."""
    assert len(ds) == counts["images"] and ds.num_classes == counts["classes"]
    assert ds.labels.dtype == np.int64
    assert np.array_equal(np.unique(ds.labels), np.arange(counts["classes"]))
    assert len(ds.paths) == len(ds) and all(Path(p).is_file() for p in ds.paths)
    tr, te = ds.train_classes, ds.test_classes
    assert not set(tr.tolist()) & set(te.tolist())
    assert sorted(tr.tolist() + te.tolist()) == list(range(ds.num_classes))
    assert len(ds.indices_of(tr)) == counts["train_images"]
    assert len(ds.indices_of(te)) == counts["test_images"]
    assert (len(tr), len(te)) == (counts["train_classes"], counts["test_classes"])
    folds, test = mlrc_folds(np.unique(ds.labels))   # MLRC: test = second half of sorted ids
    assert test.tolist() == list(range(ds.num_classes // 2, ds.num_classes))
    assert all(not set(a.tolist()) & set(b.tolist()) for a, b in folds)


# ---------------------------------------------------------------------------------------------
# CUB-200-2011


def test_cub_loads_from_folder_or_parent(tmp_path):
    d = build_cub(tmp_path)
    for root in (tmp_path, d):
        ds = load_dataset("cub", str(root))
        assert_dml_dataset(ds, cub_counts(CUB_PER_CLASS))
    # labels = class_id - 1, matched through image ids (the label file is in reverse order)
    expected = np.repeat(np.arange(len(CUB_PER_CLASS)), CUB_PER_CLASS)
    assert np.array_equal(ds.labels, expected)
    assert ds.class_names[0] == "001.Bird_1" and ds.class_names[-1] == "008.Bird_8"
    assert ds.train_classes.tolist() == [0, 1, 2, 3]
    assert all(Path(p).parent.name == ds.class_names[y] for p, y in zip(ds.paths, ds.labels))


def test_cub_classes_txt_is_optional(tmp_path):
    d = build_cub(tmp_path)
    (d / "classes.txt").unlink()
    assert load_dataset("cub", str(tmp_path)).class_names[2] == "003.Bird_3"


@pytest.mark.parametrize("missing", ["images.txt", "image_class_labels.txt", "images"])
def test_cub_missing_file_names_it_and_the_layout(tmp_path, missing):
    import shutil

    d = build_cub(tmp_path)
    shutil.rmtree(d / missing) if missing == "images" else (d / missing).unlink()
    with pytest.raises(UserError) as e:
        load_dataset("cub", str(tmp_path))
    msg = str(e.value)
    assert (missing in msg) and "image_class_labels.txt" in msg and "\n" not in msg
    assert "dmlbench datasets download cub --root DIR" in msg
    assert "dmlbench datasets check cub" in msg


def test_missing_or_absent_root(tmp_path):
    with pytest.raises(UserError, match="needs a root folder"):
        load_dataset("cub", None)
    with pytest.raises(UserError, match="not an existing folder"):
        load_dataset("sop", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="takes no options"):
        load_dataset("cub", str(tmp_path), bogus=1)


def test_cub_damaged_label_file(tmp_path):
    d = build_cub(tmp_path)
    (d / "image_class_labels.txt").write_text("1 1\n2\n")
    with pytest.raises(UserError, match=r"image_class_labels.txt line 2"):
        load_dataset("cub", str(d))


# ---------------------------------------------------------------------------------------------
# CARS196


def cars_counts(per_class: list[int] = CARS_PER_CLASS) -> dict[str, int]:
    return cub_counts(per_class)


def test_cars_original_mat_layout_splits_by_class_not_test_flag(tmp_path):
    from scipy.io import loadmat

    build_cars_mat(tmp_path)
    ds = load_dataset("cars196", str(tmp_path))
    assert ds.meta["layout"] == "mat"
    assert_dml_dataset(ds, cars_counts())
    # independent computation from the .mat file: label = class - 1, path = relative_im_path
    a = loadmat(str(tmp_path / "cars_annos.mat"))["annotations"][0]
    assert ds.labels.tolist() == [int(x["class"][0, 0]) - 1 for x in a]
    assert [Path(p).relative_to(tmp_path).as_posix() for p in ds.paths] == \
        [str(x["relative_im_path"][0]) for x in a]
    assert ds.train_classes.tolist() == [0, 1, 2, 3]
    assert ds.test_classes.tolist() == [4, 5, 6, 7]
    test_flag = np.array([int(x["test"][0, 0]) for x in a])
    train_idx = ds.indices_of(ds.train_classes)
    assert 0 < test_flag[train_idx].sum() < len(train_idx)  # the file's flag is not the split
    assert ds.class_names[4] == "Ram C/V Cargo Van Minivan 2012"


def test_cars_per_class_folder_layout(tmp_path):
    build_cars_folders(tmp_path / "CARS196")
    for root in (tmp_path, tmp_path / "CARS196"):
        ds = load_dataset("cars196", str(root))
        assert ds.meta["layout"] == "folders"
        assert_dml_dataset(ds, cars_counts())
    ram = [p for p, y in zip(ds.paths, ds.labels) if y == 4]
    assert ram and all(Path(p).parent.name == "Ram C-V Cargo Van Minivan 2012" for p in ram)
    assert {Path(p).parents[1].name for p in ds.paths} == {"train", "test"}
    # both of the archive's train/test halves hold every class; the DML split is by class
    assert set(ds.labels[[i for i, p in enumerate(ds.paths) if "/test/" in p]]) >= {0, 7}
    assert ds.class_names == CARS_NAMES


def test_cars_layout_option_and_wrong_layout(tmp_path):
    build_cars_folders(tmp_path)
    with pytest.raises(UserError, match="no cars_annos.mat"):
        load_dataset("cars196", str(tmp_path), layout="mat")
    with pytest.raises(UserError, match="layout must be one of"):
        load_dataset("cars196", str(tmp_path), layout="x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as e:
        load_dataset("cars196", str(empty))
    assert "cars_annos.mat" in str(e.value) and "car_data/car_data" in str(e.value)
    assert "dmlbench datasets download cars196" in str(e.value)
    (tmp_path / "anno_test.csv").unlink()
    with pytest.raises(UserError, match="anno_test.csv"):
        load_dataset("cars196", str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Stanford Online Products


def test_sop_merges_train_and_test_with_label_class_id_minus_one(tmp_path):
    d = build_sop(tmp_path)
    for root in (tmp_path, d):
        ds = load_dataset("sop", str(root))
        assert_dml_dataset(ds, sop_counts())
    rows = [line.split() for f in ("Ebay_train.txt", "Ebay_test.txt")
            for line in (d / f).read_text().splitlines()[1:]]
    assert ds.labels.tolist() == [int(r[1]) - 1 for r in rows]
    assert ds.paths == [str(d / r[3]) for r in rows]
    assert ds.train_classes.tolist() == [0, 1, 2, 3, 4]
    assert ds.test_classes.tolist() == [5, 6, 7, 8]
    assert ds.meta["super_class_ids"].tolist() == [int(r[2]) for r in rows]


def test_sop_missing_file(tmp_path):
    d = build_sop(tmp_path)
    (d / "Ebay_test.txt").unlink()
    with pytest.raises(UserError, match="Ebay_test.txt.*Ebay_info.txt"):
        load_dataset("sop", str(tmp_path))


def test_sop_classes_shared_between_files_refused(tmp_path):
    d = build_sop(tmp_path)
    f = d / "Ebay_test.txt"
    f.write_text(f.read_text() + "99 1 1 bicycle_final/111001_0.JPG\n")
    with pytest.raises(UserError, match="share classes"):
        load_dataset("sop", str(d))


# ---------------------------------------------------------------------------------------------
# check


def test_dataset_info_has_the_published_counts():
    assert DATASET_INFO["cub"].counts() == {
        "images": 11788, "classes": 200, "train_images": 5864, "test_images": 5924,
        "train_classes": 100, "test_classes": 100}
    c = DATASET_INFO["cars196"]
    assert (c.images, c.train_images, c.test_images, c.classes) == (16185, 8054, 8131, 196)
    s = DATASET_INFO["sop"]
    assert (s.images, s.train_images, s.test_images) == (120053, 59551, 60502)
    assert (s.train_classes, s.test_classes) == (11318, 11316)
    for i in DATASET_INFO.values():
        assert i.train_images + i.test_images == i.images
        assert i.train_classes + i.test_classes == i.classes


@pytest.mark.parametrize("name,build,counts", [
    ("cub", build_cub, lambda: cub_counts(CUB_PER_CLASS)),
    ("cars196", build_cars_mat, cars_counts),
    ("cars196", build_cars_folders, cars_counts),
    ("sop", build_sop, sop_counts),
])
def test_check_ok_on_each_fixture_layout(tmp_path, name, build, counts):
    build(tmp_path)
    r = check(name, tmp_path, expected=counts(), progress=False)
    assert r.ok, r.format()
    assert r.counts == counts() and r.images_read == counts()["images"]
    text = r.format()
    assert "OK" in text.splitlines()[0] and f"images: {counts()['images']}" in text


def test_check_reports_count_mismatch_against_published_counts(tmp_path):
    build_cub(tmp_path)
    r = check("cub", tmp_path, progress=False, read_images=False)
    assert not r.ok
    assert "images: found 23, expected 11,788" in r.problems
    assert "train images: found 11, expected 5,864" in r.problems
    assert "images: 23  MISMATCH: expected 11,788" in r.format() and "PROBLEMS FOUND" in r.format()


def test_check_reports_truncated_and_missing_images_by_path(tmp_path):
    ds_dir = build_sop(tmp_path)
    ds = load_dataset("sop", str(tmp_path))
    bad, gone = ds.paths[3], ds.paths[7]
    truncate(bad)
    Path(gone).unlink()
    Path(ds.paths[0]).write_bytes(b"not an image at all")
    r = check("sop", tmp_path, expected=sop_counts(), progress=False, workers=3)
    assert not r.ok and not r.problems
    assert r.missing == [gone]
    assert {p for p, _ in r.unreadable} == {bad, ds.paths[0]}
    why = dict(r.unreadable)[bad]
    assert "truncated" in why.lower(), why
    text = r.format()
    assert bad in text and gone in text and "download again" in text
    assert r.images_read == sop_counts()["images"] - 3
    assert str(ds_dir) == r.root


def test_read_image_detects_truncation_of_a_large_jpeg(tmp_path):
    # large enough for the 1/8-scale draft decode to matter
    p = tmp_path / "big.jpg"
    write_jpeg(p, 0, size=(640, 480))
    assert read_image(str(p)) is None
    truncate(p, 0.8)
    assert "truncated" in read_image(str(p)).lower()


def test_check_reports_layout_error_and_sop_info_mismatch(tmp_path):
    r = check("cub", tmp_path, progress=False)
    assert not r.ok and "no images.txt" in r.problems[0] and not r.counts
    d = build_sop(tmp_path)
    info = d / "Ebay_info.txt"
    info.write_text("\n".join(info.read_text().splitlines()[:-1]) + "\n")
    r = check("sop", tmp_path, expected=sop_counts(), progress=False, read_images=False)
    assert r.problems == [f"Ebay_info.txt lists {sop_counts()['images'] - 1} images but "
                          f"Ebay_train.txt + Ebay_test.txt list {sop_counts()['images']}"]
