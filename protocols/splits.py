"""Class splits: the conventional train/test split and MLRC's 4 class-disjoint folds."""
from __future__ import annotations

import numpy as np


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
