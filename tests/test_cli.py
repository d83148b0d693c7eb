"""The command line: bad input ends with one line and exit 2; a tiny suite end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dmlbench.bench.cli import main
from tests.conftest import ROOT, TINY, TINY_SUITE_CONFIG


def _tiny_config(tmp_path: Path, **sections) -> Path:
    f = tmp_path / "run.yaml"
    cfg = {"run": {"output": str(tmp_path / "out")}}
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    f.write_text(yaml.safe_dump(cfg))
    return f


def _one_error_line(capsys) -> str:
    """The one error line on stderr (warnings about the data, said before training, aside)."""
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not line.startswith("dmlbench: warning: "))
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def _image_tree(root: Path, classes: int = 4, per_class: int = 3, corrupt: str | None = None):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
    if corrupt:
        (root / "class00" / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


@pytest.mark.parametrize("extra,needle", [
    (["dataset.name=nope"], "unknown dataset 'nope'; valid datasets: cars196, csv, cub, folder, glyphs, sop"),
    (["method.name=nope"], "unknown method 'nope'; valid methods:"),
    (["train.lr=-0.1"], "invalid config value train.lr=-0.1"),
    (["train.m_per_class=3"], "does not divide train.batch_size"),
    (["model.embedding_size=0"], "model.embedding_size=0"),
    (["train.bogus=1"], "unknown config key train.bogus"),
    (["dataset.name=folder", "dataset.root=/no/such/dir", "dataset.options={}"],
     "does not exist"),
    (["method.params.nope=1"], "has no parameter 'nope'"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, extra, needle):
    f = _tiny_config(tmp_path)
    assert main(["run", str(f), *TINY, *extra]) == 2
    assert needle in _one_error_line(capsys)
    assert not list((tmp_path).rglob("record.json"))


def test_unknown_suite(capsys):
    assert main(["suite", "nope"]) == 2
    assert "unknown suite 'nope'; valid suites: demo" in _one_error_line(capsys)


def test_wrong_layout_root(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"x")
    f = _tiny_config(tmp_path)
    assert main(["run", str(f), *TINY, "dataset.name=folder", f"dataset.root={tmp_path / 'data'}",
                 "dataset.options={}"]) == 2
    assert "wrong layout" in _one_error_line(capsys)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_names_the_file(tmp_path, capsys, workers):
    _image_tree(tmp_path / "data", corrupt="bad.png")
    f = _tiny_config(tmp_path)
    code = main(["run", str(f), *TINY, "dataset.name=folder", f"dataset.root={tmp_path / 'data'}",
                 "dataset.options={}", "train.batch_size=4", "train.m_per_class=2",
                 "train.augment=false", f"train.num_workers={workers}"])
    assert code == 2
    err = _one_error_line(capsys)
    assert err.startswith("dmlbench: error: cannot read image ") and "bad.png" in err
    assert "worker" not in err and "Traceback" not in err
    assert not list(tmp_path.rglob("record.json"))


def test_folder_dataset_trains(tmp_path, capsys):
    _image_tree(tmp_path / "data")
    f = _tiny_config(tmp_path)
    assert main(["run", str(f), *TINY, "dataset.name=folder", f"dataset.root={tmp_path / 'data'}",
                 "dataset.options={}", "train.batch_size=4", "train.m_per_class=2",
                 "train.epochs=1", "method.name=ms"]) == 0
    rec = json.loads(next(tmp_path.rglob("record.json")).read_text())
    assert rec["status"] == "completed" and rec["num_test_images"] == 6


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dmlbench.bench.cli", "suite", "no-such-suite"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("dmlbench: error: unknown suite")
    assert "Traceback" not in out.stderr


def test_tiny_suite_end_to_end_and_resume(tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "tiny", "seeds": [0, 1],
        "config": TINY_SUITE_CONFIG,
        "runs": ["normsoftmax", {"method": "ms", "params": {"alpha": 2.0}}]}))
    out = tmp_path / "runs"
    assert main(["suite", str(suite), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "normsoftmax" in printed and "| ms " in printed
    records = sorted(out.rglob("record.json"))
    assert len(records) == 4
    rec = json.loads(records[0].read_text())
    for key in ("config", "seed", "versions", "git_commit", "evaluations", "best", "final",
                "wall_time_s", "images_per_s"):
        assert key in rec
    assert (out / "table.md").exists() and (out / "table.tex").exists()
    # the same command again skips every finished run
    assert main(["suite", str(suite), "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("done before, skipped") == 4   # progress: stderr
    # and `report` rebuilds the tables from the records alone
    assert main(["report", str(out), "--which", "final"]) == 0


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("glyphs", "normsoftmax", "proxyanchor", "triplet-distance", "ms", "demo",
                 "conventional", "smallcnn"):
        assert name in out


def test_datasets_check_and_unknown_name(tmp_path, capsys):
    _image_tree(tmp_path / "data")
    assert main(["datasets", "check", "folder", "--root", str(tmp_path / "data")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"folder at {tmp_path / 'data'}: OK" and err == ""
    assert "  images: 12\n  classes: 4\n" in out and "  images decoded: 12" in out
    assert main(["datasets", "download", "nope", "--root", str(tmp_path)]) == 2
    assert "valid downloadable datasets: cars196, cub, sop" in _one_error_line(capsys)
    assert main(["datasets", "download", "folder", "--root", str(tmp_path)]) == 2
    assert "valid downloadable datasets: cars196, cub, sop" in _one_error_line(capsys)
    assert main(["datasets", "check", "glyphs", "--root", str(tmp_path)]) == 2
    assert ("unknown checkable dataset 'glyphs'; valid checkable datasets: cars196, csv, cub, "
            "folder, sop") in _one_error_line(capsys)


@pytest.mark.parametrize("argv,expect", [
    (["run", "my.yaml", "--out", "X", "train.lr=1e-4"],
     {"args": ["my.yaml", "train.lr=1e-4"], "out": "X"}),
    (["run", "--threads", "2", "my.yaml", "train.lr=1e-4", "--workers", "3", "a.b=1"],
     {"args": ["my.yaml", "train.lr=1e-4", "a.b=1"], "threads": 2, "workers": 3}),
    (["suite", "demo", "--out", "X", "train.epochs=1", "--plan", "model.width=4"],
     {"suite": "demo", "overrides": ["train.epochs=1", "model.width=4"], "out": "X",
      "plan": True}),
    (["suite", "--smoke", "demo", "train.epochs=1"],
     {"suite": "demo", "overrides": ["train.epochs=1"], "smoke": True}),
    (["mlrc", "c.yaml", "--n-trials", "3", "train.lr=1e-4", "--space", "alpha=2",
      "train.epochs=2", "--study", "s"],
     {"config": "c.yaml", "overrides": ["train.lr=1e-4", "train.epochs=2"], "n_trials": 3,
      "space": ["alpha=2"], "study": "s"}),
    (["worker", "--storage", "x.log", "s", "--max-trials", "2"],
     {"study": "s", "storage": "x.log", "max_trials": 2}),
    (["importance", "--out", "o", "s"], {"study": "s", "out": "o"}),
    (["report", "--ci", "runs", "--which", "final"],
     {"runs_dir": "runs", "ci": True, "which": "final"}),
    (["datasets", "--root", "r", "check", "--no-images", "cub"],
     {"action": "check", "name": "cub", "root": "r", "no_images": True}),
])
def test_options_and_positionals_in_any_order(argv, expect):
    """Issue 11 item 6: every command takes its options between or after its positionals."""
    from dmlbench.bench.cli import _parser

    ns = _parser().parse_args(argv)
    assert ns.command == argv[0]
    assert {k: getattr(ns, k) for k in expect} == expect


def test_suite_goes_on_after_a_diverged_run(tmp_path, capsys):
    from dmlbench.methods.registry import _METHODS, register_method
    from tests.test_train import _NanAfter

    if "test-nan-after-3" not in _METHODS:
        register_method("test-nan-after-3", defaults={})(lambda c, d: (_NanAfter(3), None))
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "s", "seeds": [0],
        "config": TINY_SUITE_CONFIG,
        "runs": ["test-nan-after-3", "normsoftmax"]}))
    out = tmp_path / "runs"
    assert main(["suite", str(suite), "--out", str(out)]) == 0
    printed, progress = capsys.readouterr()   # tables on stdout, progress lines on stderr
    assert "test-nan-after-3 seed 0: diverged (loss became nan" in progress
    assert "| normsoftmax | 1 |" in printed
    assert "test-nan-after-3 / glyphs / seed 0: diverged" in printed  # the note under the table
    recs = {json.loads(p.read_text())["method"]: json.loads(p.read_text())["status"]
            for p in out.rglob("record.json")}
    assert recs == {"test-nan-after-3": "diverged", "normsoftmax": "completed"}
