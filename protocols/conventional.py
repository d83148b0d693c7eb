"""The conventional protocol: train on the train classes, evaluate on the test classes every
k epochs. The record keeps every evaluation, the last one, and the best one, marked as chosen
on the test set (as papers do: there is no validation set)."""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from dmlbench.bench import distributed
from dmlbench.bench.data import DMLDataset, load_configured
from dmlbench.bench.data.loading import Split
from dmlbench.bench.records import RunRecord, check_output_dir, disk_error, fingerprint, run_lock
from dmlbench.bench.train import Callback, fit
from dmlbench.bench.train.build import data_warnings, resolve_device

RECORD = "record.json"
log = logging.getLogger("dmlbench")


def run_id(cfg: dict) -> str:
    """The folder name of one run: a readable part and the fingerprint of everything that
    changes its result (bench.records.fingerprint), so another config never reuses it."""
    name = cfg["run"]["name"] or cfg["method"]["name"]
    return (f"{cfg['dataset']['name']}--{name}--{cfg['run']['protocol']}--s{cfg['run']['seed']}"
            f"--{fingerprint(cfg)}")


def base_record(cfg: dict, suite: str | None) -> RunRecord:
    """The record of a conventional run of `cfg`, before it runs."""
    return RunRecord.start(cfg, run_id=run_id(cfg), suite=suite)


def determinism(cfg: dict) -> dict[str, Any]:
    """What a fit's numbers are reproducible under: the same seed, torch CPU threads, device
    and deterministic-algorithm setting give the same metrics (other thread counts or
    devices change floating-point summation order, hence the last digits)."""
    import torch

    device = resolve_device(cfg["train"]["device"])
    out: dict[str, Any] = {"threads": int(cfg["train"]["threads"] or torch.get_num_threads()),
                           "device": str(device),
                           "deterministic": bool(cfg["train"]["deterministic"])}
    if device.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(device)
    return out


def run_guard(run_dir: "str | Path", *, wait: bool = False):
    """The lock of a run folder (`bench.records.run_lock`); none under a torchrun launch,
    whose ranks all work on the same run (one launch per output folder)."""
    if distributed.launched():
        return contextlib.nullcontext(Path(run_dir))
    return run_lock(run_dir, wait=wait)


def run_conventional(cfg: dict, run_dir: "str | Path", *, suite: str | None = None,
                     dataset: DMLDataset | None = None,
                     position: dict[str, int] | None = None,
                     callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Fit once and write `run_dir/record.json`; returns the record. `position`: where the
    run stands in its suite ({"run": i, "dataset": j}), for the tables' row order;
    `callbacks`: extra training callbacks (see `bench.train.fit`).

    Before training: the data's oddities (`bench.train.build.data_warnings`) are logged once
    (logger "dmlbench") and kept in the record's `warnings`; the run folder is checked to be
    writable; the run folder is locked (`run_guard`): another process on the same run
    raises `bench.records.RunHeld`. A full disk or a folder that cannot be written is a
    UserError naming the path; the checkpoint already saved lets a re-run resume."""
    run_dir = Path(run_dir)
    record = base_record(cfg, suite)   # validates the method name before any work
    if position:
        record.update(suite_position=dict(position))
    ds = dataset if dataset is not None else load_configured(cfg)
    train = Split.of_classes(ds, ds.train_classes)
    test = Split.of_classes(ds, ds.test_classes)
    notes = data_warnings(cfg, train, test, eval_name="test set")
    if distributed.is_main():
        check_output_dir(run_dir)
    with run_guard(run_dir):
        return _run_locked(cfg, run_dir, record, train, test, notes, callbacks)


def _run_locked(cfg: dict, run_dir: Path, record: RunRecord, train: Split, test: Split,
                notes: list[str], callbacks: Sequence[Callback]) -> dict[str, Any]:
    if distributed.is_main():
        for note in notes:
            log.warning("%s: %s", record.run_id, note)
    t0 = time.perf_counter()
    try:
        res = fit(cfg, train, test, run_dir=run_dir, selection_set="test", callbacks=callbacks)
    except OSError as e:   # e.g. the training log's appends on a full disk
        err = disk_error(e, e.filename or run_dir)
        if err is None:
            raise
        raise err from None
    record.update(**{
        "status": res.status, "error": res.error, "evaluations": res.evaluations,
        "final": res.final, "best": res.best, "epochs_run": res.epochs_run,
        "stopped_early": res.stopped_early, "wall_time_s": time.perf_counter() - t0,
        "train_time_s": res.timing["train_s"], "images_per_s": res.images_per_s,
        "timing": res.timing, "optimizer_groups": res.param_groups,
        "resumed_from_epoch": res.resumed_from,
        "num_train_classes": train.num_classes, "num_test_classes": test.num_classes,
        "num_train_images": len(train), "num_test_images": len(test),
        "warnings": list(notes), "determinism": determinism(cfg)})
    if distributed.is_main():
        record.write(run_dir / RECORD)
    distributed.barrier()
    return record.to_dict()
