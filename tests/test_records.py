"""RunRecord: one typed record for every protocol, written and read by bench.records."""
from __future__ import annotations

import json

import pytest

from dmlbench.bench.config import load_config
from dmlbench.bench.records import RunRecord, Status, read_run_records
from tests.conftest import TINY


def test_round_trip_and_status_enum(tmp_path):
    cfg = load_config(overrides=TINY)
    rec = RunRecord.start(cfg, run_id="r1", suite="s")
    assert rec.status is Status.FAILED and rec.method == "normsoftmax" and rec.seed == 0
    rec.update(status="diverged", error="loss became nan", mlrc={"folds": []}, warnings=["w"])
    assert rec.status is Status.DIVERGED and rec.status.finished
    assert rec.extra == {"mlrc": {"folds": []}, "warnings": ["w"]}
    rec.write(tmp_path / "r1" / "record.json")
    on_disk = json.loads((tmp_path / "r1" / "record.json").read_text())
    assert on_disk["status"] == "diverged" and on_disk["mlrc"] == {"folds": []}
    assert on_disk["schema"] == 1 and on_disk["fingerprint"] == rec.fingerprint
    (back,) = read_run_records(tmp_path)
    assert back == rec
    with pytest.raises(ValueError):
        rec.update(status="exploded")


def test_conventional_and_mlrc_records_share_the_schema(tmp_path, tiny_glyphs):
    from dmlbench.protocols.conventional import run_conventional, run_id
    from dmlbench.protocols.mlrc import SearchOptions, run_mlrc

    cfg = load_config(overrides=[*TINY, "train.epochs=1"])
    conv = run_conventional(cfg, tmp_path / "c" / run_id(cfg), dataset=tiny_glyphs)
    res = run_mlrc(load_config(overrides=[*TINY, "train.epochs=1"]),
                   SearchOptions(n_trials=1, reproductions=1), tmp_path / "m",
                   dataset=tiny_glyphs, log=lambda s: None)
    mlrc = res["records"][0]
    fields = set(RunRecord.__dataclass_fields__) - {"extra"} | {"schema"}
    assert fields <= set(conv) and fields <= set(mlrc)
    assert conv["protocol"] == "conventional" and mlrc["protocol"] == "mlrc"
    assert {r.protocol for r in read_run_records(tmp_path)} == {"conventional", "mlrc"}
