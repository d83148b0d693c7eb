"""The shipped presets: settings as the specs and the authors' code give them (one test per
deviation found in issue 9), a provenance section per preset, `--plan` with GPU-hour
estimates, every preset end to end in smoke mode on fixture trees in the real layouts,
published numbers beside the measured ones; per-dataset suite settings; the fixture trees."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dmlbench.bench import suite as S
from dmlbench.bench.cli import main
from dmlbench.bench.data import load_dataset
from dmlbench.bench.data.fixtures import build_fixture_tree
from dmlbench.bench.errors import UserError
from dmlbench.methods import build_objective, resolve_params
from dmlbench.methods.das import das_defaults
from dmlbench.protocols.splits import mlrc_folds

PRESETS = [n for n in S.list_suites() if n != "demo"]
EXPECTED = {  # preset -> (conventional runs, MLRC studies)
    "memvir-table2": (0, 30), "memvir-table4": (20, 0), "das-table2": (42, 0),
    "das-table1": (12, 0), "mlrc": (0, 33),
}
PROVENANCE = Path(S.__file__).parents[1] / "suites" / "PROVENANCE.md"


def _planned(name: str, smoke: bool = False, tmp: Path | None = None):
    suite = S.load_suite(name)
    out = (tmp or Path("runs")) / name
    root = None
    if smoke:
        suite, root = S.smoke_suite(suite), out / "smoke-data"
    runs = S.plan(suite, [], out, smoke_root=root)
    studies, _ = S.plan_mlrc(suite, [], out, smoke_root=root)
    return suite, runs, studies


def test_presets_are_shipped():
    assert set(EXPECTED) <= set(PRESETS)
    # `demo` first in the error of an unknown name (the one suite that needs no data)
    with pytest.raises(UserError, match="valid suites: demo, das-table1, das-table2"):
        S.load_suite("nope")


# ----------------------------------------------------------------------------- settings


def test_memvir_table2_mlrc_settings():
    _, runs, studies = _planned("memvir-table2")
    assert not runs
    by = {(p.cfg["dataset"]["name"], p.cfg["method"]["name"]): p for p in studies}
    assert {m for _, m in by} == {f"{p}{b}" for b in ("normsoftmax", "cosface", "arcface",
                                                    "proxynca", "proxyanchor")
                                  for p in ("", "memvir+")}
    for (ds, method), p in by.items():
        c = p.cfg
        assert (c["model"]["trunk"], c["model"]["pretrained"], c["model"]["embedding_size"],
                c["model"]["freeze_bn"]) == ("bninception", True, 128, True)
        assert (c["dataset"]["image_size"], c["dataset"]["transforms"]) == (227, "mlrc")
        t = c["train"]
        assert (t["batch_size"], t["m_per_class"], t["optimizer"], t["lr"], t["momentum"],
                t["weight_decay"]) == (32, 4, "rmsprop", 1e-6, 0.9, 1e-4)
        assert (t["iterations_per_epoch"], t["epochs"]) == (100, 1000)
        assert t["select_by"] == "mean_average_precision_at_r"
        assert (t["eval_every"], t["patience"]) == {"cub": (2, 9), "cars196": (5, 14),
                                                    "sop": (20, 39)}[ds]
        assert p.opts.n_trials == 50 and p.budget["n_trials"] == 50
        # the search space: loss lr, the loss's parameters, and MemVir's N, M, warm-up
        space, fixed = S_space(method, p)
        assert "loss_lr" in space and fixed == {"loss_weight_decay": 1e-4}
        if method.startswith("memvir+"):
            assert {"num_steps", "step_gap", "warmup_epochs"} <= set(space)
        if method.endswith("arcface"):
            assert space["scale"][2] == (300.0 if ds == "sop" else 200.0)


def S_space(method: str, p: S.PlannedStudy):
    from dmlbench.protocols.mlrc import search_space

    return search_space(method, p.cfg["method"]["params"], p.opts.space)


def test_memvir_table4_reference_settings():
    _, runs, _ = _planned("memvir-table4")
    assert {p.cfg["dataset"]["name"] for p in runs} == {"cars196"}
    assert sorted({p.cfg["run"]["seed"] for p in runs}) == [0, 1, 2, 3, 4]
    for p in runs:
        c, t, name = p.cfg, p.cfg["train"], p.cfg["method"]["name"]
        assert (c["model"]["trunk"], c["model"]["pooling"], c["model"]["embedding_size"],
                c["model"]["normalize_train"], c["model"]["freeze_bn"]) == \
            ("bninception", "avg", 512, True, True)
        assert (c["dataset"]["image_size"], c["dataset"]["transforms"]) == (224, "conventional")
        assert (t["optimizer"], t["eps"], t["weight_decay"], t["lr"], t["batch_size"],
                t["m_per_class"]) == ("adam", 0.01, 1e-4, 1e-4, 128, 1)
        params = resolve_params(name, c["method"]["params"])
        assert params["loss_lr"] == 1e-2
        if name.startswith("memvir+"):
            want = (45, 10, 40) if "normsoftmax" in name else (20, 25, 40)
            assert (params["num_steps"], params["step_gap"], params["warmup_epochs"]) == want
        if "normsoftmax" in name:
            assert params["temperature"] == pytest.approx(1 / 23, rel=1e-4)
        else:
            assert params["softmax_scale"] == 12.0
        assert c["eval"]["recall_ks"] == [1, 2, 4, 8]
        assert {"recall_at_1", "r_precision", "mean_average_precision_at_r"} <= \
            set(c["eval"]["metrics"])


# --- issue 9, item 3: each deviation of a preset from the authors' runs -------------------


def _reference_lrs(epochs: int, decay_step: int, decay_stop: int, lr: float = 1.0) -> list:
    """MemVir main.py: before training 1-indexed epoch e, lr *= 0.1 when e % decay_step == 0
    and e <= decay_stop. The lr each (0-indexed) epoch trains with."""
    out = []
    for e in range(1, epochs + 1):
        if e % decay_step == 0 and e <= decay_stop:
            lr *= 0.1
        out.append(lr)
    return out


def _preset_lrs(t: dict) -> list:
    """The lr each 0-indexed epoch trains with under the preset's per-epoch MultiStepLR."""
    assert t["schedule"] == "multistep"
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, t["milestones"], t["gamma"])
    out = []
    for _ in range(t["epochs"]):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_memvir_table4_schedule_is_the_references():
    """README commands: baselines --epochs=130 --decay_step=50 --decay_stop=50
    --check_epoch=5; MemVir --epochs=2000 --decay_step=2000 --decay_stop=2000 --check_epoch=10."""
    _, runs, _ = _planned("memvir-table4")
    for p in runs:
        t, memvir = p.cfg["train"], p.cfg["method"]["name"].startswith("memvir+")
        epochs, step, every = (2000, 2000, 10) if memvir else (130, 50, 5)
        assert t["epochs"] == epochs
        assert _preset_lrs(t) == pytest.approx(_reference_lrs(epochs, step, step))
        # reference: evaluate when the 1-indexed epoch % check_epoch == 0
        assert t["eval_every"] == every and epochs % every == 0
    base = next(p for p in runs if p.cfg["method"]["name"] == "normsoftmax").cfg["train"]
    assert base["milestones"] == [49]          # 0-indexed epoch 49 is the first at x0.1
    mem = next(p for p in runs if p.cfg["method"]["name"] == "memvir+proxynca").cfg["train"]
    lrs = _preset_lrs(mem)
    assert lrs[-1] == pytest.approx(0.1) and lrs[-2] == 1.0   # only the last epoch decays


def test_memvir_table4_trains_the_references_steps_per_epoch():
    """The reference's shuffled DataLoader keeps the last partial batch: ceil(8,054 / 128)."""
    _, runs, _ = _planned("memvir-table4")
    cars_train_images = 8054
    for p in runs:
        assert p.cfg["train"]["iterations_per_epoch"] == math.ceil(cars_train_images / 128) == 63
    assert "63" in Path(S.__file__).parents[1].joinpath("suites", "memvir-table4.yaml").read_text()


def test_memvir_table4_class_weight_init_is_the_references():
    """Norm-softmax: kaiming_uniform_(a=sqrt(5)) on (512, C), fan C; Proxy-NCA:
    kaiming_normal_(fan_out) on (512, C), fan 512; per-class norms 1.32 / 1.41 at d=512,
    C=98 (PML's N(0, 1) default: 22.6). Baseline and MemVir rows alike."""
    _, runs, _ = _planned("memvir-table4")
    seen = set()
    for p in runs:
        name, params = p.cfg["method"]["name"], p.cfg["method"]["params"]
        if (name, params.get("weight_init")) in seen:
            continue
        seen.add((name, params.get("weight_init")))
        torch.manual_seed(0)
        loss = build_objective(name, 98, 512, params).loss
        loss = getattr(loss, "loss", loss)                 # MemVir wraps the loss
        w = loss.W.t() if hasattr(loss, "W") else loss.proxies
        norm = w.detach().norm(dim=1).mean().item()
        if "normsoftmax" in name:
            assert norm == pytest.approx(math.sqrt(512 / (3 * 98)), rel=0.02)
        else:
            assert norm == pytest.approx(math.sqrt(2), rel=0.02)
        assert 1.3 <= norm <= 1.45
    assert len(seen) == 4


def test_memvir_table4_class_weights_have_the_references_weight_decay():
    """main.py: torch.optim.Adam(params_list, eps, weight_decay=1e-4) over every group."""
    _, runs, _ = _planned("memvir-table4")
    for p in runs:
        obj = build_objective(p.cfg["method"]["name"], 98, 512, p.cfg["method"]["params"])
        assert obj.loss_weight_decay == p.cfg["train"]["weight_decay"] == 1e-4


@pytest.mark.parametrize("name", ["das-table2", "das-table1"])
def test_das_presets(name):
    _, runs, _ = _planned(name)
    assert {p.cfg["dataset"]["name"] for p in runs} == {"cub", "cars196", "sop"}
    table1 = name == "das-table1"
    for p in runs:
        c, t, ds = p.cfg, p.cfg["train"], p.cfg["dataset"]["name"]
        method = c["method"]["name"]
        base = method.removesuffix("+das")
        r50_cub = table1 and ds == "cub" and c["model"]["trunk"] == "resnet50"
        assert (t["optimizer"], t["lr"], t["weight_decay"], t["epochs"], t["schedule"],
                t["milestones"], t["gamma"], t["batch_size"], t["m_per_class"]) == \
            ("adam", 1e-5, 8e-4 if r50_cub else 4e-4, 300, "multistep", [200, 250], 0.3,
             180 if r50_cub else 112, 2)
        assert c["model"]["freeze_bn"] and c["model"]["pretrained"]
        if table1:
            assert (c["model"]["pooling"], c["model"]["embedding_size"]) == ("avgmax", 512)
            assert c["model"]["trunk"] == c["run"]["name"].split("@")[1]
            assert base == "ms+miner"   # table1.sh runs MS (+ DAS) only
        else:
            assert (c["model"]["trunk"], c["model"]["pooling"],
                    c["model"]["embedding_size"]) == ("resnet50", "avg", 128)
        assert c["eval"]["recall_ks"] == ([1, 10, 100, 1000] if ds == "sop" else [1, 2, 4, 8])
        params = resolve_params(method, c["method"]["params"])
        if method.endswith("+das"):  # the authors' DAS settings
            want = das_defaults(ds, base)
            if table1:
                want["topk"] = 8
            assert {k: params[k] for k in want} == want
        if base.startswith("triplet"):
            assert (params["margin"], params["squared"]) == (0.2, True)
        if base == "ms+miner":
            assert (params["alpha"], params["beta"], params["base"], params["epsilon"]) == \
                (2.0, 40.0, 0.5, 0.1)
        if base == "margin":
            assert (params["beta"], params["loss_lr"], params["margin"]) == (1.2, 5e-4, 0.2)
            assert params["loss_weight_decay"] == 0.0
        if base in ("genlifted", "npair"):
            assert params["l2_weight"] == 0.005
    n_das = sum(p.cfg["method"]["name"].endswith("+das") for p in runs)
    assert n_das * 2 == len(runs)


def test_das_margin_on_sop_is_the_authors():
    """table2.sh: SOP margin + DAS is `--produce_type DAS` with every default: scale
    0.5-2.0, r_b 0.01, no detach."""
    _, runs, _ = _planned("das-table2")
    (p,) = [p for p in runs if (p.cfg["dataset"]["name"], p.cfg["method"]["name"])
            == ("sop", "margin+das")]
    das = build_objective("margin+das", 10, 128, p.cfg["method"]["params"]).loss.das
    assert (das.scale_range, das.shift_scale, das.detach) == ((0.5, 2.0), 0.01, False)
    for ds in ("cub", "cars196"):
        (p,) = [p for p in runs if (p.cfg["dataset"]["name"], p.cfg["method"]["name"])
                == (ds, "margin+das")]
        das = build_objective("margin+das", 10, 128, p.cfg["method"]["params"]).loss.das
        assert (das.scale_range, das.shift_scale, das.detach) == ((0.99, 1.01), 0.01, True)


@pytest.mark.parametrize("name", ["das-table2"])
def test_das_lifted_and_npair_are_not_normalised(name):
    """table2.sh: lifted / n-pair use archs without `normalize` (baselines and DAS, every
    dataset) and `--das_not_normalize`."""
    _, runs, _ = _planned(name)
    rows = [p for p in runs
            if p.cfg["method"]["name"].removesuffix("+das") in ("genlifted", "npair")]
    assert {p.cfg["dataset"]["name"] for p in rows} == {"cub", "cars196", "sop"}
    assert len(rows) == 12
    for p in rows:
        assert p.cfg["model"]["normalize_train"] is False, p.cfg["run"]["name"]
        if p.cfg["method"]["name"].endswith("+das"):
            das = build_objective(p.cfg["method"]["name"], 10, 128,
                                  p.cfg["method"]["params"]).loss.das
            assert das.normalize is False
            assert das.detach is (p.cfg["dataset"]["name"] != "sop")
    others = [p for p in runs if p not in rows]
    assert all(p.cfg["model"]["normalize_train"] is True for p in others)


def test_mlrc_preset_losses():
    _, _, studies = _planned("mlrc")
    methods = {p.cfg["method"]["name"] for p in studies}
    assert methods == {"contrastive", "triplet", "ntxent", "proxynca", "normsoftmax", "cosface",
                       "arcface", "margin", "ms", "ms+miner", "softtriple"}
    for p in studies:
        space, _ = S_space(p.cfg["method"]["name"], p)
        assert space, p.cfg["method"]["name"]


def test_mlrc_ms_and_ms_miner_rows_with_their_own_numbers():
    _, _, studies = _planned("mlrc")
    for p in studies:
        m = p.cfg["method"]["name"]
        if m.startswith("ms"):
            obj = build_objective(m, 10, 128, p.cfg["method"]["params"])
            assert (obj.miner is not None) == (m == "ms+miner")
            space, _ = S_space(m, p)
            assert ("epsilon" in space) == (m == "ms+miner")
    pub = S.load_published("mlrc")
    got = {(r.method, r.dataset): r.value for r in pub.itertuples() if r.method.startswith("ms")}
    assert got == {("ms", "cub"): 43.64, ("ms", "cars196"): 23.25, ("ms", "sop"): 41.59,
                   ("ms+miner", "cub"): 43.81, ("ms+miner", "cars196"): 23.29,
                   ("ms+miner", "sop"): 42.02}


def test_mlrc_per_dataset_search_ranges():
    """The axes of the authors' search plots (powerful-benchmarker, metric-learning branch,
    docs/papers/mlrc_plots/*.html) where they differ from the single MLRC table."""
    _, _, studies = _planned("mlrc")
    space = {(p.cfg["dataset"]["name"], p.cfg["method"]["name"]): S_space(
        p.cfg["method"]["name"], p) for p in studies}
    want = {
        ("cub", "ntxent", "temperature"): ["log", 1e-4, 100.0],
        ("cars196", "ntxent", "temperature"): ["log", 1e-5, 100.0],
        ("sop", "ntxent", "temperature"): ["log", 1e-5, 100.0],
        ("cub", "ms", "alpha"): ["float", 0.001, 100.0],
        ("cars196", "ms", "alpha"): ["float", 0.01, 100.0],
        ("cub", "ms+miner", "alpha"): ["float", 0.01, 100.0],
        ("cub", "softtriple", "gamma"): ["float", 1e-4, 100.0],
        ("cars196", "softtriple", "gamma"): ["float", 0.01, 100.0],
        ("sop", "softtriple", "la"): ["float", 0.01, 200.0],
        ("cub", "softtriple", "la"): ["float", 0.01, 100.0],
        ("sop", "ms+miner", "beta"): ["float", 0.01, 200.0],
        ("cars196", "ms+miner", "beta"): ["float", 0.01, 100.0],
        ("sop", "ms", "beta"): ["float", 0.01, 100.0],
    }
    for (ds, m, param), rng in want.items():
        assert space[(ds, m)][0][param] == rng, (ds, m, param)
    # SOP SoftTriple: reg_weight not searched (no regulariser); searched elsewhere
    sop_st, fixed = space[("sop", "softtriple")]
    assert "reg_weight" not in sop_st and fixed["reg_weight"] == 0.0
    assert "reg_weight" in space[("cub", "softtriple")][0]


def test_mlrc_loss_parameter_weight_decay():
    """The harness's metric_loss_optimizer has weight decay 1e-4; the margin searches ran
    without it."""
    for suite in ("mlrc", "memvir-table2"):
        _, _, studies = _planned(suite)
        for p in studies:
            m = p.cfg["method"]["name"]
            if not resolve_params(m).get("loss_lr"):
                continue
            obj = build_objective(m, 10, 128, p.cfg["method"]["params"])
            assert obj.loss_weight_decay == (0.0 if m == "margin" else 1e-4), (suite, m)


def test_demo_init_and_ms_rows():
    """The demo's Norm-softmax rows (and its MLRC part) use class vectors of norm ~sqrt(2), as
    the MemVir reference does at d = 512; its MS rows keep their loss + miner meaning."""
    suite, runs, studies = _planned("demo")
    for p in [*runs, *studies]:
        m = p.cfg["method"]["name"]
        if m.endswith("normsoftmax"):
            assert p.cfg["method"]["params"]["weight_init"] == "kaiming_normal"
            torch.manual_seed(0)
            loss = build_objective(m, 200, 64, p.cfg["method"]["params"]).loss
            w = getattr(loss, "loss", loss).W
            assert w.detach().norm(dim=0).mean().item() == pytest.approx(math.sqrt(2), rel=0.05)
    methods = {p.cfg["method"]["name"] for p in runs}
    assert {"ms+miner", "ms+miner+das"} <= methods and "ms" not in methods


# --- provenance ------------------------------------------------------------------------------


def _provenance_sections() -> dict[str, str]:
    text = PROVENANCE.read_text()
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


@pytest.mark.parametrize("name", S.list_suites())
def test_every_preset_has_a_provenance_section(name):
    sections = _provenance_sections()
    assert name in sections, f"bench/suites/PROVENANCE.md has no section '## {name}'"
    rows = [line for line in sections[name].splitlines()
            if line.startswith("| ") and not line.startswith("| setting")]
    assert len(rows) >= 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3 and all(cells), row
        assert re.search(r"paper|authors' code|unknown|our choice|not in the spec", cells[2]), row
    if name in EXPECTED:   # the paper presets point their readers to it
        yaml_text = (PROVENANCE.parent / f"{name}.yaml").read_text()
        assert "PROVENANCE.md" in yaml_text


def test_published_names_match_preset_runs():
    """Every published (method, dataset) of a preset is a row the preset produces."""
    for name in PRESETS:
        suite, runs, studies = _planned(name)
        if not suite.get("published"):
            continue
        pub = S.load_published(suite["published"])
        rows = {(p.cfg["run"]["name"] or p.cfg["method"]["name"], p.cfg["dataset"]["name"])
                for p in [*runs, *studies]}
        want = set(zip(pub["method"], pub["dataset"]))
        assert want and want <= rows, (name, want - rows)


def test_load_published_errors(tmp_path):
    with pytest.raises(UserError, match="valid names: memvir-table2"):
        S.load_published("nope")
    bad = tmp_path / "p.csv"
    bad.write_text("method,dataset\nx,y\n")
    with pytest.raises(UserError, match="lack column"):
        S.load_published(str(bad))


# ----------------------------------------------------------------------------- plan


@pytest.mark.parametrize("name", S.list_suites())
def test_plan_every_suite(name, capsys):
    assert main(["suite", name, "--plan"]) == 0
    out = capsys.readouterr().out
    assert "Estimated GPU hours:" in out and "A100-class" in out and "? GPU h" not in out
    if name in EXPECTED:
        runs, studies = EXPECTED[name]
        assert f"{runs} runs" + (f", {studies} MLRC studies" if studies else "") in out
        total = float(out.split("total ")[1].split(" GPU h")[0].lstrip("<=~ ").replace(",", ""))
        assert total > 10


def test_estimates_by_hand():
    _, runs, _ = _planned("memvir-table4")
    p = next(r for r in runs if r.cfg["method"]["name"] == "normsoftmax")
    e = S.estimate_run(p.cfg)
    # CARS196: the preset's 63 iterations (ceil(8,054 / 128)); 130 epochs; eval every 5 -> 26
    # evaluations of the 8,131 test images; BN-Inception at 224 px: rates x (227/224)^2
    scale = (227 / 224) ** 2
    want = (130 * 63 * 128 / (1000 * scale) + 26 * 8131 / (3000 * scale)) / 3600
    assert e.gpu_hours == pytest.approx(want) and not e.upper_bound
    _, _, studies = _planned("memvir-table2")
    ps = next(s for s in studies if s.cfg["dataset"]["name"] == "cub"
              and s.cfg["method"]["name"] == "normsoftmax")
    e = S.estimate_study(ps)
    # CUB MLRC: 100 train+val classes (5,864 images), val folds of 25 classes; (50 + 10) x 4
    # fits of 1000 epochs x 100 iterations x 32 images, 500 validations each; 10 x 4 test
    # embeddings of the 5,924 test images
    val = 5864 * 25 / 100
    want = (240 * 1000 * 100 * 32 / 1000 + (240 * 500 * val + 40 * 5924) / 3000) / 3600
    assert e.gpu_hours == pytest.approx(want) and e.upper_bound and e.fits == 240


# ----------------------------------------------------------------------------- smoke


# The MLRC presets' smoke runs train BN-Inception (random weights) for every fold of every
# study, das-table2 14 ResNet-50 runs, glyphs-effects 10 runs: minutes each on 2 CPU cores, so
# they run in `make test-slow`; the default run keeps each real path: memvir-table4
# (BN-Inception, conventional), das-table1 (ResNet-50 + DAS) and, for MLRC,
# tests/test_fidelity.py (BN-Inception + mlrc transforms, search + final evaluation).
SLOW_SMOKE = {"memvir-table2", "mlrc", "das-table2", "glyphs-effects"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SMOKE
                                  else n for n in PRESETS])
def test_smoke_every_preset(name, tmp_path):
    out = tmp_path / name
    logs: list[str] = []
    res = S.run_suite(name, [], str(out), smoke=True, threads=1, log=logs.append)
    assert res["failed"] == [], res["failed"]
    suite, runs, studies = _planned(name, smoke=True, tmp=tmp_path)
    # every run entry of the preset ran, once
    entries = [*suite["runs"], *((suite.get("mlrc") or {}).get("runs") or [])]
    assert len(runs) + len(studies) == len(entries)
    assert len(list(out.rglob("record.json"))) == len(runs) + len(studies)
    assert all(r["status"] == "completed" for r in res["records"])
    for p in [*runs, *studies]:  # the fixture trees in the real layouts were read
        if p.cfg["dataset"]["name"] != "glyphs":     # the embedded dataset needs none
            assert p.cfg["dataset"]["root"] == str(out / "smoke-data")
    tables = res["tables"] or res["mlrc"]["tables"]
    md = Path(tables["markdown"]).read_text()
    if suite.get("published"):
        assert "pub. " in md and "diff " in md
    if name == "mlrc":
        assert "| val MAP@R | pub. val MAP@R | diff val MAP@R |" in md
        assert "43.68" in md or "22.08" in md or "41.07" in md  # contrastive, some dataset
    if name == "memvir-table2":
        pub = S.load_published("memvir-table2")
        shown = [f"{v:.2f}" for v in pub["value"]]
        assert sum(v in md for v in shown) >= 10


def test_smoke_cli_and_report_published(tmp_path, capsys):
    out = tmp_path / "m4"
    assert main(["suite", "memvir-table4", "--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pub. R@1" in printed and "83.22" in printed
    # `report` rebuilds the table with the published numbers on its own
    assert main(["report", str(out), "--published", "memvir-table4", "--out",
                 str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "table.md").read_text()
    assert "| memvir+normsoftmax | 1 |" in md and "86.11" in md and "pub. MAP@R" in md
    # numbers of another protocol do not attach to a conventional table
    assert main(["report", str(out), "--published", "memvir-table2", "--out",
                 str(tmp_path / "rep2")]) == 0
    assert "pub." not in (tmp_path / "rep2" / "table.md").read_text()
    assert main(["report", str(out), "--published", "nope"]) == 2
    # a user's own CSV works too
    own = tmp_path / "own.csv"
    pd.DataFrame({"method": ["proxynca"], "dataset": ["cars196"], "metric": ["P@1"],
                  "value": [50.0]}).to_csv(own, index=False)
    assert main(["report", str(out), "--published", str(own), "--out",
                 str(tmp_path / "rep3")]) == 0
    assert "pub. P@1" in (tmp_path / "rep3" / "table.md").read_text()


# ----------------------------------------------------------------------------- suite format


def test_dataset_config_order_and_run_datasets(tmp_path):
    suite = {
        "name": "t", "datasets": ["cub", "sop"],
        "config": {"train": {"epochs": 3, "eval_every": 1, "lr": 0.1}},
        "dataset_config": {"sop": {"train": {"eval_every": 7, "lr": 0.2},
                                   "eval": {"recall_ks": [1, 10]}}},
        "runs": [{"method": "ms"},
                 {"method": "normsoftmax", "datasets": ["sop"],
                  "config": {"train": {"lr": 0.3}}}],
    }
    f = tmp_path / "t.yaml"
    f.write_text(yaml.safe_dump(suite))
    runs = S.plan(S.load_suite(str(f)), ["train.epochs=5"], tmp_path)
    got = {(p.cfg["dataset"]["name"], p.cfg["method"]["name"]):
           (p.cfg["train"]["eval_every"], p.cfg["train"]["lr"], p.cfg["eval"]["recall_ks"],
            p.cfg["train"]["epochs"]) for p in runs}
    # suite config < dataset_config < run config < command-line overrides
    assert got == {("cub", "ms"): (1, 0.1, [1, 2, 4, 8], 5),
                   ("sop", "ms"): (7, 0.2, [1, 10], 5),
                   ("sop", "normsoftmax"): (7, 0.3, [1, 10], 5)}
    # the same in an MLRC suite
    suite.update(protocol="mlrc", search={"n_trials": 2})
    f.write_text(yaml.safe_dump(suite))
    studies, _ = S.plan_mlrc(S.load_suite(str(f)), [], tmp_path)
    assert [(p.cfg["dataset"]["name"], p.cfg["train"]["eval_every"]) for p in studies] == \
        [("cub", 1), ("sop", 7), ("sop", 7)]


@pytest.mark.parametrize("change, needle", [
    ({"dataset_config": {"sop": {"train": {"nope": 1}}}}, "dataset_config.sop.train.nope"),
    ({"dataset_config": [1]}, "must map dataset names"),
    ({"runs": [{"method": "ms", "datasets": ["cars196"]}]}, "not among the suite's datasets"),
    ({"runs": [{"method": "ms", "datasets": "sop"}]}, "non-empty list of dataset names"),
    ({"published": 3}, "`published` must name"),
])
def test_suite_format_errors(tmp_path, change, needle):
    suite = {"name": "t", "datasets": ["sop"], "runs": ["ms"], **change}
    f = tmp_path / "t.yaml"
    f.write_text(yaml.safe_dump(suite))
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        S.plan(S.load_suite(str(f)), [], tmp_path)


def test_smoke_rotation_keeps_every_run_and_pairs_variants():
    suite = S.smoke_suite(S.load_suite("memvir-table2"))
    where = {}
    for e in suite["runs"]:
        assert len(e["datasets"]) == 1
        where.setdefault(e["method"], []).append(e["datasets"][0])
    for m, ds in where.items():
        if m.startswith("memvir+"):
            assert ds == where[m.removeprefix("memvir+")]
    assert set(sum(where.values(), [])) == {"cub", "cars196", "sop"}
    assert suite["search"]["n_trials"] == 1 and suite["search"]["reproductions"] == 1


# ----------------------------------------------------------------------------- fixtures


def test_fixture_trees_load_with_the_real_loaders(tmp_path):
    root = build_fixture_tree(tmp_path)
    assert (root / "CUB_200_2011" / "images.txt").exists()
    assert (root / "CARS196" / "cars_annos.mat").exists()
    assert (root / "Stanford_Online_Products" / "Ebay_train.txt").exists()
    for name in ("cub", "cars196", "sop"):
        ds = load_dataset(name, str(root))
        assert len(ds) == 64 and ds.num_classes == 16
        assert list(ds.train_classes) == list(range(8)) and list(ds.test_classes) == \
            list(range(8, 16))
        assert np.all(np.bincount(ds.labels) == 4)
        folds, test = mlrc_folds(np.arange(ds.num_classes))
        assert [len(v) for _, v in folds] == [2, 2, 2, 2] and list(test) == list(range(8, 16))
    # an existing tree is kept as it is
    stamp = (root / "CARS196" / "cars_annos.mat").stat().st_mtime_ns
    build_fixture_tree(root)
    assert (root / "CARS196" / "cars_annos.mat").stat().st_mtime_ns == stamp


def _mlrc_record(method: str, base: str | None, dataset: str, seed: int, test: float,
                 val: float) -> dict:
    return {"schema": 1, "method": method, "base_method": base, "dataset": dataset,
            "protocol": "mlrc", "seed": seed, "suite": "t", "status": "completed",
            "mlrc": {"best_value": val, "concatenated": {"metrics": {
                "precision_at_1": test, "r_precision": test / 2,
                "mean_average_precision_at_r": test / 3}}}}


def test_tables_published_protocols_val_column_and_tagged_bases(tmp_path):
    """mlrc-validation numbers compare with the best search value ("val MAP@R", a column only
    shown when published numbers ask for it); numbers of another protocol are ignored; a row
    METHOD@TAG is compared with BASE@TAG."""
    from dmlbench.bench.records import write_record
    from dmlbench.results.tables import comparison_table, load_runs, write_tables

    recs = [_mlrc_record("normsoftmax", None, "cub", 1, 0.60, 0.40),
            _mlrc_record("normsoftmax", None, "cub", 2, 0.62, 0.40),
            _mlrc_record("ms@x", None, "cub", 1, 0.50, 0.30),
            _mlrc_record("ms+das@x", "ms", "cub", 1, 0.55, 0.35),
            _mlrc_record("ms", None, "cub", 1, 0.10, 0.10)]
    for i, r in enumerate(recs):
        write_record(tmp_path / f"r{i}" / "record.json", r)
    plain = (Path(write_tables(tmp_path)["markdown"])).read_text()
    assert "val MAP@R" not in plain
    pub = pd.DataFrame({"method": ["normsoftmax", "normsoftmax", "normsoftmax"],
                        "dataset": ["cub"] * 3, "protocol": ["mlrc-validation", "mlrc",
                                                             "conventional"],
                        "metric": ["mean_average_precision_at_r", "precision_at_1",
                                   "r_precision"], "value": [43.99, 65.65, 99.0]})
    md = Path(write_tables(tmp_path, tmp_path / "p", published=pub)["markdown"]).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| normsoftmax |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in next(line for line in md.splitlines()
                                       if line.startswith("| method")).strip("|").split("|")]
    got = dict(zip(header, cells))
    assert got["val MAP@R"].startswith("40.00") and got["pub. val MAP@R"] == "43.99"
    assert got["diff val MAP@R"] == "-3.99"
    assert got["pub. P@1"] == "65.65" and got["diff P@1"] == "-4.65"  # mean 61.00
    assert "pub. RP" not in header  # a conventional number, not for an MLRC table
    table = comparison_table(load_runs(tmp_path))
    assert table.attrs["base"]["ms+das@x"] == "ms@x"
    assert table.loc["ms+das@x", ("cub", "precision_at_1", "delta")] == pytest.approx(0.05)
