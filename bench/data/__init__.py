"""Datasets: a registry of loaders, each returning a `DMLDataset`.

A loader is `load(root: str | None, **options) -> DMLDataset`; register it with
`@register_dataset("name")`. In-memory datasets fill `images`; on-disk datasets fill `paths`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dmlbench.bench.errors import UserError
from dmlbench.methods.registry_type import Registry


@dataclass
class DMLDataset:
    """All images of a dataset with contiguous labels 0..C-1 (classes in sorted original order)."""

    name: str
    labels: np.ndarray                      # (N,) int64 in 0..C-1
    class_names: list[str]                  # len C
    train_classes: np.ndarray               # conventional split: sorted class ids
    test_classes: np.ndarray
    images: np.ndarray | None = None        # (N, H, W) or (N, H, W, 3) uint8, in memory
    paths: list[str] | None = None          # image files, on disk
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if (self.images is None) == (self.paths is None):
            raise ValueError("DMLDataset needs exactly one of images / paths")
        n = len(self.images) if self.images is not None else len(self.paths)
        if n != len(self.labels):
            raise ValueError(f"{n} images but {len(self.labels)} labels")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def indices_of(self, classes: "np.ndarray | list[int]") -> np.ndarray:
        """Indices of all images whose label is in `classes`, in dataset order."""
        return np.flatnonzero(np.isin(self.labels, np.asarray(classes, dtype=np.int64)))


def _import_builtin() -> None:
    import importlib

    for mod in ("dmlbench.bench.data.glyphs", "dmlbench.bench.data.folder", "dmlbench.bench.data.real"):
        importlib.import_module(mod)


# Every dataset loader, built in or added through the entry-point group `dmlbench.datasets`.
DATASETS: Registry[Callable[..., DMLDataset]] = Registry("dataset", "dmlbench.datasets",
                                                         _import_builtin)


def register_dataset(name: str) -> Callable[[Callable[..., DMLDataset]], Callable[..., DMLDataset]]:
    """Decorator: register a loader under `name` (a name registered twice is refused)."""
    return DATASETS.decorator(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(name: str, root: str | None = None, **options) -> DMLDataset:
    """Load a registered dataset; unknown names raise UserError listing the valid ones."""
    return DATASETS.get(name)(root, **options)


def load_configured(cfg: dict) -> DMLDataset:
    """The dataset that a run config's `dataset` section names (name, root, options)."""
    d = cfg["dataset"]
    return load_dataset(d["name"], d["root"], **d["options"])


class DatasetPool:
    """`load_configured` once per (name, root, options): call it with a run config."""

    def __init__(self) -> None:
        self._loaded: dict[str, DMLDataset] = {}

    def __call__(self, cfg: dict) -> DMLDataset:
        d = cfg["dataset"]
        key = repr((d["name"], d["root"], d["options"]))
        if key not in self._loaded:
            self._loaded[key] = load_configured(cfg)
        return self._loaded[key]


__all__ = ["DATASETS", "DatasetPool", "DMLDataset", "UserError", "register_dataset", "list_datasets", "load_dataset",
           "load_configured"]
