"""Smoke mode: every run of a suite end to end in seconds on fixture trees, on the real code
path (see the package docstring)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from dmlbench.bench import config as C
from dmlbench.bench.suite.schema import (PlannedRun, PlannedStudy, _entry_datasets,
                                _part_datasets)

# Config of every smoke run (then the fixture root, and a batch size that suits m_per_class).
# Smoke mode shrinks data, image size and iterations, never the code path: the preset's trunk
# (random weights instead of downloaded ones), transforms, pooling, frozen BN, normalisation,
# optimiser groups and schedule stay. 32 px is a size every built-in trunk accepts
# (BN-Inception takes sides of 32k-1 to 32k+6).
SMOKE_CONFIG: dict[str, dict[str, Any]] = {
    "model": {"pretrained": False, "weights": None},
    "dataset": {"image_size": 32},
    "train": {"epochs": 2, "iterations_per_epoch": 1, "eval_every": 1, "patience": None,
              "num_workers": 0, "amp": False, "threads": 1, "progress": False},
    "eval": {"batch_size": 64},
}
SMOKE_SEARCH = {"n_trials": 1, "reproductions": 1, "workers": 1}
# Method parameters fixed in smoke mode where a method has them: MemVir's virtual classes take
# part from the second of the 4 training steps.
SMOKE_PARAMS = {"warmup_epochs": 0, "step_gap": 0}


def smoke_suite(suite: dict[str, Any]) -> dict[str, Any]:
    """A copy of a loaded suite cut down for smoke mode: one seed, one search trial and one
    reproduction, each run on one of its datasets (rotating by base method)."""
    from dmlbench.methods import get_method

    s = copy.deepcopy(suite)
    if "seeds" in s:
        s["seeds"] = list(s["seeds"])[:1]
    parts = [s] + ([s["mlrc"]] if isinstance(s.get("mlrc"), dict) else [])
    base_cfg = C.merge(C.defaults(), s.get("config") or {}, prefix="suite config ")
    for part in parts:
        datasets = _part_datasets(s, part, base_cfg) if part is not s else (
            s.get("datasets") or [base_cfg["dataset"]["name"]])
        groups: dict[str, int] = {}
        for entry in part["runs"]:
            allowed = _entry_datasets(entry, datasets, s.get("name"))
            key = get_method(entry["method"]).base or entry["method"]
            i = groups.setdefault(key, len(groups))
            mine = datasets[i % len(datasets)]   # the group's dataset, where the run allows it
            entry["datasets"] = [mine if mine in allowed else allowed[i % len(allowed)]]
        if part is not s or s.get("protocol") == "mlrc":
            part["search"] = {**(part.get("search") or {}), **SMOKE_SEARCH}
    return s


def _smoke_config(cfg: dict, root: Path) -> dict:
    from dmlbench.bench.data.fixtures import BUILDERS
    from dmlbench.methods import get_method

    cfg = C.merge(cfg, SMOKE_CONFIG)
    if cfg["dataset"]["name"] in BUILDERS:
        cfg["dataset"]["root"] = str(root)
        cfg["dataset"]["options"] = {}
    spec = get_method(cfg["method"]["name"])
    cfg["method"]["params"].update({k: v for k, v in SMOKE_PARAMS.items() if k in spec.defaults})
    m = cfg["train"]["m_per_class"] or spec.m_per_class
    cfg["train"]["batch_size"] = 8 if 8 % m == 0 else 2 * m
    return cfg


def smoke_datasets(runs: list[PlannedRun], studies: list[PlannedStudy]) -> list[str]:
    """The datasets a smoke run needs fixture trees for."""
    return list(dict.fromkeys(p.cfg["dataset"]["name"] for p in [*runs, *studies]))
