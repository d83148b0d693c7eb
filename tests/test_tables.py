"""Tests for results.tables: numbers against numpy / hand computations on synthetic records."""
from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmlbench.bench.errors import UserError
from dmlbench.bench.records import write_record
from dmlbench.results.tables import (add_published, comparison_table, escape_latex, format_table,
                            load_runs, short_name, write_tables)

DATASETS = ["cub", "cars_196"]
METRICS = ["precision_at_1", "r_precision", "mean_average_precision_at_r", "recall_at_1",
           "recall_at_10", "recall_at_2", "nmi", "f1"]
# Written in this order, so this is the first-seen order of methods.
METHODS = {"ms+das": "ms", "normsoftmax": None, "memvir+cosface": "cosface", "ms": None,
           "memvir+normsoftmax": "normsoftmax"}
SEEDS = {m: [0, 1, 2] for m in METHODS} | {"memvir+cosface": [0]}
EXPECTED_ROWS = ["normsoftmax", "memvir+normsoftmax", "memvir+cosface", "ms", "ms+das"]
FINAL_OFFSET = -0.05  # final metrics = best metrics + this


def _values() -> dict[tuple[str, str, str, int], float]:
    rng = np.random.default_rng(0)
    out = {}
    for i, method in enumerate(METHODS):
        for j, dataset in enumerate(DATASETS):
            if method == "memvir+cosface" and dataset != "cub":
                continue
            for k, metric in enumerate(METRICS):
                for seed in SEEDS[method]:
                    out[method, dataset, metric, seed] = round(
                        0.3 + 0.05 * i + 0.1 * j + 0.02 * k + rng.uniform(-0.03, 0.03), 6)
    return out


VALUES = _values()


def _record(method: str, dataset: str, seed: int, status: str = "completed", *,
            metrics: dict | None = None, protocol: str = "conventional", error: str | None = None,
            **extra) -> dict:
    best = None if metrics is None else {"epoch": 10, "metrics": metrics, "selected_by":
                                         "precision_at_1", "selection_set": "test"}
    final = None if metrics is None else {
        "epoch": 20, "metrics": {k: v + FINAL_OFFSET for k, v in metrics.items()}}
    return {"schema": 1, "run_id": f"{method}-{dataset}-{seed}-{status}", "status": status,
            "suite": "demo", "method": method, "base_method": METHODS.get(method),
            "dataset": dataset, "protocol": protocol, "seed": seed, "config": {},
            "evaluations": [], "final": final, "best": best, "wall_time_s": 1.0,
            "images_per_s": 1.0, "train_time_s": 1.0, "versions": {}, "git_commit": None,
            "error": error, "created": "2024-01-01T00:00:00+00:00", **extra}


def _position(method: str, dataset: str) -> dict:
    """Where a run sits in the suite the fixture stands for: datasets, then METHODS' order."""
    return {"dataset": DATASETS.index(dataset), "run": list(METHODS).index(method)}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    d = tmp_path / "runs"
    i = 0
    for method in METHODS:
        for dataset in DATASETS:
            for seed in SEEDS[method]:
                if (method, dataset, METRICS[0], seed) not in VALUES:
                    continue
                metrics = {m: VALUES[method, dataset, m, seed] for m in METRICS}
                write_record(d / f"{i:03d}.json", _record(
                    method, dataset, seed, metrics=metrics,
                    suite_position=_position(method, dataset)))
                i += 1
    # A diverged run with numbers that would move the mean, a failed one with a traceback,
    # and a failure superseded by a completed run of the same seed.
    bad = {m: 0.0 for m in METRICS}
    write_record(d / "900.json", _record("ms+das", "cub", 3, "diverged", metrics=bad,
                                         error="loss is NaN at iteration 120"))
    write_record(d / "901.json", _record("memvir+normsoftmax", "cars_196", 7, "failed",
                                         error="RuntimeError: CUDA out of memory\n  File x.py"))
    write_record(d / "902.json", _record("ms", "cub", 1, "failed", error="killed"))
    (d / "notes.json").write_text('{"not": "a record"}')
    return d


def _seed_values(method: str, dataset: str, metric: str, offset: float = 0.0) -> np.ndarray:
    return np.array([VALUES[method, dataset, metric, s] + offset for s in SEEDS[method]])


def test_load_runs_rows_columns_and_skipped(runs: Path) -> None:
    df = load_runs(runs)
    assert len(df) == sum(1 for k in VALUES if k[2] == METRICS[0])  # completed only
    assert list(df.columns[:6]) == ["method", "base_method", "dataset", "protocol", "seed", "suite"]
    # metric columns in the default order, recall by K numerically
    assert list(df.columns[6:]) == ["precision_at_1", "r_precision", "mean_average_precision_at_r",
                                    "recall_at_1", "recall_at_2", "recall_at_10", "nmi", "f1"]
    skipped = df.attrs["skipped"]
    assert {(s["method"], s["dataset"], s["seed"], s["status"]) for s in skipped} == {
        ("ms+das", "cub", 3, "diverged"), ("memvir+normsoftmax", "cars_196", 7, "failed")}


def test_means_and_stds_match_numpy_ddof1(runs: Path) -> None:
    table = comparison_table(load_runs(runs))
    for method in METHODS:
        for dataset in DATASETS:
            for metric in ("precision_at_1", "mean_average_precision_at_r", "recall_at_10"):
                if (method, dataset, metric, SEEDS[method][0]) not in VALUES:
                    assert table.loc[method, (dataset, metric, "n")] == 0
                    assert math.isnan(table.loc[method, (dataset, metric, "mean")])
                    continue
                v = _seed_values(method, dataset, metric)
                mean = table.loc[method, (dataset, metric, "mean")]
                assert mean == pytest.approx(v.mean(), abs=1e-12)
                assert table.loc[method, (dataset, metric, "n")] == len(v)
                std = table.loc[method, (dataset, metric, "std")]
                if len(v) > 1:  # sample std, ddof=1
                    assert std == pytest.approx(np.std(v, ddof=1), abs=1e-12)
                else:
                    assert math.isnan(std)


def test_diverged_runs_excluded_from_means(runs: Path) -> None:
    table = comparison_table(load_runs(runs))
    assert table.loc["ms+das", ("cub", "precision_at_1", "n")] == 3
    assert table.loc["ms+das", ("cub", "precision_at_1", "mean")] == pytest.approx(
        _seed_values("ms+das", "cub", "precision_at_1").mean())


def test_deltas_are_hand_differences(runs: Path) -> None:
    table = comparison_table(load_runs(runs))
    for variant, base in (("memvir+normsoftmax", "normsoftmax"), ("ms+das", "ms")):
        for dataset in DATASETS:
            for metric in METRICS:
                want = (_seed_values(variant, dataset, metric).mean()
                        - _seed_values(base, dataset, metric).mean())
                got = table.loc[variant, (dataset, metric, "delta")]
                assert got == pytest.approx(want, abs=1e-12)
    # no delta for bases, nor for a variant whose base (cosface) was not run
    for method in ("normsoftmax", "ms", "memvir+cosface"):
        assert table.loc[method, (slice(None), slice(None), "delta")].isna().all()
    assert table.attrs["base"] == {"memvir+normsoftmax": "normsoftmax", "ms+das": "ms"}


def test_row_order_bases_then_variants_else_first_seen(runs: Path) -> None:
    assert list(comparison_table(load_runs(runs)).index) == EXPECTED_ROWS


def test_default_metrics_and_short_names(runs: Path) -> None:
    table = comparison_table(load_runs(runs))
    metrics = list(dict.fromkeys(table.columns.get_level_values("metric")))
    assert metrics == ["precision_at_1", "r_precision", "mean_average_precision_at_r",
                       "recall_at_1", "recall_at_2", "recall_at_10", "nmi", "f1"]
    assert [short_name(m) for m in metrics] == ["P@1", "RP", "MAP@R", "R@1", "R@2", "R@10",
                                                "NMI", "F1"]
    chosen = comparison_table(load_runs(runs), metrics=["P@1", "nmi"])
    chosen_metrics = list(dict.fromkeys(chosen.columns.get_level_values("metric")))
    assert chosen_metrics == ["precision_at_1", "nmi"]
    with pytest.raises(UserError, match="no values for metric"):
        comparison_table(load_runs(runs), metrics=["ami"])


def test_ci_half_width_by_hand(runs: Path) -> None:
    table = comparison_table(load_runs(runs), ci=True)
    # t quantile for 2 degrees of freedom in closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    a = 2 * 0.975 - 1
    t2 = math.sqrt(2 * a * a / (1 - a * a))
    v = _seed_values("ms", "cars_196", "r_precision")
    s = math.sqrt(sum((x - sum(v) / 3) ** 2 for x in v) / 2)
    half = table.loc["ms", ("cars_196", "r_precision", "ci95")]
    assert half == pytest.approx(t2 * s / math.sqrt(3))
    assert "std" not in table.columns.get_level_values("stat")
    assert math.isnan(table.loc["memvir+cosface", ("cub", "r_precision", "ci95")])  # n = 1
    md = format_table(table, "markdown")
    assert "95% CI" in md
    cosface_row = next(l for l in md.splitlines() if l.startswith("| memvir+cosface |"))
    assert "± n/a" in cosface_row


def _pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_is_valid_pipe_tables(runs: Path) -> None:
    table = comparison_table(load_runs(runs), metrics=["precision_at_1", "r_precision"])
    md = format_table(table, "markdown")
    blocks, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    assert len(blocks) == len(DATASETS)
    for block in blocks:
        assert len({_pipes(l) for l in block}) == 1, block
        assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", block[1])
        assert block[0] == "| method | runs | P@1 | Δ P@1 | RP | Δ RP |"
    cub = blocks[0]
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]] for l in cub[2:]}
    assert list(rows) == EXPECTED_ROWS
    v = _seed_values("ms+das", "cub", "precision_at_1")
    delta = v.mean() - _seed_values("ms", "cub", "precision_at_1").mean()
    assert rows["ms+das"][:3] == ["3", f"{100 * v.mean():.2f} ± {100 * np.std(v, ddof=1):.2f}",
                                  f"{100 * delta:+.2f}"]
    assert rows["ms"][2] == ""  # base rows: blank delta
    # memvir+cosface was not run on cars_196: no row in that section
    assert not any(l.startswith("| memvir+cosface |") for l in blocks[1])


def test_latex_booktabs_and_escaping(runs: Path) -> None:
    tex = format_table(comparison_table(load_runs(runs)), "latex")
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\cmidrule(lr){2-"):
        assert rule in tex
    assert re.search(r"(?<!\\)_", tex) is None  # every underscore escaped
    assert re.search(r"(?<!\\)%", tex.split("\n", 1)[1]) is None  # percent only in the comment
    assert "cars\\_196" in tex and "R@1" in tex and "$\\Delta$ P@1" in tex
    body = [l for l in tex.splitlines() if l.endswith("\\\\")]
    row = next(l for l in body if l.startswith("ms+das &"))  # "+" is literal in text mode
    width = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1))
    assert all(l.count("&") == width - 1 for l in body[1:]), body
    v = _seed_values("ms+das", "cub", "precision_at_1")
    assert row.split(" & ")[1] == f"${100 * v.mean():.2f} \\pm {100 * np.std(v, ddof=1):.2f}$"
    assert escape_latex("recall_at_1 ms+das 50% a&b") == "recall\\_at\\_1 ms+das 50\\% a\\&b"


def test_csv_round_trips_with_numbers(runs: Path) -> None:
    table = comparison_table(load_runs(runs))
    back = pd.read_csv(io.StringIO(format_table(table, "csv")))
    assert list(back.columns) == ["method", "base_method", "dataset", "metric", "n", "mean",
                                  "std", "delta"]
    assert back["mean"].dtype == float and back["n"].dtype == np.int64
    assert list(dict.fromkeys(back["method"])) == EXPECTED_ROWS
    row = back[(back.method == "memvir+normsoftmax") & (back.dataset == "cars_196")
               & (back.metric == "nmi")].iloc[0]
    v = _seed_values("memvir+normsoftmax", "cars_196", "nmi")
    b = _seed_values("normsoftmax", "cars_196", "nmi")
    assert row["base_method"] == "normsoftmax" and row["n"] == 3
    assert row["mean"] == pytest.approx(100 * v.mean())
    assert row["std"] == pytest.approx(100 * np.std(v, ddof=1))
    assert row["delta"] == pytest.approx(100 * (v.mean() - b.mean()))
    base_rows = back[back.method == "normsoftmax"]
    assert base_rows["delta"].isna().all() and base_rows["base_method"].isna().all()
    assert not ((back.method == "memvir+cosface") & (back.dataset == "cars_196")).any()


def test_which_final_vs_best(runs: Path) -> None:
    best = comparison_table(load_runs(runs, which="best"))
    final = comparison_table(load_runs(runs, which="final"))
    v = _seed_values("normsoftmax", "cub", "f1")
    assert best.loc["normsoftmax", ("cub", "f1", "mean")] == pytest.approx(v.mean())
    assert final.loc["normsoftmax", ("cub", "f1", "mean")] == pytest.approx(v.mean() + FINAL_OFFSET)
    assert "'final' evaluation" in format_table(final, "markdown")
    with pytest.raises(UserError, match="which"):
        load_runs(runs, which="last")


def test_mlrc_records_use_concatenated(tmp_path: Path) -> None:
    for seed in range(2):
        rec = _record("ms", "cub", seed, metrics={"precision_at_1": 0.5}, protocol="mlrc",
                      mlrc={"separated": {"precision_at_1": 0.4},
                            "concatenated": {"precision_at_1": 0.6 + 0.1 * seed}})
        write_record(tmp_path / f"{seed}.json", rec)
    for which in ("best", "final"):
        table = comparison_table(load_runs(tmp_path, which=which))
        assert table.loc["ms", ("cub", "precision_at_1", "mean")] == pytest.approx(0.65)
    write_record(tmp_path / "c.json", _record("ms", "cub", 5, metrics={"precision_at_1": 0.5}))
    with pytest.raises(UserError, match="mix protocols"):
        comparison_table(load_runs(tmp_path))


def test_write_tables_files_and_note(runs: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], caplog) -> None:
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="dmlbench.results.tables"):
        paths = write_tables(runs, out)
    assert paths == {"csv": out / "table.csv", "markdown": out / "table.md",
                     "latex": out / "table.tex"}
    assert all(p.is_file() for p in paths.values())
    md = paths["markdown"].read_text()
    note = next(l for l in md.splitlines() if l.startswith("Note:"))
    assert "ms+das / cub / seed 3: diverged (loss is NaN at iteration 120)" in note
    assert ("memvir+normsoftmax / cars_196 / seed 7: failed "
            "(RuntimeError: CUDA out of memory)") in note
    assert "File x.py" not in note and "ms / cub / seed 1" not in note  # superseded failure
    warned = [r.getMessage() for r in caplog.records if r.name == "dmlbench.results.tables"]
    assert warned == [note.removeprefix("Note: ")] and "\n" not in warned[0]
    assert capsys.readouterr().out == ""     # library code prints nothing
    assert pd.read_csv(paths["csv"])["n"].max() == 3
    default_out = write_tables(runs)  # into the runs folder itself
    assert {p.name for p in default_out.values()} == {"table.csv", "table.md", "table.tex"}
    assert (runs / "table.md").is_file()


def test_add_published(runs: Path) -> None:
    table = comparison_table(load_runs(runs), metrics=["precision_at_1", "r_precision"])
    published = pd.DataFrame({"method": ["normsoftmax", "memvir+normsoftmax", "arcface"],
                              "dataset": ["cub", "cub", "cub"],
                              "metric": ["P@1", "precision_at_1", "P@1"],
                              "value": [65.65, 69.22, 67.50]})
    with_pub = add_published(table, published)
    ours = _seed_values("normsoftmax", "cub", "precision_at_1").mean()
    cell = {s: with_pub.loc["normsoftmax", ("cub", "precision_at_1", s)]
            for s in ("published", "diff")}
    assert cell["published"] == pytest.approx(0.6565)
    assert cell["diff"] == pytest.approx(ours - 0.6565)
    assert ("cub", "r_precision", "published") not in with_pub.columns
    assert ("cars_196", "precision_at_1", "published") not in with_pub.columns
    assert math.isnan(with_pub.loc["ms", ("cub", "precision_at_1", "published")])
    md = format_table(with_pub, "markdown")
    header = next(l for l in md.splitlines() if l.startswith("| method"))
    assert header == "| method | runs | P@1 | Δ P@1 | pub. P@1 | diff P@1 | RP | Δ RP |"
    row = next(l for l in md.splitlines() if l.startswith("| normsoftmax |")).split(" | ")
    assert row[4:6] == ["65.65", f"{round(100 * ours - 65.65, 2):+.2f}"]
    back = pd.read_csv(io.StringIO(format_table(with_pub, "csv")))
    got = back[(back.method == "memvir+normsoftmax") & (back.dataset == "cub")
               & (back.metric == "precision_at_1")].iloc[0]
    assert got["published"] == pytest.approx(69.22)
    assert "pub. P@1" in format_table(with_pub, "latex")
    assert "'best' evaluation" in md  # table.attrs survive
    assert got["base_method"] == "normsoftmax"
    with pytest.raises(UserError, match="value"):
        add_published(table, published.drop(columns="value"))


def test_missing_or_empty_runs_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist.*dmlbench"):
        load_runs(tmp_path / "nope")
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(UserError, match="no run records under .*dmlbench suite NAME"):
        load_runs(tmp_path)
    write_record(tmp_path / "d.json", _record("ms", "cub", 0, "diverged", error="nan"))
    with pytest.raises(UserError, match="no completed runs.*ms / cub / seed 0: diverged"):
        write_tables(tmp_path)
    with pytest.raises(UserError, match="format"):
        format_table(pd.DataFrame(), "html")


def test_imports_no_torch_methods_or_protocols() -> None:
    code = ("import sys, dmlbench.results.tables; "
            "print(sorted(m for m in sys.modules if (m.split('.')[0] == 'torch' or "
            "m.startswith(('dmlbench.methods', 'dmlbench.protocols', 'dmlbench.bench.train'))) "
            "and m not in ('dmlbench.methods', 'dmlbench.methods.errors')))")   # UserError's home, no torch
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.strip() == "[]"


def _suite_records(d: Path, created_order: list[int]) -> None:
    """The records of a 3-run suite (declared order triplet, ms, contrastive; datasets cub,
    cars_196) created in `created_order` (indices into the planned runs): a resumed suite
    whose first attempt of some runs failed and were redone later."""
    planned = [(ds, method) for ds in ("cub", "cars_196") for method in ("triplet", "ms", "contrastive")]
    m = {k: 0.5 for k in METRICS}
    for t, i in enumerate(created_order):
        ds, method = planned[i]
        write_record(d / f"{ds}--{method}.json", _record(
            method, ds, 0, metrics=m, created=f"2024-01-01T00:00:{t:02d}+00:00",
            suite_position={"dataset": ["cub", "cars_196"].index(ds),
                            "run": ["triplet", "ms", "contrastive"].index(method)}))


def test_rows_follow_the_suites_declared_order_not_creation_time(tmp_path):
    _suite_records(tmp_path / "straight", [0, 1, 2, 3, 4, 5])
    _suite_records(tmp_path / "resumed", [5, 2, 4, 1, 3, 0])   # e.g. retried after failures
    tables = [comparison_table(load_runs(tmp_path / k)) for k in ("straight", "resumed")]
    for table in tables:
        assert list(table.index) == ["triplet", "ms", "contrastive"]
        assert list(dict.fromkeys(table.columns.get_level_values("dataset"))) == [
            "cub", "cars_196"]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    md = [write_tables(tmp_path / k, tmp_path / f"out-{k}")["markdown"].read_text()
          for k in ("straight", "resumed")]
    assert md[0] == md[1]


def test_without_positions_order_is_by_name_not_creation_time(tmp_path):
    m = {k: 0.5 for k in METRICS}
    # folder names sort z..a, the runs started contrastive last
    for i, method in enumerate(["triplet", "ms", "contrastive", "ms+das"]):
        write_record(tmp_path / f"{'zyxw'[i]}.json",
                     _record(method, "cub", 0, metrics=m, created=f"2024-01-01T00:00:0{i}+00:00"))
    table = comparison_table(load_runs(tmp_path))
    assert list(table.index) == ["contrastive", "ms", "ms+das", "triplet"]


def test_explicit_order_argument(runs: Path, tmp_path: Path) -> None:
    df = load_runs(runs)
    table = comparison_table(df, order=["ms", "memvir+cosface", "normsoftmax"],
                             datasets=["cars_196"])
    # named methods first, in that order, variants after their bases; the rest after
    assert list(table.index) == ["ms", "ms+das", "memvir+cosface", "normsoftmax",
                                 "memvir+normsoftmax"]
    assert list(dict.fromkeys(table.columns.get_level_values("dataset"))) == ["cars_196", "cub"]
    # the numbers do not move with the rows
    v = _seed_values("ms+das", "cub", "precision_at_1")
    assert table.loc["ms+das", ("cub", "precision_at_1", "mean")] == pytest.approx(v.mean())
    md = write_tables(runs, tmp_path / "o", order=["ms"])["markdown"].read_text()
    rows = [l.split("|")[1].strip() for l in md.splitlines() if l.startswith("| ") and
            not l.startswith("| method")]
    assert rows[:3] == ["ms", "ms+das", "normsoftmax"]


def test_published_numbers_matching_no_run_say_so(runs: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    other = pd.DataFrame({"method": ["arcface", "normsoftmax"], "dataset": ["sop", "inshop"],
                          "metric": ["P@1", "P@1"], "value": [70.0, 80.0]})
    other.attrs["name"] = "papers"
    with caplog.at_level("WARNING", logger="dmlbench.results.tables"):
        md = write_tables(runs, tmp_path / "o", published=other)["markdown"].read_text()
    note = next(l for l in md.splitlines() if "match none" in l)
    assert note == ("Note: The published numbers papers match none of these runs: they name "
                    "methods arcface, normsoftmax on datasets sop, inshop; these runs are methods "
                    "normsoftmax, memvir+normsoftmax, memvir+cosface, ms, ms+das on datasets cub, "
                    "cars_196 (names must match exactly).")
    assert "pub." not in md
    # one warning for the published numbers (the other one names the runs left out)
    assert [r.getMessage() for r in caplog.records if "match none" in r.getMessage()] == [
        note.removeprefix("Note: ")]
    # numbers of another protocol only
    mlrc = other.assign(protocol="mlrc", method="normsoftmax", dataset="cub")
    table = add_published(comparison_table(load_runs(runs)), mlrc)
    assert table.attrs["published_note"] == ("the published numbers papers match none of these "
                                             "runs: they are for protocol mlrc, these runs for "
                                             "conventional.")
    # one matching number: no note
    one = add_published(comparison_table(load_runs(runs)),
                        other.assign(dataset=["sop", "cub"]))
    assert one.attrs["published_note"] == ""
    assert ("cub", "precision_at_1", "published") in one.columns


def test_cli_report_published_matching_no_run(runs: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "dmlbench.bench.cli", "report", str(runs), "--out",
                          str(tmp_path / "o"), "--published", "memvir-table2"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                         timeout=300)
    assert out.returncode == 0, out.stderr
    line = ("The published numbers memvir-table2 match none of these runs: they are for "
            "protocol mlrc, these runs for conventional.")
    assert f"Note: {line}" in out.stdout  # under the printed table
    warnings = out.stderr.strip().splitlines()  # warning lines on stderr, one per problem:
    assert f"dmlbench: warning: {line}" in warnings  # this one, and the runs left out
    assert len(warnings) == 2 and warnings[1].startswith("dmlbench: warning: 2 runs not in")
