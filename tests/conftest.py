"""Shared fixtures: a project-local dataset cache and tiny configs that train in seconds."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DMLBENCH_CACHE", str(ROOT / ".cache"))

TINY = ["dataset.options={num_classes: 20, images_per_class: 8}", "model.width=4",
        "model.embedding_size=16", "train.batch_size=16", "train.epochs=3", "train.progress=false",
        "eval.batch_size=64", "train.threads=1"]


# The `config` section of a suite whose runs train in about a second each.
TINY_SUITE_CONFIG = {"dataset": {"options": {"num_classes": 20, "images_per_class": 8}},
                     "model": {"width": 4, "embedding_size": 16},
                     "train": {"batch_size": 16, "epochs": 2, "progress": False, "threads": 1}}


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine OpenMP waits dominate small convs."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_glyphs():
    from dmlbench.bench.data import load_dataset

    return load_dataset("glyphs", num_classes=20, images_per_class=8)
