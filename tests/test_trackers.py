"""Trackers (bench.train.trackers): what TensorBoard's event files, MLflow's local file store
and an offline W&B run hold after a fit, read back with each tool's own reader and compared to
the training log; a missing package is one line naming its extra, before any training."""
from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest
import yaml

from dmlbench.bench.cli import main
from dmlbench.bench.config import load_config
from dmlbench.bench.data.loading import Split
from dmlbench.bench.errors import UserError
from dmlbench.bench.train import TRAIN_LOG, fit
from dmlbench.bench.train.trackers import flat_config, make_trackers
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

MEMVIR = ["method.name=memvir+normsoftmax", "method.params.warmup_epochs=1",
          "method.params.num_steps=2", "method.params.step_gap=1", "train.log_every=2"]


def _splits(ds):
    return Split.of_classes(ds, ds.train_classes), Split.of_classes(ds, ds.test_classes)


def _fit(run_dir: Path, ds, tracker: str, *extra: str):
    cfg = load_config(overrides=[*TINY, *MEMVIR, f"train.trackers=[{tracker}]", *extra])
    return cfg, fit(cfg, *_splits(ds), run_dir=run_dir)


def _log(run_dir: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(x) for x in (run_dir / TRAIN_LOG).read_text().splitlines()]
    return ([r for r in lines if r["kind"] == "train"], [r for r in lines if r["kind"] == "eval"])


def test_flat_config_keys_and_values():
    cfg = load_config(overrides=[*TINY, "method.params.alpha=2", "train.trackers=[mlflow]"])
    flat = flat_config(cfg)
    assert flat["train.lr"] == 1e-3 and flat["method.params.alpha"] == 2
    assert flat["dataset.options.num_classes"] == 20 and flat["dataset.root"] == "null"
    assert flat["eval.recall_ks"] == "[1, 2, 4, 8]" and flat["train.trackers"] == '["mlflow"]'
    assert flat["train.milestones"] == "[]" and flat["train.augment"] is True
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


@pytest.mark.parametrize("name,module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"),
                                         ("wandb", "wandb")])
def test_missing_package_names_its_extra(monkeypatch, tmp_path, name, module):
    monkeypatch.setitem(sys.modules, module, None)   # `import module` raises ImportError
    cfg = load_config(overrides=[*TINY, f"train.trackers=[{name}]"])
    with pytest.raises(UserError, match=rf"pip install 'dmlbench\[{name}\]'"):
        make_trackers([name], tmp_path, cfg)


def test_missing_package_stops_the_command_before_training(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"run": {"output": str(tmp_path / "out")}}))
    assert main(["run", str(f), *TINY, "train.trackers=[mlflow]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "pip install 'dmlbench[mlflow]'" in err
    assert not list(tmp_path.rglob("checkpoint.pt")) and not list(tmp_path.rglob(TRAIN_LOG))


# ---- TensorBoard ----------------------------------------------------------------------------


def _tb(run_dir: Path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(run_dir / "tb"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return acc


def _tb_series(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_scalars_hparams_and_final_metrics(tmp_path, tiny_glyphs):
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, res = _fit(tmp_path, tiny_glyphs, "tensorboard")
    train, evals = _log(tmp_path)
    acc = _tb(tmp_path)
    loss = _tb_series(acc, "train/loss")
    assert [s for s, _ in loss] == [r["iteration"] for r in train] == [2, 4, 5, 7, 9, 10, 12,
                                                                        14, 15]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [v for _, v in _tb_series(acc, "train/memvir_k")] == \
        [r["stats"]["memvir_k"] for r in train] == [0, 0, 0, 0, 1, 2, 2, 2, 2]
    assert [v for _, v in _tb_series(acc, "train/lr/loss")] == pytest.approx([0.01] * 9)
    p1 = _tb_series(acc, "eval/precision_at_1")
    assert [s for s, _ in p1] == [5, 10, 15]
    assert [v for _, v in p1] == pytest.approx(
        [e["metrics"]["precision_at_1"] for e in evals], rel=1e-6)
    for key, value in res.best["metrics"].items():
        assert _tb_series(acc, f"best/{key}") == [(15, pytest.approx(value, rel=1e-6))]
    assert _tb_series(acc, "best/epoch") == [(15, res.best["epoch"])]
    start = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hp["train.lr"].number_value == pytest.approx(1e-3)
    assert hp["method.name"].string_value == "memvir+normsoftmax"
    assert hp["method.params.num_steps"].number_value == 2
    assert hp["train.augment"].number_value == 1        # torch writes booleans as numbers


def test_tensorboard_resume_hides_a_killed_attempts_steps(tmp_path, tiny_glyphs):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    full = tmp_path / "full"
    _fit(full, tiny_glyphs, "tensorboard")
    cut = tmp_path / "cut"
    _fit(cut, tiny_glyphs, "tensorboard", "train.epochs=1")
    stale = SummaryWriter(str(cut / "tb"))        # what a killed continuation wrote
    for step in (7, 9):
        stale.add_scalar("train/loss", 99.0, global_step=step)
    stale.close()
    _fit(cut, tiny_glyphs, "tensorboard")
    resumed, whole = _tb_series(_tb(cut), "train/loss"), _tb_series(_tb(full), "train/loss")
    assert [s for s, _ in resumed] == [s for s, _ in whole] == [2, 4, 5, 7, 9, 10, 12, 14, 15]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in whole], rel=1e-6)


# ---- MLflow ---------------------------------------------------------------------------------


@pytest.fixture
def mlflow_env(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)


def _mlflow_run(run_dir: Path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3: a file store opt-in
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("dmlbench")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def _history(client, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_mlflow_params_metrics_and_final_metrics(tmp_path, tiny_glyphs, mlflow_env,
                                                 monkeypatch):
    import os

    cfg, res = _fit(tmp_path, tiny_glyphs, "mlflow")
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ   # the environment is left as it was
    train, evals = _log(tmp_path)
    client, run = _mlflow_run(tmp_path, monkeypatch)
    assert run.info.status == "FINISHED" and run.info.run_name == "memvir+normsoftmax s0"
    params = run.data.params
    assert params["train.lr"] == "0.001" and params["method.name"] == "memvir+normsoftmax"
    assert params["method.params.step_gap"] == "1" and params["train.epochs"] == "3"
    assert set(params) == set(flat_config(cfg))
    assert _history(client, run, "train/loss") == [
        (r["iteration"], pytest.approx(r["loss"], rel=1e-12)) for r in train]
    assert _history(client, run, "train/memvir_ring_fill") == [
        (r["iteration"], r["stats"]["memvir_ring_fill"]) for r in train]
    assert _history(client, run, "eval/mean_average_precision_at_r") == [
        (e["iteration"], pytest.approx(e["metrics"]["mean_average_precision_at_r"]))
        for e in evals]
    metrics = run.data.metrics
    for key, value in res.best["metrics"].items():
        assert metrics[f"best/{key}"] == pytest.approx(value)
        assert metrics[f"final/{key}"] == pytest.approx(res.final["metrics"][key])


def test_mlflow_resume_continues_the_same_run(tmp_path, tiny_glyphs, mlflow_env, monkeypatch):
    _fit(tmp_path / "full", tiny_glyphs, "mlflow")
    cut = tmp_path / "cut"
    _fit(cut, tiny_glyphs, "mlflow", "train.epochs=1")
    first_id = (cut / "mlflow_run_id").read_text().strip()
    _fit(cut, tiny_glyphs, "mlflow")
    client, run = _mlflow_run(cut, monkeypatch)
    assert run.info.run_id == first_id and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "1"     # MLflow params keep their first value
    whole_client, whole = _mlflow_run(tmp_path / "full", monkeypatch)
    resumed = _history(client, run, "train/loss")
    assert [s for s, _ in resumed] == [2, 4, 5, 7, 9, 10, 12, 14, 15]
    assert resumed == [(s, pytest.approx(v, rel=1e-12))
                       for s, v in _history(whole_client, whole, "train/loss")]


# ---- W&B (offline) --------------------------------------------------------------------------


def _wandb_records(path: Path):
    """The records of a W&B run file: a 7-byte header (":W&B", magic, version), then LevelDB
    log blocks of 32 KiB whose chunks (crc32c, length, type) carry Record protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, parts, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:                                     # block trailer: padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):                 # still being written
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):                               # FULL, FIRST
            parts = chunk
        else:                                            # MIDDLE, LAST
            parts += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            out.append(record)
    return out


def test_wandb_offline_run_holds_config_history_and_summary(tmp_path, tiny_glyphs,
                                                            monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg, res = _fit(tmp_path / "run", tiny_glyphs, "wandb")
    train, evals = _log(tmp_path / "run")
    files = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    # W&B's service process may still be writing after run.finish() returns: wait (bounded)
    # for the run's exit record
    deadline = time.monotonic() + 60
    while True:
        records = _wandb_records(files[0])
        if any(r.WhichOneof("record_type") == "exit" for r in records) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.2)
    history: dict[int, dict[str, float]] = {}
    config: dict[str, object] = {}
    summary: dict[str, float] = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = history.setdefault(r.history.step.num, {})
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
        elif kind in ("run", "config"):                 # the config starts in the run record
            items = r.run.config.update if kind == "run" else r.config.update
            config.update({i.key: json.loads(i.value_json) for i in items})
        elif kind == "summary":
            for item in r.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
    rows = {s: row for s, row in history.items() if "train/loss" in row}
    assert sorted(rows) == [r["iteration"] for r in train]
    assert [rows[r["iteration"]]["train/loss"] for r in train] == \
        pytest.approx([r["loss"] for r in train], rel=1e-12)
    assert [rows[r["iteration"]]["train/memvir_k"] for r in train] == \
        [r["stats"]["memvir_k"] for r in train]
    assert [history[e["iteration"]]["eval/precision_at_1"] for e in evals] == \
        pytest.approx([e["metrics"]["precision_at_1"] for e in evals])
    assert config["train"]["lr"] == 1e-3 and config["method"]["name"] == "memvir+normsoftmax"
    assert config["method"]["params"]["num_steps"] == 2
    for key, value in res.best["metrics"].items():
        assert summary[f"best/{key}"] == pytest.approx(value)
