"""The four source folders are installed as `dmlbench.bench`, `dmlbench.methods`,
`dmlbench.protocols` and `dmlbench.results`: a user's own bench.py or methods.py can never
shadow them, and nothing imports them under their bare folder names."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import tomllib

import pytest

from tests.conftest import ROOT, TINY

FOLDERS = ("bench", "methods", "protocols", "results")


def test_every_package_folder_is_listed_in_pyproject():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = {"dmlbench", "dmlbench.bench.published", "dmlbench.bench.suites"} | {
        "dmlbench." + ".".join(p.parent.relative_to(ROOT).parts)
        for folder in FOLDERS for p in (ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in p.parts}
    assert found == listed, f"add to / remove from [tool.setuptools] packages: {found ^ listed}"
    assert conf["package-dir"] == {"dmlbench": "dmlbench",
                                   **{f"dmlbench.{f}": f for f in FOLDERS}}


def test_no_module_imports_a_folder_by_its_bare_name():
    offenders = []
    for folder in (*FOLDERS, "dmlbench", "tests"):
        for p in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(p.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                         else [])
                offenders += [f"{p.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                              if n.split(".")[0] in FOLDERS]
    assert offenders == []


@pytest.fixture
def shadowing_folder(tmp_path):
    """A notebook folder holding modules named like the four source folders."""
    for name in FOLDERS:
        (tmp_path / f"{name}.py").write_text(
            f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    return tmp_path


def test_the_api_works_from_a_folder_holding_bench_methods_protocols_results(shadowing_folder):
    code = textwrap.dedent(f"""
        import numpy as np
        import dmlbench
        from dmlbench.bench.cli import main
        cfg = dmlbench.load_config(None, {TINY + ["train.epochs=1"]!r})
        ds = dmlbench.load_dataset("glyphs", num_classes=20, images_per_class=8)
        tr = dmlbench.Split.of_classes(ds, ds.train_classes)
        te = dmlbench.Split.of_classes(ds, ds.test_classes)
        result = dmlbench.fit(cfg, tr, te)
        emb = np.array([[1, 0], [1, .1], [0, 1], [.1, 1]], dtype="float32")
        m = dmlbench.compute_metrics(emb, np.array([0, 0, 1, 1]))
        assert main(["list", "methods"]) == 0
        print("P@1", result.best["metrics"]["precision_at_1"] >= 0, m["precision_at_1"])
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=shadowing_folder,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(shadowing_folder)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "P@1 True 1.0" in out.stdout


def test_the_console_script_runs_from_a_shadowing_folder(shadowing_folder):
    exe = os.path.join(os.path.dirname(sys.executable), "dmlbench")
    out = subprocess.run([exe, "list", "suites"], cwd=shadowing_folder, capture_output=True,
                         text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(shadowing_folder)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "memvir-table2" in out.stdout


def test_a_built_wheel_installs_the_four_folders_under_dmlbench(tmp_path):
    """A regular (non-editable) install: what `pip install dmlbench` gives a user."""
    import shutil

    wheel_dir, target, src = tmp_path / "wheel", tmp_path / "site", tmp_path / "src"
    # a copy of the sources: setuptools writes build/ and *.egg-info next to them
    keep = ("bench", "methods", "protocols", "results", "dmlbench")
    for name in keep:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheel_dir), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheel_dir.glob("dmlbench-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"dmlbench/bench/cli/__init__.py", "dmlbench/methods/memvir.py",
            "dmlbench/protocols/conventional.py", "dmlbench/results/deltas.py",
            "dmlbench/bench/suites/memvir-table2.yaml",
            "dmlbench/bench/published/published.csv"} <= names
    assert not any(n.split("/")[0] in FOLDERS for n in names)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    code = ("import dmlbench, dmlbench.bench.suite as s; "
            "print(dmlbench.bench.__file__.startswith(%r), len(s.list_suites()))" % str(target))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[0] == "True" and int(out.stdout.split()[1]) >= 7
