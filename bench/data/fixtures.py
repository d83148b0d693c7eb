"""Tiny stand-ins for the real benchmarks, written in their exact on-disk layouts: CUB-200-2011
(`CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, train_test_split.txt,
images/}`), CARS196 (the original `CARS196/{cars_annos.mat, car_ims/}`) and Stanford Online
Products (`Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, Ebay_info.txt,
<category>_final/}`), with small generated JPEGs.

They let a preset run end to end without the real data (`dmlbench suite NAME --smoke`): the
real loaders read them unchanged. Each class gets its own base colour plus noise, so that a
model can tell classes apart. The defaults (16 classes x 4 images) leave 8 train+val classes
for the MLRC folds (6 train / 2 validation per fold) and 8 test classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

FIXTURE_CLASSES = 16
FIXTURE_IMAGES_PER_CLASS = 4
IMAGE_SIZE = (40, 32)  # width, height


def write_jpeg(path: Path, label: int, seed: int, size: tuple[int, int] = IMAGE_SIZE) -> None:
    """A JPEG whose colour depends on `label` and whose noise depends on `seed`."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(10_000 + label).integers(30, 226, 3)
    noise = rng.integers(-30, 31, (size[1], size[0], 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def build_cub(root: "str | Path", classes: int = FIXTURE_CLASSES,
              per_class: int = FIXTURE_IMAGES_PER_CLASS) -> Path:
    """root/CUB_200_2011 with `classes` classes of `per_class` images each."""
    d = Path(root) / "CUB_200_2011"
    images, labels, names = [], [], []
    k = 0
    for c in range(1, classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        names.append(f"{c} {folder}")
        for j in range(per_class):
            k += 1
            rel = f"{folder}/Bird_{c}_{j:04d}_{1000 + k}.jpg"
            write_jpeg(d / "images" / rel, c, k)
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c}")
    (d / "images.txt").write_text("\n".join(images) + "\n")
    (d / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (d / "classes.txt").write_text("\n".join(names) + "\n")
    (d / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in range(1, k + 1)))
    return d


def build_cars196(root: "str | Path", classes: int = FIXTURE_CLASSES,
                  per_class: int = FIXTURE_IMAGES_PER_CLASS) -> Path:
    """root/CARS196 with a generated cars_annos.mat (struct `annotations` with the original
    fields, `class_names`) and car_ims/NNNNNN.jpg, classes interleaved as in the real file."""
    from scipy.io import savemat

    d = Path(root) / "CARS196"
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    order = [(c, j) for j in range(per_class) for c in range(1, classes + 1)]
    annos = np.zeros((1, len(order)), dtype=[(f, "O") for f in fields])
    for i, (c, j) in enumerate(order):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_jpeg(d / rel, c, 500 + i)
        annos[0, i] = (rel, np.uint8(1), np.uint8(1), np.uint16(IMAGE_SIZE[0]),
                       np.uint16(IMAGE_SIZE[1]), np.uint8(c), np.uint8(j % 2))
    names = np.empty((1, classes), dtype=object)
    for c in range(classes):
        names[0, c] = f"Make{c + 1} Model Sedan 20{10 + c % 10}"
    savemat(str(d / "cars_annos.mat"), {"annotations": annos, "class_names": names})
    return d


SOP_CATEGORIES = ("bicycle_final", "cabinet_final", "chair_final", "coffee_maker_final")


def build_sop(root: "str | Path", classes: int = FIXTURE_CLASSES,
              per_class: int = FIXTURE_IMAGES_PER_CLASS) -> Path:
    """root/Stanford_Online_Products: the first half of the classes in Ebay_train.txt, the
    rest in Ebay_test.txt, all in Ebay_info.txt, images in <category>_final/."""
    d = Path(root) / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path"
    lines = {"train": [header], "test": [header]}
    info = [header]
    k = 0
    for c in range(1, classes + 1):
        split = "train" if c <= classes // 2 else "test"
        sup = (c - 1) % len(SOP_CATEGORIES)
        for j in range(per_class):
            k += 1
            rel = f"{SOP_CATEGORIES[sup]}/{111000 + c}_{j}.JPG"
            write_jpeg(d / rel, c, 2000 + k)
            lines[split].append(f"{len(lines[split])} {c} {sup + 1} {rel}")
            info.append(f"{k} {c} {sup + 1} {rel}")
    for split in ("train", "test"):
        (d / f"Ebay_{split}.txt").write_text("\n".join(lines[split]) + "\n")
    (d / "Ebay_info.txt").write_text("\n".join(info) + "\n")
    return d


BUILDERS: dict[str, Callable[..., Path]] = {"cub": build_cub, "cars196": build_cars196,
                                            "sop": build_sop}


def build_fixture_tree(root: "str | Path",
                       datasets: "list[str] | tuple[str, ...]" = tuple(BUILDERS),
                       classes: int = FIXTURE_CLASSES,
                       per_class: int = FIXTURE_IMAGES_PER_CLASS) -> Path:
    """Write the fixture tree of each of `datasets` that has one (others are skipped) under
    `root`, which then serves as `dataset.root` for all of them; an existing tree is kept."""
    root = Path(root)
    marker = {"cub": "CUB_200_2011/train_test_split.txt", "cars196": "CARS196/cars_annos.mat",
              "sop": "Stanford_Online_Products/Ebay_info.txt"}
    for name in dict.fromkeys(datasets):
        if name in BUILDERS and not (root / marker[name]).exists():
            BUILDERS[name](root, classes, per_class)
    return root
