"""The conventional protocol: train on the train classes, evaluate on the test classes every
k epochs. The record keeps every evaluation, the last one, and the best one, marked as chosen
on the test set (as papers do: there is no validation set)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import distributed
from bench.data import DMLDataset, load_configured
from bench.data.loading import Split
from bench.records import fingerprint, git_commit, now_iso, versions, write_record
from bench.train import fit
from methods import get_method

RECORD = "record.json"


def run_id(cfg: dict) -> str:
    """The folder name of one run: a readable part and the fingerprint of everything that
    changes its result (bench.records.fingerprint), so another config never reuses it."""
    name = cfg["run"]["name"] or cfg["method"]["name"]
    return (f"{cfg['dataset']['name']}--{name}--{cfg['run']['protocol']}--s{cfg['run']['seed']}"
            f"--{fingerprint(cfg)}")


def base_record(cfg: dict, suite: str | None) -> dict[str, Any]:
    spec = get_method(cfg["method"]["name"])
    return {"schema": 1, "run_id": run_id(cfg), "suite": suite, "method": cfg["run"]["name"]
            or spec.name, "base_method": spec.base, "dataset": cfg["dataset"]["name"],
            "protocol": cfg["run"]["protocol"], "seed": cfg["run"]["seed"], "config": cfg,
            "fingerprint": fingerprint(cfg),
            "versions": versions(), "git_commit": git_commit(), "created": now_iso()}


def run_conventional(cfg: dict, run_dir: "str | Path", *, suite: str | None = None,
                     dataset: DMLDataset | None = None,
                     position: dict[str, int] | None = None) -> dict[str, Any]:
    """Fit once and write `run_dir/record.json`; returns the record. `position`: where the
    run stands in its suite ({"run": i, "dataset": j}), for the tables' row order."""
    run_dir = Path(run_dir)
    record = base_record(cfg, suite)   # validates the method name before any work
    if position:
        record["suite_position"] = dict(position)
    ds = dataset if dataset is not None else load_configured(cfg)
    train = Split.of_classes(ds, ds.train_classes)
    test = Split.of_classes(ds, ds.test_classes)
    t0 = time.perf_counter()
    res = fit(cfg, train, test, run_dir=run_dir, selection_set="test")
    record.update({
        "status": res.status, "error": res.error, "evaluations": res.evaluations,
        "final": res.final, "best": res.best, "epochs_run": res.epochs_run,
        "stopped_early": res.stopped_early, "wall_time_s": time.perf_counter() - t0,
        "train_time_s": res.timing["train_s"], "images_per_s": res.images_per_s,
        "timing": res.timing, "optimizer_groups": res.param_groups,
        "resumed_from_epoch": res.resumed_from,
        "num_train_classes": train.num_classes, "num_test_classes": test.num_classes,
        "num_train_images": len(train), "num_test_images": len(test)})
    if distributed.is_main():
        write_record(run_dir / RECORD, record)
    distributed.barrier()
    return record
