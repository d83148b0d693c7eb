"""The shipped presets: settings as the specs give them, `--plan` with GPU-hour estimates, every
preset end to end in smoke mode on fixture trees in the real layouts, published numbers beside
the measured ones; per-dataset suite settings; the fixture trees themselves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bench import suite as S
from bench.cli import main
from bench.data import load_dataset
from bench.data.fixtures import build_fixture_tree
from bench.errors import UserError
from methods import resolve_params
from methods.das import das_defaults
from protocols.splits import mlrc_folds

PRESETS = [n for n in S.list_suites() if n != "demo"]
EXPECTED = {  # preset -> (conventional runs, MLRC studies)
    "memvir-table2": (0, 30), "memvir-table4": (20, 0), "das-table2": (42, 0),
    "das-table1": (84, 0), "mlrc": (0, 30),
}


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
        assert "loss_lr" in space and not fixed
        if method.startswith("memvir+"):
            assert {"num_steps", "step_gap", "warmup_epochs"} <= set(space)
        if method.endswith("arcface"):
            assert space["scale"][2] == (300.0 if ds == "sop" else 200.0)


def S_space(method: str, p: S.PlannedStudy):
    from protocols.mlrc import search_space

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
            assert (t["epochs"], t["schedule"]) == (2000, "none")
            want = (45, 10, 40) if "normsoftmax" in name else (20, 25, 40)
            assert (params["num_steps"], params["step_gap"], params["warmup_epochs"]) == want
        else:
            assert (t["epochs"], t["schedule"], t["milestones"], t["gamma"]) == \
                (130, "multistep", [50], 0.1)
        if "normsoftmax" in name:
            assert params["temperature"] == pytest.approx(1 / 23, rel=1e-4)
        else:
            assert params["softmax_scale"] == 12.0
        assert c["eval"]["recall_ks"] == [1, 2, 4, 8]
        assert {"recall_at_1", "r_precision", "mean_average_precision_at_r"} <= \
            set(c["eval"]["metrics"])


@pytest.mark.parametrize("name", ["das-table2", "das-table1"])
def test_das_presets(name):
    _, runs, _ = _planned(name)
    assert {p.cfg["dataset"]["name"] for p in runs} == {"cub", "cars196", "sop"}
    table1 = name == "das-table1"
    for p in runs:
        c, t, ds = p.cfg, p.cfg["train"], p.cfg["dataset"]["name"]
        method = c["method"]["name"]
        base = method.removesuffix("+das")
        assert (t["optimizer"], t["lr"], t["weight_decay"], t["epochs"], t["schedule"],
                t["milestones"], t["gamma"], t["batch_size"], t["m_per_class"]) == \
            ("adam", 1e-5, 4e-4, 300, "multistep", [200, 250], 0.3, 112, 2)
        assert c["model"]["freeze_bn"] and c["model"]["pretrained"]
        if table1:
            assert (c["model"]["pooling"], c["model"]["embedding_size"]) == ("avgmax", 512)
            assert c["model"]["trunk"] == c["run"]["name"].split("@")[1]
        else:
            assert (c["model"]["trunk"], c["model"]["pooling"],
                    c["model"]["embedding_size"]) == ("resnet50", "avg", 128)
        assert c["eval"]["recall_ks"] == ([1, 10, 100, 1000] if ds == "sop" else [1, 2, 4, 8])
        params = resolve_params(method, c["method"]["params"])
        if method.endswith("+das"):  # the paper's / reference code's DAS settings
            want = das_defaults(ds, base)
            if table1:
                want["topk"] = 8
            assert {k: params[k] for k in want} == want
        if base.startswith("triplet"):
            assert (params["margin"], params["squared"]) == (0.2, True)
        if base == "ms":
            assert (params["alpha"], params["beta"], params["base"], params["epsilon"]) == \
                (2.0, 40.0, 0.5, 0.1)
        if base == "margin":
            assert (params["beta"], params["loss_lr"], params["margin"]) == (1.2, 5e-4, 0.2)
        if base in ("genlifted", "npair"):
            assert params["l2_weight"] == 0.005
            assert c["model"]["normalize_train"] == (ds != "sop")
    n_das = sum(p.cfg["method"]["name"].endswith("+das") for p in runs)
    assert n_das * 2 == len(runs)


def test_mlrc_preset_losses():
    _, _, studies = _planned("mlrc")
    methods = {p.cfg["method"]["name"] for p in studies}
    assert methods == {"contrastive", "triplet", "ntxent", "proxynca", "normsoftmax", "cosface",
                       "arcface", "margin", "ms", "softtriple"}
    for p in studies:
        space, _ = S_space(p.cfg["method"]["name"], p)
        assert space, p.cfg["method"]["name"]


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
    # CARS196: 8,054 train images // 128 = 62 iterations; 130 epochs; eval every 5 -> 26
    # evaluations of the 8,131 test images; BN-Inception at 224 px: rates x (227/224)^2
    scale = (227 / 224) ** 2
    want = (130 * 62 * 128 / (1000 * scale) + 26 * 8131 / (3000 * scale)) / 3600
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


@pytest.mark.parametrize("name", PRESETS)
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
    from bench.records import write_record
    from results.tables import comparison_table, load_runs, write_tables

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
