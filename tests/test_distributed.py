"""Data-parallel training (torchrun-style, Gloo on CPU): 2 processes give the same model as one
process on the same global batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dmlbench.bench.config import load_config
from dmlbench.bench.data import load_dataset
from dmlbench.bench.data.loading import Split
from dmlbench.bench.errors import UserError
from dmlbench.bench.train import fit
from tests.conftest import TINY

BASE = [*TINY, "model.freeze_bn=true", "train.epochs=2", "train.batch_size=16"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _splits():
    ds = load_dataset("glyphs", num_classes=20, images_per_class=8)
    return Split.of_classes(ds, ds.train_classes), Split.of_classes(ds, ds.test_classes)


def _worker(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        res = fit(load_config(overrides=overrides), *_splits(), keep_model=True)
        if rank == 0:
            torch.save({"model": res.model.state_dict(), "evaluations": res.evaluations,
                        "images_per_s": res.images_per_s}, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("method", ["normsoftmax", "ms", "ms+das"])
def test_two_processes_equal_one(tmp_path, method):
    overrides = [*BASE, f"method.name={method}"]
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, _free_port(), overrides, out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=False)
    single = fit(load_config(overrides=overrides), *_splits(), keep_model=True)
    ref = single.model.state_dict()
    for key, value in ddp["model"].items():
        assert torch.allclose(value, ref[key], rtol=1e-3, atol=1e-5), key
    assert [e["epoch"] for e in ddp["evaluations"]] == [1, 2]
    for a, b in zip(ddp["evaluations"], single.evaluations):
        assert a["metrics"]["mean_average_precision_at_r"] == pytest.approx(
            b["metrics"]["mean_average_precision_at_r"], abs=0.02)


def _bad_batch_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        fit(load_config(overrides=[*BASE, "method.name=ms", "train.batch_size=12"]), *_splits())
    except UserError as e:
        if rank == 0:
            with open(out, "w") as f:
                f.write(str(e))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_batch_must_split_into_whole_class_groups(tmp_path):
    out = tmp_path / "err.txt"
    mp.spawn(_bad_batch_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    assert "must split into 2 processes of whole groups of m_per_class=4" in out.read_text()
