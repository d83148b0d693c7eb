"""Class splits: MLRC folds reproduce the reference arithmetic (spec table), conventional halves."""
from __future__ import annotations

import numpy as np
import pytest

from dmlbench.protocols.splits import conventional_split, mlrc_folds


def _block(a, b):
    return list(range(a, b + 1))


@pytest.mark.parametrize("total,per_fold,test_range,val_blocks", [
    (200, (75, 25), (100, 199), [_block(75, 99), _block(0, 24), _block(25, 49), _block(50, 74)]),
    (196, (74, 24), (98, 195), [_block(74, 97), _block(0, 23), _block(25, 48), _block(49, 72)]),
    (22634, (8488, 2829), (11317, 22633), None),
])
def test_mlrc_folds_match_reference(total, per_fold, test_range, val_blocks):
    folds, test = mlrc_folds(np.arange(total))
    assert test.tolist() == _block(*test_range)
    trainval = set(range(test_range[0]))
    for p, (train, val) in enumerate(folds):
        assert (len(train), len(val)) == per_fold
        assert not set(train) & set(val)
        assert set(train) | set(val) == trainval
        if val_blocks is not None:
            assert val.tolist() == val_blocks[p]
    if total == 196:  # the quirk: classes 24 and 73 never validate on CARS196
        validated = set().union(*(set(v.tolist()) for _, v in folds))
        assert trainval - validated == {24, 73}


def test_mlrc_folds_sort_arbitrary_ids():
    ids = np.random.default_rng(0).permutation(np.arange(1000, 1200))
    folds, test = mlrc_folds(ids)
    assert test.tolist() == list(range(1100, 1200))
    assert folds[1][1].tolist() == list(range(1000, 1025))


def test_conventional_split():
    tr, te = conventional_split(np.arange(1, 201)[::-1])
    assert tr.tolist() == list(range(1, 101)) and te.tolist() == list(range(101, 201))


@pytest.mark.parametrize("classes,message", [
    (6, "dataset 'x' has 6 classes: its 3 train+val classes (the first half; the second half is "
        "the test set) cannot make 4 MLRC folds; MLRC needs at least 16 classes (2 validation "
        "classes per fold)"),
    (8, "its 4 train+val classes give 1 validation class per fold, below the minimum of 2"),
    (15, "its 7 train+val classes give 1 validation class per fold, below the minimum of 2 "
         "(with one, every retrieval metric is trivially 100); MLRC needs at least 16 classes"),
    (16, None), (17, None), (200, None),
])
def test_mlrc_minimum_validation_classes(classes, message):
    from dmlbench.bench.errors import UserError
    from dmlbench.protocols.splits import MIN_VAL_CLASSES, check_mlrc_classes

    assert MIN_VAL_CLASSES == 2
    if message is None:
        check_mlrc_classes(classes, 4, "dataset 'x'")
        folds, _ = mlrc_folds(np.arange(classes))
        assert min(len(v) for _, v in folds) >= MIN_VAL_CLASSES
        return
    with pytest.raises(UserError) as e:
        check_mlrc_classes(classes, 4, "dataset 'x'")
    assert message in str(e.value)


def test_mlrc_minimum_scales_with_folds():
    from dmlbench.bench.errors import UserError
    from dmlbench.protocols.splits import check_mlrc_classes

    check_mlrc_classes(8, 2)     # 4 train+val classes: 2 folds of 2 validation classes
    check_mlrc_classes(12, 3)    # 6 train+val classes: 3 folds of 2
    with pytest.raises(UserError, match="give 1 validation class per fold.*at least 12 classes"):
        check_mlrc_classes(11, 3)
