"""Class splits: the conventional train/test split and MLRC's 4 class-disjoint folds."""
from __future__ import annotations

import numpy as np

from dmlbench.bench.errors import UserError

# MLRC needs at least this many validation classes per fold: with one, every query's only
# relevant items are its own class, so MAP@R, R-precision and P@1 are trivially 100 and the
# search learns nothing.
MIN_VAL_CLASSES = 2


def conventional_split(class_ids) -> tuple[np.ndarray, np.ndarray]:
    """Sorted classes: first half train, second half test (CUB 100/100, CARS 98/98)."""
    c = np.unique(np.asarray(class_ids))
    half = len(c) // 2
    return c[:half], c[half:]


def mlrc_folds(class_ids, num_folds: int = 4
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """MLRC split: ([(train_classes, val_classes)] * num_folds, test_classes).

    Test = second half of the sorted classes. Of the n train+val classes, every fold
    validates on floor(n / num_folds) classes and trains on the rest; fold p starts at
    position int(p / num_folds * n), takes the train block then the val block, wrapping
    around (so with n not divisible by num_folds some classes never validate, as in the
    reference harness).
    """
    c = np.unique(np.asarray(class_ids))
    trainval, test = conventional_split(c)
    n = len(trainval)
    if n < num_folds:
        raise ValueError(f"{n} train+val classes cannot make {num_folds} folds")
    val_count = int(np.floor(n / num_folds))
    train_count = n - val_count
    folds = []
    for p in range(num_folds):
        start = int(p / num_folds * n)
        pos = (start + np.arange(n)) % n
        folds.append((trainval[pos[:train_count]], trainval[pos[train_count:]]))
    return folds, test


def check_mlrc_classes(num_classes: int, num_folds: int = 4, what: str = "the dataset") -> None:
    """UserError unless the first half of `num_classes` classes (MLRC's train+val classes)
    makes `num_folds` folds of at least MIN_VAL_CLASSES validation classes each."""
    n = num_classes // 2
    need = 2 * num_folds * MIN_VAL_CLASSES
    if n < num_folds:
        raise UserError(f"{what} has {num_classes} classes: its {n} train+val classes (the first "
                        f"half; the second half is the test set) cannot make {num_folds} MLRC "
                        f"folds; MLRC needs at least {need} classes ({MIN_VAL_CLASSES} "
                        "validation classes per fold)")
    if n // num_folds < MIN_VAL_CLASSES:
        raise UserError(f"{what} has {num_classes} classes: its {n} train+val classes give "
                        f"{n // num_folds} validation class per fold, below the minimum of "
                        f"{MIN_VAL_CLASSES} (with one, every retrieval metric is trivially 100); "
                        f"MLRC needs at least {need} classes")
