"""Smoke mode takes a preset's real path: only data, image size and iterations shrink."""
from __future__ import annotations

import pytest

from dmlbench.bench import config as C
from dmlbench.bench.data.fixtures import BUILDERS
from dmlbench.bench.suite import list_suites, load_suite, plan, plan_mlrc, smoke_suite

KEPT = [("model", k) for k in ("trunk", "pooling", "freeze_bn", "freeze_bn_affine",
                               "normalize_train", "embedding_size")] + \
       [("dataset", "transforms")] + \
       [("train", k) for k in ("optimizer", "lr", "embedder_lr", "weight_decay", "eps",
                               "schedule", "milestones", "gamma", "amp_", "select_by")]


@pytest.mark.parametrize("name", [n for n in list_suites() if n != "demo"])
def test_smoke_keeps_every_preset_setting_of_the_path(name, tmp_path):
    suite = load_suite(name)
    real = plan(suite, [], tmp_path) + [ps for ps in plan_mlrc(suite, [], tmp_path)[0]]
    smoke = smoke_suite(suite)
    root = tmp_path / "smoke-data"
    cut = plan(smoke, [], tmp_path, smoke_root=root) + \
        [ps for ps in plan_mlrc(smoke, [], tmp_path, smoke_root=root)[0]]
    assert cut, name
    by_key = {}
    for p in real:
        by_key.setdefault((p.cfg["dataset"]["name"], p.cfg["run"]["name"] or
                           p.cfg["method"]["name"]), p.cfg)
    for p in cut:
        ref = by_key[(p.cfg["dataset"]["name"], p.cfg["run"]["name"] or p.cfg["method"]["name"])]
        for sec, key in KEPT:
            if key in ref[sec]:
                assert p.cfg[sec][key] == ref[sec][key], (name, sec, key)
        assert p.cfg["model"]["pretrained"] is False and p.cfg["model"]["weights"] is None
        if p.cfg["dataset"]["name"] in BUILDERS:      # on-disk data: fixture trees
            assert p.cfg["dataset"]["root"] == str(root)
        assert p.cfg["train"]["iterations_per_epoch"] == 1


def test_memvir_table2_smoke_runs_bninception_with_mlrc_transforms(tmp_path):
    smoke = smoke_suite(load_suite("memvir-table2"))
    studies, _ = plan_mlrc(smoke, [], tmp_path, smoke_root=tmp_path / "d")
    assert {ps.cfg["model"]["trunk"] for ps in studies} == {"bninception"}
    assert {ps.cfg["dataset"]["transforms"] for ps in studies} == {"mlrc"}
    assert C.defaults()["dataset"]["transforms"] == "default"
