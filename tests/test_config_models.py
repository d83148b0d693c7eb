"""Typed configuration (bench.config.models, bench.suite.schema, protocols.mlrc.options): each
rule is declared once and fires with its one-line message; defaults and run fingerprints are
those of the schema-dict config the models replaced."""
from __future__ import annotations

import importlib.metadata
import json

import pytest

from dmlbench.bench.config import (SCHEMA, RunConfig, defaults, load_config, load_run_config,
                                   validate)
from dmlbench.bench.errors import UserError
from dmlbench.bench.records import fingerprint
from dmlbench.bench.suite.schema import SuiteSpec, load_suite
from dmlbench.protocols.mlrc.options import SearchOptions

# The defaults of the SCHEMA dict that RunConfig replaced (copied from it, in its key order).
OLD_DEFAULTS = {
    "dataset": {"name": "glyphs", "root": None, "image_size": 32, "transforms": "default",
                "cache": "none", "options": {}},
    "model": {"trunk": "smallcnn", "embedding_size": 64, "pretrained": False, "pooling": "avg",
              "freeze_bn": False, "freeze_bn_affine": False, "weights": None,
              "normalize_train": False, "width": 32},
    "method": {"name": "normsoftmax", "params": {}},
    "train": {"batch_size": 64, "m_per_class": None, "optimizer": "adam", "lr": 0.001,
              "embedder_lr": None, "weight_decay": 0.0001, "momentum": 0.9, "eps": 1e-08,
              "schedule": "none", "milestones": [], "gamma": 0.1, "step_size": 10,
              "epochs": 10, "iterations_per_epoch": None, "eval_every": 1, "patience": None,
              "select_by": "precision_at_1", "augment": True, "amp": False, "device": "auto",
              "num_workers": 0, "max_grad_norm": None, "progress": True,
              "deterministic": True, "threads": None, "log_every": 10, "trackers": []},
    "eval": {"batch_size": 512, "recall_ks": [1, 2, 4, 8], "metrics": None,
             "kmeans_init": "kmeans++"},
    "run": {"seed": 0, "protocol": "conventional", "output": "runs", "name": None},
}

# What each key allows, as the schema's checkers said it (three optional strings now add
# "or null", as the optional numbers always did).
ALLOWED = {
    ("dataset", "name"): "a non-empty string",
    ("dataset", "root"): "a non-empty string or null",
    ("dataset", "image_size"): "an integer >= 8 and <= 1024",
    ("dataset", "transforms"): "one of default, mlrc, conventional",
    ("dataset", "cache"): "one of none, host, device",
    ("dataset", "options"): "a mapping of name: value",
    ("model", "trunk"): "a non-empty string",
    ("model", "embedding_size"): "an integer >= 1 and <= 65536",
    ("model", "pretrained"): "true or false",
    ("model", "pooling"): "one of avg, avgmax",
    ("model", "freeze_bn"): "true or false",
    ("model", "freeze_bn_affine"): "true or false",
    ("model", "weights"): "a non-empty string or null",
    ("model", "normalize_train"): "true or false",
    ("model", "width"): "an integer >= 1 and <= 4096",
    ("method", "name"): "a non-empty string",
    ("method", "params"): "a mapping of name: value",
    ("train", "batch_size"): "an integer >= 2 and <= 65536",
    ("train", "m_per_class"): "an integer >= 1 and <= 4096 or null",
    ("train", "optimizer"): "one of adam, adamw, rmsprop, sgd",
    ("train", "lr"): "a number > 0 and <= 10",
    ("train", "embedder_lr"): "a number > 0 and <= 10 or null",
    ("train", "weight_decay"): "a number >= 0 and <= 1",
    ("train", "momentum"): "a number >= 0 and <= 1",
    ("train", "eps"): "a number > 0 and <= 1",
    ("train", "schedule"): "one of none, step, multistep, cosine",
    ("train", "milestones"): "a list of positive epoch numbers",
    ("train", "gamma"): "a number > 0 and <= 1",
    ("train", "step_size"): "an integer >= 1",
    ("train", "epochs"): "an integer >= 1 and <= 1048576",
    ("train", "iterations_per_epoch"): "an integer >= 1 and <= 1073741824 or null",
    ("train", "eval_every"): "an integer >= 1",
    ("train", "patience"): "an integer >= 0 or null",
    ("train", "select_by"): "a non-empty string",
    ("train", "augment"): "true or false",
    ("train", "amp"): "true or false",
    ("train", "device"): "auto, cpu, cuda or cuda:N",
    ("train", "num_workers"): "an integer >= 0 and <= 256",
    ("train", "max_grad_norm"): "a number > 0 or null",
    ("train", "progress"): "true or false",
    ("train", "deterministic"): "true or false",
    ("train", "threads"): "an integer >= 1 and <= 1024 or null",
    ("train", "log_every"): "an integer >= 1 and <= 1048576",
    ("train", "trackers"):
        "a list of distinct names from tensorboard, mlflow, wandb, e.g. [tensorboard]",
    ("eval", "batch_size"): "an integer >= 1 and <= 1048576",
    ("eval", "recall_ks"): "a list of positive integers, e.g. [1, 2, 4, 8]",
    ("eval", "metrics"): "null or a list of metric names",
    ("eval", "kmeans_init"): "one of kmeans++, random",
    ("run", "seed"): "an integer >= 0 and <= 4294967295",
    ("run", "protocol"): "one of conventional, mlrc",
    ("run", "output"): "a non-empty string",
    ("run", "name"): "a non-empty string or null",
}


def _message(cfg: dict) -> str:
    with pytest.raises(UserError) as e:
        RunConfig.from_dict(cfg)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_defaults_are_the_old_schema_defaults():
    d = defaults()
    assert d == OLD_DEFAULTS
    assert json.dumps(d) == json.dumps(OLD_DEFAULTS)  # same key order too (fingerprints)
    assert d == RunConfig().to_dict() and d is not defaults()
    assert {(s, k) for s in d for k in d[s]} == set(ALLOWED)
    assert {s: {k: v[0] for k, v in keys.items()} for s, keys in SCHEMA.items()} == d


@pytest.mark.parametrize("sec,key", sorted(ALLOWED))
def test_each_key_names_key_value_and_what_is_allowed(sec, key):
    bad = 3 if key in ("options", "params") else {"x": 1}
    msg = _message({sec: {key: bad}})
    assert msg == f"invalid config value {sec}.{key}={bad!r}; allowed: {ALLOWED[(sec, key)]}"
    # the same line through the YAML / override path
    with pytest.raises(UserError, match="^" + msg.replace("[", r"\[").replace("+", r"\+")
                       .replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_config(base={**defaults(), sec: {**defaults()[sec], key: bad}})
    # and the schema view of the same declaration
    assert SCHEMA[sec][key][1](bad) == ALLOWED[(sec, key)]
    assert SCHEMA[sec][key][1](OLD_DEFAULTS[sec][key]) is None


@pytest.mark.parametrize("overrides,message", [
    (["train.m_per_class=3"], "train.m_per_class=3 does not divide train.batch_size=64; choose "
                              "a batch size that is a multiple of it"),
    (["train.select_by=nmi", "eval.metrics=[precision_at_1]"],
     "invalid config value train.select_by='nmi'; allowed: one of the computed metrics: "
     "precision_at_1"),
    (["train.select_by=recall_at_3"],
     "invalid config value train.select_by='recall_at_3'; allowed: one of the computed metrics: "
     "precision_at_1, r_precision, mean_average_precision_at_r, recall_at_1, recall_at_2, "
     "recall_at_4, recall_at_8, nmi, f1"),
    (["eval.metrics=[precision_at_1, foo]"],
     "invalid config value eval.metrics: unknown metric 'foo'; valid metrics: precision_at_1, "
     "r_precision, mean_average_precision_at_r, recall_at_1, recall_at_2, recall_at_4, "
     "recall_at_8, nmi, f1"),
    (["train.trackers=[tensorboard, tensorboard]"],
     "invalid config value train.trackers=['tensorboard', 'tensorboard']; allowed: a list of "
     "distinct names from tensorboard, mlflow, wandb, e.g. [tensorboard]"),
    (["train.lr=nan"], "invalid config value train.lr=nan; allowed: a number > 0 and <= 10"),
    (["train.nope=1"], "unknown config key train.nope; valid keys in train: "
                       + ", ".join(OLD_DEFAULTS["train"])),
    (["bogus.x=1"], "unknown config section 'bogus'; valid sections: dataset, model, method, "
                    "train, eval, run"),
])
def test_cross_key_rules_fire_once_with_their_message(overrides, message):
    with pytest.raises(UserError) as e:
        load_config(overrides=overrides)
    assert str(e.value) == message


def test_hand_made_dicts_get_the_same_messages_and_defaults():
    assert _message({"train": {"nope": 1}}).startswith("unknown config key train.nope;")
    assert _message({"bogus": {}}).startswith("unknown config section 'bogus';")
    assert _message({"train": 3}) == "config section 'train' must be a mapping, got 3"
    assert _message({"train": {"m_per_class": 3}}).endswith("does not divide "
                                                             "train.batch_size=64; choose a "
                                                             "batch size that is a multiple of it")
    assert validate({"train": {"lr": 0.5}}) == {**OLD_DEFAULTS,
                                                "train": {**OLD_DEFAULTS["train"], "lr": 0.5}}


def test_fit_and_build_parts_validate_a_hand_made_dict_first():
    from dmlbench.bench.train import build_parts, fit

    # the config is checked before the (here missing) data is touched
    with pytest.raises(UserError, match="train.m_per_class=3 does not divide"):
        build_parts({"train": {"m_per_class": 3}}, None, None)
    with pytest.raises(UserError, match="train.select_by='nope'"):
        fit({"train": {"select_by": "nope"}}, None, None)


def test_values_keep_their_written_type():
    cfg = load_config(overrides=["train.lr=1", "train.weight_decay=0", "train.epochs=3.0",
                                 "eval.recall_ks=[1, 10]", "method.params.alpha=2"])
    assert cfg["train"]["lr"] == 1 and type(cfg["train"]["lr"]) is int
    assert type(cfg["train"]["weight_decay"]) is int
    assert cfg["train"]["epochs"] == 3 and type(cfg["train"]["epochs"]) is int  # 3.0 -> 3
    assert cfg["method"]["params"] == {"alpha": 2}
    with pytest.raises(UserError, match="train.amp=1; allowed: true or false"):
        load_config(overrides=["train.amp=1"])  # strict: no 1 -> True
    with pytest.raises(UserError, match="train.epochs='3'; allowed: an integer"):
        load_config(base={**defaults(), "train": {**defaults()["train"], "epochs": "3"}})
    assert load_config(overrides=["train.amp=true"])["train"]["amp"] is True


def test_typed_api_round_trips():
    rc = load_run_config(overrides=["train.lr=2e-3", "model.embedding_size=128"])
    assert isinstance(rc, RunConfig)
    assert rc.train.lr == 2e-3 and rc.model.embedding_size == 128
    assert rc.eval.computed()[:2] == ["precision_at_1", "r_precision"]
    d = rc.to_dict()
    assert d == load_config(overrides=["train.lr=2e-3", "model.embedding_size=128"])
    assert RunConfig.from_dict(d).to_dict() == d


@pytest.fixture
def pinned_versions(monkeypatch):
    """Fingerprints include torch's and PML's minor versions: pin those they were made with."""
    real = importlib.metadata.version
    pins = {"torch": "2.14.1", "pytorch-metric-learning": "2.9.0"}
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda pkg: pins[pkg] if pkg in pins else real(pkg))


EFFECTS = {"model": {"width": 16}, "train": {"epochs": 30, "eval_every": 5, "lr": 0.002,
                                              "progress": False, "threads": 1}}


@pytest.mark.parametrize("partial,expected", [
    # two runs of runs/glyphs-effects (their folder names end with these fingerprints)
    ({**EFFECTS, "method": {"name": "memvir+normsoftmax", "params": {
        "num_steps": 5, "step_gap": 5, "warmup_epochs": 1,
        "weight_init": "kaiming_uniform_classes"}}}, "5434f29c87"),
    ({**EFFECTS, "method": {"name": "ms+miner+das"}, "run": {"seed": 1}}, "90f2f5d954"),
])
def test_fingerprints_of_recorded_runs_unchanged(pinned_versions, partial, expected):
    cfg = load_config(base=defaults())
    for sec, values in partial.items():
        cfg[sec].update(values)
    assert fingerprint(validate(cfg)) == expected


def test_fingerprint_of_a_config_touching_many_keys_unchanged(pinned_versions):
    """Computed with the schema-dict config before the models."""
    cfg = load_config(overrides=[
        "train.lr=1", "train.m_per_class=4", "train.batch_size=32", "eval.recall_ks=[1,10]",
        "eval.metrics=[precision_at_1, recall_at_10, nmi]", "train.select_by=recall_at_10",
        "train.schedule=multistep", "train.milestones=[5, 8]", "train.weight_decay=0",
        "model.embedding_size=128", "dataset.transforms=mlrc", "method.name=ms+miner",
        "method.params.alpha=2", "train.trackers=[tensorboard]", "train.embedder_lr=1e-4"])
    assert fingerprint(cfg) == "e06ea7096b"


def test_json_schemas_export():
    s = RunConfig.model_json_schema()
    assert list(s["properties"]) == list(OLD_DEFAULTS)
    train = s["$defs"]["TrainConfig"]
    assert train["additionalProperties"] is False
    assert train["properties"]["lr"]["exclusiveMinimum"] == 0
    assert train["properties"]["lr"]["maximum"] == 10
    assert train["properties"]["optimizer"]["enum"] == ["adam", "adamw", "rmsprop", "sgd"]
    assert set(train["properties"]) == set(OLD_DEFAULTS["train"])
    json.dumps(s)
    assert "runs" in SuiteSpec.model_json_schema()["required"]
    opts = SearchOptions.model_json_schema()["properties"]
    assert opts["n_trials"]["default"] == 50 and opts["n_trials"]["minimum"] == 1


# ----------------------------------------------------------------------------- SearchOptions

def test_search_options_defaults_and_messages():
    o = SearchOptions.from_dict(None)
    assert (o.n_trials, o.sampler, o.seed, o.pruner, o.grid_points, o.num_folds,
            o.reproductions, o.max_failed, o.space, o.storage, o.study, o.workers,
            o.heartbeat_interval, o.grace_period) == (50, "tpe", None, "none", 3, 4, 3, None,
                                                      {}, None, None, 1, 10, 40)
    assert SearchOptions.KEYS[:3] == ("n_trials", "sampler", "seed")
    cases = {
        ("n_trials", 0): "invalid option.n_trials=0; allowed: an integer >= 1",
        ("sampler", "cma"): "invalid option.sampler='cma'; allowed: tpe, gp, random, grid",
        ("pruner", 1): "invalid option.pruner=1; allowed: none, median",
        ("num_folds", 1): "invalid option.num_folds=1; allowed: an integer >= 2 (MLRC uses 4)",
        ("seed", -1): "invalid option.seed=-1; allowed: an integer >= 0 or null",
        ("grace_period", 5): "invalid option.grace_period=5; allowed: more seconds than "
                             "heartbeat_interval=10",
        ("bogus", 1): "unknown option key(s) ['bogus']; valid keys: "
                      + ", ".join(SearchOptions.KEYS),
    }
    for (key, value), message in cases.items():
        with pytest.raises(UserError) as e:
            SearchOptions.from_dict({key: value}, where="option")
        assert str(e.value) == message
    with pytest.raises(UserError, match=r"^invalid search.workers=0;"):
        SearchOptions(workers=0)  # direct construction: a UserError too, named `search`


def test_cli_help_reads_the_search_defaults(capsys):
    from dmlbench.bench.cli import main

    with pytest.raises(SystemExit):
        main(["mlrc", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("completed trials (default 50)", "the Optuna sampler (default tpe)",
                   "--sampler grid (default 3)", "between folds (default none)",
                   "for the test table (default 3)"):
        assert phrase in text


# ----------------------------------------------------------------------------- SuiteSpec

def _suite(tmp_path, **data) -> str:
    import yaml

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"runs": ["ms"], **data}))
    return str(f)


@pytest.mark.parametrize("data,message", [
    ({"bogus": 1}, "suite 's' has unknown key(s) ['bogus']; valid keys: config, dataset_config, "
                   "datasets, description, launch, mlrc, name, protocol, published, report, "
                   "runs, search, seeds"),
    ({"runs": []}, "suite 's' needs a non-empty list `runs`"),
    ({"runs": [{"method": "ms", "x": 1}]}, "suite 's' run #1 must be a mapping with `method` and "
                                           "optionally ['config', 'datasets', 'name', "
                                           "'params', 'space']"),
    ({"runs": [{"method": "ms", "datasets": []}]},
     "suite 's' run #1 (ms): `datasets` must be a non-empty list of dataset names"),
    ({"seeds": [0, 0]}, "suite 's': seeds=[0, 0] is not valid; allowed: a non-empty list of "
                        "distinct integers >= 0, e.g. seeds: [0, 1, 2]"),
    ({"protocol": "x"}, "suite 's': protocol 'x' is not valid; valid protocols: conventional, "
                        "mlrc"),
    ({"protocol": "mlrc", "seeds": [1]}, "suite 's': an mlrc suite takes no `seeds`; use "
                                         "search.seed and search.reproductions"),
    ({"search": {}}, "suite 's': `search` applies to protocol mlrc; put it under the `mlrc` "
                     "part or set protocol: mlrc"),
    ({"dataset_config": {"cub": {"train": {"nope": 1}}}},
     "unknown config key suite dataset_config.cub.train.nope; valid keys in train: "
     + ", ".join(OLD_DEFAULTS["train"])),
    ({"mlrc": {"runs": ["ms"], "x": 1}}, "suite 's' mlrc part has unknown key(s) ['x']; valid "
                                         "keys: config, dataset_config, datasets, description, "
                                         "report, runs, search"),
    ({"mlrc": {"runs": []}}, "suite 's (mlrc part)' needs a non-empty list `runs`"),
    ({"published": ""}, "suite 's': `published` must name the published numbers, e.g. "
                        "published: memvir-table2"),
])
def test_suite_rules_and_messages(tmp_path, data, message):
    with pytest.raises(UserError) as e:
        load_suite(_suite(tmp_path, **data))
    assert str(e.value) == message


def test_suite_runs_given_by_name_become_entries(tmp_path):
    s = load_suite(_suite(tmp_path, runs=["ms", {"method": "normsoftmax", "params": {"a": 1}}],
                          mlrc={"runs": ["ms+miner"]}))
    assert s["runs"] == [{"method": "ms"}, {"method": "normsoftmax", "params": {"a": 1}}]
    assert s["mlrc"]["runs"] == [{"method": "ms+miner"}]
    spec = SuiteSpec.from_dict(s)
    assert spec.runs[1].params == {"a": 1} and spec.seeds == [0] and spec.mlrc.runs[0].method \
        == "ms+miner"
