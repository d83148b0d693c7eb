"""Optuna's private API that dmlbench uses is still there (fails loudly on an Optuna that
changed it; see bench/optuna_internals.py)."""
from __future__ import annotations

import importlib.metadata as md

from dmlbench.bench import optuna_internals


def test_private_api_is_as_expected():
    optuna_internals.check()


def test_optuna_major_is_the_pinned_one():
    assert md.version("optuna").split(".")[0] == "5"


def test_no_other_module_touches_optuna_privates():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("bench", "methods", "protocols", "results"):
        for p in (root / folder).rglob("*.py"):
            if p.name == "optuna_internals.py":
                continue
            text = p.read_text(encoding="utf-8")
            for needle in ("optuna._", "storages._", "._study_id", "._trial_id", "study._storage",
                           "_get_stale_trial_ids(study"):
                if needle in text:
                    offenders.append(f"{p.relative_to(root)}: {needle}")
    assert offenders == []
