"""Config loading: defaults < YAML < overrides, validation messages."""
from __future__ import annotations

import pytest

from dmlbench.bench.config import defaults, load_config, parse_override
from dmlbench.bench.errors import UserError


def test_overrides_parse_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1e-4\n  epochs: 3\nmethod:\n  name: ms\n")
    cfg = load_config(f, ["train.epochs=5", "method.params.alpha=2.5", "eval.recall_ks=[1,10]",
                          "train.amp=true"])
    assert cfg["train"]["lr"] == 1e-4 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["epochs"] == 5
    assert cfg["method"] == {"name": "ms", "params": {"alpha": 2.5}}
    assert cfg["eval"]["recall_ks"] == [1, 10]
    assert cfg["train"]["amp"] is True
    assert cfg["train"]["batch_size"] == defaults()["train"]["batch_size"]


@pytest.mark.parametrize("override,needle", [
    ("train.lr=-1", "train.lr=-1"),
    ("train.m_per_class=3", "does not divide train.batch_size"),
    ("model.embedding_size=0", "model.embedding_size=0"),
    ("train.nope=1", "unknown config key train.nope"),
    ("bogus.x=1", "unknown config section 'bogus'"),
    ("train.optimizer=lbfgs", "one of adam, adamw, rmsprop, sgd"),
    ("eval.metrics=[precision_at_1, foo]", "unknown metric 'foo'"),
    ("train.select_by=nmi", None),
    ("train.lr", "not of the form key=value"),
])
def test_invalid_values_name_key_and_fix(override, needle):
    if needle is None:  # valid
        assert load_config(overrides=[override])["train"]["select_by"] == "nmi"
        return
    with pytest.raises(UserError) as e:
        load_config(overrides=[override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_select_by_must_be_computed():
    with pytest.raises(UserError, match="train.select_by='nmi'"):
        load_config(overrides=["eval.metrics=[precision_at_1]", "train.select_by=nmi"])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="cannot read config file"):
        load_config(bad)


def test_parse_override_keeps_strings():
    assert parse_override("method.name=memvir+normsoftmax") == (["method", "name"],
                                                                "memvir+normsoftmax")
    assert parse_override("train.lr=2e-3")[1] == 2e-3
