"""Tests of bench/data/glyphs.py: the embedded dataset `glyphs`."""
from __future__ import annotations

import os
import re
import unicodedata

import numpy as np
import pytest

from dmlbench.bench.data import DMLDataset, load_dataset
from dmlbench.bench.data import glyphs as g
from dmlbench.bench.errors import UserError

SMALL = dict(num_classes=6, images_per_class=4)


def _check_arrays(a: dict, image_size: int, num_classes: int, images_per_class: int) -> None:
    n = num_classes * images_per_class
    assert a["images"].shape == (n, image_size, image_size) and a["images"].dtype == np.uint8
    assert a["labels"].dtype == np.int64
    np.testing.assert_array_equal(np.bincount(a["labels"]), [images_per_class] * num_classes)
    cps = a["code_points"]
    assert len(cps) == num_classes and np.all(np.diff(cps) > 0)
    assert set(cps.tolist()) <= set(g.distinct_code_points())
    assert a["font_index"].shape == (n,)
    assert a["font_index"].min() >= 0 and a["font_index"].max() < len(g.FONT_FILES)
    train, test = a["train_classes"], a["test_classes"]
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(num_classes))
    assert len(train) == (num_classes + 1) // 2


def test_sixteen_fonts_and_candidates():
    assert len(g.font_paths()) == 16
    cands = g.candidate_code_points()
    assert all(unicodedata.category(chr(c))[0] in "LNS" for c in cands)
    assert {ord(ch) for ch in "Aaé0€Ωωжß┼"} <= set(cands)
    kept, dropped = set(g.distinct_code_points()), g.dropped_code_points()
    assert kept | set(dropped) == set(cands) and not kept & set(dropped)
    assert all(target in kept for target in dropped.values() if target != -1)


@pytest.mark.parametrize("image_size", g.IMAGE_SIZES)
def test_shapes_dtypes_labels_split(image_size):
    a = g.build_glyphs(image_size=image_size, num_classes=5, images_per_class=3)
    _check_arrays(a, image_size, 5, 3)


def test_white_glyph_on_black_and_noisy():
    im = g.build_glyphs(**SMALL)["images"].astype(np.float64)
    border = np.concatenate([im[:, 0, :], im[:, -1, :], im[:, :, 0], im[:, :, -1]], axis=1)
    centre = im[:, 8:24, 8:24]
    assert border.mean() < 60 and centre.max(axis=(1, 2)).min() > 150
    assert border.std(axis=1).min() > 5  # Gaussian noise everywhere


def test_deterministic_and_nested():
    a = g.build_glyphs(num_classes=8, images_per_class=5)
    b = g.build_glyphs(num_classes=8, images_per_class=5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # fewer classes: a subset with the same images; fewer images: the prefix of each class
    c = g.build_glyphs(num_classes=4, images_per_class=3)
    rows = {int(cp): i for i, cp in enumerate(a["code_points"])}
    assert set(c["code_points"].tolist()) <= set(rows)
    for j, cp in enumerate(c["code_points"]):
        i = rows[int(cp)]
        np.testing.assert_array_equal(c["images"][j * 3:(j + 1) * 3], a["images"][i * 5:i * 5 + 3])
    # the first classes of the fixed order are train, the rest test, whatever the count
    order = g.class_order(g.distinct_code_points())
    assert [int(a["code_points"][i]) for i in a["train_classes"]] == sorted(order[:4])
    assert [int(a["code_points"][i]) for i in a["test_classes"]] == sorted(order[4:8])


def test_every_font_once_per_sixteen_images():
    a = g.build_glyphs(num_classes=3, images_per_class=16)
    for c in range(3):
        assert sorted(a["font_index"][a["labels"] == c]) == list(range(16))


def test_homoglyphs_dropped_fine_grained_kept():
    kept = set(g.distinct_code_points())
    assert ord("o") in kept and 0x043E not in kept and 0x03BF not in kept
    groups = ["oоο", "AАΑ", "pр", "xх", "BВΒ", "EЕΕ", "HНΗ", "MМΜ", "TТΤ", "IІΙ", "KΚ", "OОΟ",
              "PРΡ", "CС", "aа", "eе", "cс", "yу", "sѕ", "jј", "ëё", "ÏЇ", "ΓГ", "YΥ"]
    for group in groups:
        present = [ch for ch in group if ord(ch) in kept]
        assert present == [min(group)], (group, present)
    for ch in "eéèêëiïîcçuüûúùnñEÉÈÊË0123456789":
        assert ord(ch) in kept, ch
    assert len({unicodedata.name(chr(c)).split()[0] for c in kept}
               & {"LATIN", "GREEK", "CYRILLIC", "BOX", "DIGIT"}) == 5


def test_no_near_identical_classes_left():
    """Independent recomputation on the letters of four scripts: no kept pair is a duplicate."""
    kept = [c for c in g.distinct_code_points()
            if c < 0x0250 or 0x0370 <= c < 0x0400 and chr(c).isalpha() or 0x0400 <= c < 0x0460]
    masters, refs = g._render_masters(kept)
    x = np.stack([np.stack([g._draw(m, ref, g.DEDUP_SIZE).ravel() for m in fm])
                  for fm, ref in zip(masters, refs)]).astype(np.float64)   # (fonts, n, pixels)
    sq = (x ** 2).sum(-1)
    for i in range(len(kept)):
        d = ((x[:, i:i + 1] - x[:, i + 1:]) ** 2).sum(-1) / (sq[:, i:i + 1] + sq[:, i + 1:])
        dup = (d.max(0) < g.DEDUP_ALL) | ((d < g.DEDUP_MOST).sum(0) >= g.DEDUP_MIN_FONTS)
        assert not dup.any(), (chr(kept[i]), [chr(kept[i + 1 + j]) for j in np.flatnonzero(dup)])


def test_default_dataset_size_and_split():
    """The defaults, via the shared cache ($DMLBENCH_CACHE or ~/.cache/dmlbench)."""
    ds = load_dataset("glyphs")
    assert isinstance(ds, DMLDataset) and ds.name == "glyphs"
    assert ds.num_classes >= 300 and ds.num_classes == min(g.DEFAULT_NUM_CLASSES,
                                                          len(g.distinct_code_points()))
    assert np.bincount(ds.labels).min() >= 20
    assert ds.images.shape[1:] == (32, 32) and ds.images.dtype == np.uint8
    assert not set(ds.train_classes) & set(ds.test_classes)
    assert sorted([*ds.train_classes, *ds.test_classes]) == list(range(ds.num_classes))
    assert abs(len(ds.train_classes) - len(ds.test_classes)) <= 1
    for name in ds.class_names:
        m = re.fullmatch(r"U\+([0-9A-F]{4,6}) (.)", name)
        assert m and int(m.group(1), 16) == ord(m.group(2))
    for half in (ds.train_classes, ds.test_classes):
        scripts = {unicodedata.name(ds.class_names[c][-1]).split()[0] for c in half}
        assert {"LATIN", "GREEK", "CYRILLIC"} <= scripts


def _cache_files(d) -> list[str]:
    return sorted(os.listdir(d))


def test_cache_round_trip(tmp_path, monkeypatch):
    ds = g.load_glyphs(cache_dir=str(tmp_path), **SMALL)
    files = _cache_files(tmp_path)
    assert len(files) == 1 and re.fullmatch(r"glyphs-v1-32px-[0-9a-f]+\.npz", files[0])
    assert ds.meta["cache_file"] == str(tmp_path / files[0]) and ds.meta["build_seconds"] > 0
    fresh = g.build_glyphs(**SMALL)
    np.testing.assert_array_equal(ds.images, fresh["images"])

    again = g.load_glyphs(str(tmp_path), **SMALL)   # root is the cache dir too
    assert again.meta["build_seconds"] is None and _cache_files(tmp_path) == files
    np.testing.assert_array_equal(again.images, ds.images)
    np.testing.assert_array_equal(again.labels, ds.labels)
    assert again.class_names == ds.class_names
    np.testing.assert_array_equal(again.train_classes, ds.train_classes)

    # other parameters: another file; $DMLBENCH_CACHE is the default directory
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path / "env"))
    other = g.load_glyphs(image_size=48, num_classes=4, images_per_class=2)
    assert os.path.dirname(other.meta["cache_file"]) == str(tmp_path / "env")
    assert re.fullmatch(r"glyphs-v1-48px-[0-9a-f]+\.npz", _cache_files(tmp_path / "env")[0])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "stale"])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    ds = g.load_glyphs(cache_dir=str(tmp_path), **SMALL)
    path = ds.meta["cache_file"]
    data = open(path, "rb").read()
    if damage == "stale":   # a valid file built with other parameters, under this name
        np.savez(path, params=np.array("{}"), **g.build_glyphs(num_classes=3, images_per_class=2))
    else:
        with open(path, "wb") as f:
            f.write({"garbage": b"not a zip file" * 10, "truncated": data[:len(data) // 2],
                     "empty": b""}[damage])
    with pytest.warns(UserWarning, match="rebuilding"):
        again = g.load_glyphs(cache_dir=str(tmp_path), **SMALL)
    np.testing.assert_array_equal(again.images, ds.images)
    assert open(path, "rb").read() == data   # rewritten, whole
    assert _cache_files(tmp_path) == [os.path.basename(path)]   # no temp file left behind


@pytest.mark.parametrize("option, value", [
    ("image_size", 30), ("image_size", "32"), ("image_size", 32.0), ("images_per_class", 1),
    ("images_per_class", 10_000), ("images_per_class", True), ("num_classes", 1),
    ("num_classes", 2.5), ("num_classes", 10_000),
])
def test_bad_option_is_a_user_error(tmp_path, option, value):
    with pytest.raises(UserError) as e:
        g.load_glyphs(cache_dir=str(tmp_path), **{option: value})
    msg = str(e.value)
    assert "\n" not in msg and option in msg and str(value) in msg and "allowed" in msg
    assert _cache_files(tmp_path) == []


def test_registered():
    from dmlbench.bench.data import list_datasets

    assert "glyphs" in list_datasets()
