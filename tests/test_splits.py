"""Class splits: MLRC folds reproduce the reference arithmetic (spec table), conventional halves."""
from __future__ import annotations

import numpy as np
import pytest

from protocols.splits import conventional_split, mlrc_folds


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
