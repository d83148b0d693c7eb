"""A study's identity and the settings stored with it.

One study per (dataset, method, protocol settings), named `mlrc--DATASET--NAME--HASH` where
HASH is a short hash of the settings that define the experiment (config without execution
details such as threads or progress bars, the search space, fixed parameters, sampler, pruner,
seed, folds). The settings (`build_settings`) hold the experiment, the budget, the full config
and how it executes, so `dmlbench worker STUDY --storage URL` can join with nothing else.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dmlbench.bench import records as R
from dmlbench.bench.records import now_iso
from dmlbench.protocols.mlrc.options import SearchOptions
from dmlbench.protocols.mlrc.search import PerTrialSeededSampler, distribution, search_space

# Config keys that change how a fit runs, not what it computes: left out of the study's identity.
# (a run's execution keys, bench.records.EXECUTION_KEYS, and the protocol and seed, which the
# study's own settings fix).
EXECUTION_KEYS = {**R.EXECUTION_KEYS, "run": (*R.EXECUTION_KEYS["run"], "protocol", "seed")}


def settings_hash(defining: dict[str, Any], n: int = 10) -> str:
    """Short stable hash of a JSON-able dict."""
    text = json.dumps(defining, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _identity_config(cfg: dict[str, Any]) -> dict[str, Any]:
    out = R.result_config(cfg, EXECUTION_KEYS)
    out["method"].pop("params", None)
    return out


def build_settings(cfg: dict[str, Any], opts: SearchOptions, out_dir: "str | Path",
                   suite: str | None = None) -> tuple[str, dict[str, Any]]:
    """(study name, settings stored with the study)."""
    method = cfg["method"]["name"]
    space, fixed = search_space(method, cfg["method"]["params"], opts.space)
    seed = cfg["run"]["seed"] if opts.seed is None else opts.seed
    n_trials = opts.n_trials
    if not space:
        n_trials = 1
    dists = {k: distribution(v, k) for k, v in space.items()}
    if opts.sampler == "grid" and space:
        n_trials = min(n_trials, PerTrialSeededSampler("grid", 0, dists, opts.grid_points)
                       .grid_size())
    experiment = {
        "protocol": "mlrc", "config": _identity_config(cfg), "space": space, "fixed": fixed,
        "sampler": opts.sampler, "pruner": opts.pruner, "seed": seed,
        "num_folds": opts.num_folds,
    }
    if opts.sampler == "grid":
        experiment["grid_points"] = opts.grid_points
    budget = {"n_trials": n_trials, "reproductions": opts.reproductions,
              "max_failed": opts.max_failed or max(n_trials, 3)}
    label = cfg["run"]["name"] or method
    name = opts.study or f"mlrc--{cfg['dataset']['name']}--{label}--{settings_hash(experiment)}"
    settings = {
        "version": 1, "experiment": experiment, "budget": budget, "config": cfg,
        "execution": {"out_dir": str(Path(out_dir).resolve()), "suite": suite,
                      "heartbeat_interval": opts.heartbeat_interval,
                      "grace_period": opts.grace_period, "created": now_iso()},
    }
    return name, json.loads(json.dumps(settings, default=str))
