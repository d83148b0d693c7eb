"""Bad input and faults through the real command line (issue 13): the probe table.

Each row of PROBES is one bad input: the files it starts from (`setup`), the command line, a
piece of the one line it must answer on stderr, its exit code, and paths (globs, relative to
the folder the command runs in) that must not exist afterwards; beyond those, the command may
leave nothing at all behind. Add a row for every new bad input. Faults that are not one bad
command line (a closed pipe, a dead worker) have their own tests below the table.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from dmlbench.bench.cli import main
from tests.conftest import ROOT, TINY_SUITE_CONFIG
from tests.test_cli import _image_tree, _one_error_line

# A run config that trains in a second or two (if a probe ever gets that far).
TINY_CONFIG = {"dataset": {"name": "glyphs", "options": {"num_classes": 20,
                                                         "images_per_class": 8}},
               "model": {"width": 4, "embedding_size": 16},
               "train": {"batch_size": 16, "epochs": 1, "progress": False, "threads": 1},
               "eval": {"batch_size": 64}}
# Overrides that turn the tiny config into one on the image tree `data/` (4 classes x 3).
ON_DISK = ["dataset.root=data", "dataset.options={}", "train.batch_size=4",
           "train.m_per_class=2", "train.augment=false"]
MLRC = ["--n-trials", "1", "--reproductions", "1", "--out", "m"]


def _write(path: str, data) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        f = d / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data if isinstance(data, bytes) else yaml.safe_dump(data).encode())
    return setup


def _all(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        for s in setups:
            s(d)
    return setup


def _suite(**keys) -> Callable[[Path], None]:
    return _write("s.yaml", {"name": "s", "seeds": [0], "config": TINY_SUITE_CONFIG,
                             "runs": ["normsoftmax"], **keys})


def _mlrc_suite() -> Callable[[Path], None]:
    return _write("ms.yaml", {"name": "ms", "protocol": "mlrc", "config": TINY_SUITE_CONFIG,
                              "search": {"n_trials": 1, "reproductions": 1},
                              "runs": ["normsoftmax"]})


def _csv(rows: list[str], header: str = "path,label,split", corrupt: str | None = None
         ) -> Callable[[Path], None]:
    """data/: 4 classes x 3 PNGs (class00 .. class03, files 0.png .. 2.png) and data/labels.csv
    with `rows` ("ALL" expands to every image, classes 0-1 train and 2-3 test)."""
    def setup(d: Path) -> None:
        _image_tree(d / "data", corrupt=corrupt)
        lines = [header]
        for r in rows:
            if r == "ALL":
                lines += [f"class{c:02d}/{i}.png,c{c},{'train' if c < 2 else 'test'}"
                          for c in range(4) for i in range(3)]
            else:
                lines.append(r)
        (d / "data" / "labels.csv").write_text("\n".join(lines) + "\n")
    return setup


def _tree(corrupt: str | None = None) -> Callable[[Path], None]:
    return lambda d: _image_tree(d / "data", corrupt=corrupt)


def _nothing(d: Path) -> None:
    pass


CONFIG = _write("tiny.yaml", TINY_CONFIG)
LATIN1 = b"run: {name: caf\xe9}\n"


@dataclass
class Probe:
    name: str
    argv: list[str]
    error: str                        # a piece of the one line on stderr
    absent: tuple[str, ...] = ()      # globs that must match nothing afterwards
    setup: Callable[[Path], None] = _nothing
    code: int = 2
    stdout: str = ""                  # a piece of stdout, where the command reports there too
    may_leave: str | None = None      # a folder it may leave files in (a run stopped midway)
    warnings: tuple[str, ...] = ()    # pieces of the warning lines said before the error


PROBES = [
    # --- files that are not what they should be
    Probe("config-not-utf8", ["run", "bad.yaml"],
          "config file 'bad.yaml' is not UTF-8 text (byte 0xe9 at position 15); save it as UTF-8",
          ("runs",), _write("bad.yaml", LATIN1)),
    Probe("suite-not-utf8", ["suite", "bad.yaml"],
          "config file 'bad.yaml' is not UTF-8 text", ("runs",), _write("bad.yaml", LATIN1)),
    Probe("csv-not-utf8", ["run", "tiny.yaml", "dataset.name=csv", *ON_DISK],
          "labels.csv' is not UTF-8 text (byte 0xe9", ("runs",),
          _all(CONFIG, _csv([]), _write("data/labels.csv", b"path,label\nx.png,caf\xe9\n"))),
    Probe("csv-row-without-label", ["run", "tiny.yaml", "dataset.name=csv", *ON_DISK],
          "labels.csv' line 14: a row needs a path and a label", ("runs",),
          _all(CONFIG, _csv(["ALL", "class00/0.png"]))),
    Probe("csv-one-class", ["run", "tiny.yaml", "dataset.name=csv", *ON_DISK],
          "labels.csv' names 1 class; a run needs at least two", ("runs",),
          _all(CONFIG, _csv(["class00/0.png,a", "class00/1.png,a"], header="path,label"))),
    # --- suites
    Probe("suite-seeds-word", ["suite", "s.yaml"],
          "suite 's': seeds='zero' is not valid; allowed: a non-empty list of distinct integers "
          ">= 0, e.g. seeds: [0, 1, 2]", ("runs",), _suite(seeds="zero")),
    Probe("suite-seeds-int", ["suite", "s.yaml"], "suite 's': seeds=0 is not valid", ("runs",),
          _suite(seeds=0)),
    Probe("suite-seeds-twice", ["suite", "s.yaml"], "suite 's': seeds=[1, 1] is not valid",
          ("runs",), _suite(seeds=[1, 1])),
    Probe("suite-protocol-override", ["suite", "s.yaml", "run.protocol=mlrc"],
          "run.protocol cannot be overridden for suite 's'", ("runs",), _suite()),
    Probe("run-demo-as-mlrc", ["run", "run.protocol=mlrc"],
          "`dmlbench run` without a CONFIG file runs the demo suite, whose protocols are fixed; "
          "for MLRC run `dmlbench mlrc CONFIG`", ("runs",)),
    Probe("plan-and-smoke", ["suite", "s.yaml", "--plan", "--smoke"],
          "--plan and --smoke do not go together", ("runs",), _suite()),
    # --- options that would be ignored, or cannot work
    Probe("threads-0", ["suite", "s.yaml", "--threads", "0"],
          "argument --threads: '0' is not an integer >= 1; see `dmlbench suite --help`",
          ("runs",), _suite()),
    Probe("threads-word", ["run", "--threads", "x"],
          "argument --threads: 'x' is not an integer >= 1", ("runs",)),
    Probe("workers-0", ["mlrc", "tiny.yaml", "--workers", "0", *MLRC],
          "argument --workers: '0' is not an integer >= 1", ("m",), CONFIG),
    Probe("unknown-option", ["run", "tiny.yaml", "--bogus"],
          "unrecognized arguments: --bogus; see `dmlbench --help`", ("runs",), CONFIG),
    Probe("workers-on-conventional-run", ["run", "tiny.yaml", "--workers", "2"],
          "--workers applies to MLRC studies only, and a conventional run (tiny.yaml has "
          "run.protocol=conventional) runs none; drop it", ("runs",), CONFIG),
    Probe("storage-on-conventional-run", ["run", "tiny.yaml", "--storage", "s.db"],
          "--storage applies to MLRC studies only", ("runs", "s.db"), CONFIG),
    Probe("threads-on-conventional-run", ["run", "tiny.yaml", "--threads", "2"],
          "a conventional run's CPU threads are set with train.threads=N", ("runs",), CONFIG),
    Probe("workers-on-conventional-suite", ["suite", "s.yaml", "--workers", "2", "--storage",
                                            "x.log"],
          "--storage and --workers apply to MLRC studies only, and suite 's' (it has no MLRC "
          "part) runs none; drop them", ("runs", "x.log"), _suite()),
    Probe("mlrc-workers-on-sqlite", ["mlrc", "tiny.yaml", "--workers", "2", *MLRC],
          "2 workers need a storage that several processes can share", ("m",), CONFIG),
    Probe("suite-workers-on-default-sqlite", ["suite", "ms.yaml", "--workers", "2"],
          "2 workers need a storage that several processes can share", ("runs",),
          _mlrc_suite()),
    Probe("suite-workers-on-given-sqlite", ["suite", "ms.yaml", "--workers", "2", "--storage",
                                            "x.db"],
          "2 workers need a storage that several processes can share", ("runs", "x.db"),
          _mlrc_suite()),
    # --- storages that do not exist are not created by commands that read them
    Probe("studies-missing-sqlite", ["studies", "--storage", "none.db"],
          "storage none.db does not exist (no file none.db)", ("none.db",)),
    Probe("studies-missing-journal", ["studies", "--storage", "journal://none.log"],
          "storage journal://none.log does not exist", ("none.log",)),
    Probe("importance-missing-sqlite", ["importance", "s", "--storage", "sqlite:///none.db"],
          "storage sqlite:///none.db does not exist", ("none.db",)),
    Probe("worker-missing-sqlite", ["worker", "s", "--storage", "none.db"],
          "storage none.db does not exist", ("none.db",)),
    # --- datasets check: user errors on stderr with exit 2; it also checks folder and csv
    Probe("check-missing-root", ["datasets", "check", "cub", "--root", "missing"],
          "--root 'missing' does not exist; pass the folder that holds the dataset (get it with "
          "`dmlbench datasets download cub --root DIR`)"),
    Probe("check-folder-corrupt", ["datasets", "check", "folder", "--root", "data"],
          "folder at ", setup=_tree(corrupt="bad.png"), stdout="unreadable image: "),
    Probe("check-csv-missing-image", ["datasets", "check", "csv", "--root", "data"],
          ": 1 missing image (listed on stdout); replace or remove the image files listed (and "
          "their rows of the CSV file)", setup=_csv(["ALL", "class03/9.png,c3,test"]),
          stdout="missing image: "),
    Probe("run-csv-missing-image-hint",
          ["run", "tiny.yaml", "dataset.name=csv", *ON_DISK],
          "missing; find every missing or unreadable file with `dmlbench datasets check csv "
          "--root ", ("runs/*/*/record.json",),
          _all(CONFIG, _csv(["ALL", "class00/9.png,c0,train"])), may_leave="runs",
          warnings=("the test set has only 2 classes (fewer than 5)",
                    "eval.recall_ks has K=8 but a query of the 6-image test set")),
    # --- degenerate data, answered before training
    Probe("mlrc-too-few-classes",
          ["mlrc", "tiny.yaml", "dataset.options={num_classes: 6, images_per_class: 8}", *MLRC],
          "dataset 'glyphs' has 6 classes: its 3 train+val classes (the first half; the second "
          "half is the test set) cannot make 4 MLRC folds; MLRC needs at least 16 classes",
          ("m",), CONFIG),
    Probe("mlrc-one-val-class",
          ["mlrc", "tiny.yaml", "dataset.options={num_classes: 15, images_per_class: 8}", *MLRC],
          "its 7 train+val classes give 1 validation class per fold, below the minimum of 2",
          ("m",), CONFIG),
    Probe("csv-only-train-rows", ["run", "tiny.yaml", "dataset.name=csv", *ON_DISK],
          "labels.csv' has no rows with split=test: a run needs both train and test classes",
          ("runs",), _all(CONFIG, _csv([f"class{c:02d}/{i}.png,c{c},train"
                                        for c in range(4) for i in range(3)]))),
    # --- output folders that cannot hold results: refused before any training
    Probe("run-out-below-a-file", ["run", "tiny.yaml", "--out", "f/out"],
          "cannot be created: f is a file, not a folder; choose another output folder (--out)",
          setup=_all(CONFIG, _write("f", b"a file"))),
    Probe("suite-out-below-a-file", ["suite", "s.yaml", "--out", "f/out"],
          "output folder f/out cannot be created: f is a file, not a folder; choose another "
          "output folder (--out)", setup=_all(_suite(), _write("f", b"a file"))),
    Probe("suite-out-is-a-file", ["suite", "s.yaml", "--out", "f"],
          "output folder f cannot be created: f is a file, not a folder", ("runs",),
          _all(_suite(), _write("f", b"a file"))),
    Probe("mlrc-out-below-a-file", ["mlrc", "tiny.yaml", "--n-trials", "1", "--reproductions",
                                    "1", "--out", "f/m"],
          "output folder f/m cannot be created: f is a file, not a folder",
          setup=_all(CONFIG, _write("f", b"a file"))),
    Probe("mlrc-suite-out-below-a-file", ["suite", "ms.yaml", "--out", "f/m"],
          "output folder f/m cannot be created: f is a file, not a folder",
          setup=_all(_mlrc_suite(), _write("f", b"a file"))),
]


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_probe(probe: Probe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    probe.setup(tmp_path)
    before = set(tmp_path.rglob("*"))
    try:
        code = main(probe.argv)
    except SystemExit as e:   # argparse's own way out: not one line
        code = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    warned = [line for line in lines if line.startswith("dmlbench: warning: ")]
    assert len(warned) == len(probe.warnings), err
    assert all(w in line for w, line in zip(probe.warnings, warned)), err
    lines = [line for line in lines if line not in warned]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("dmlbench: error: "), lines[0]
    assert probe.error in lines[0]
    assert code == probe.code
    assert probe.stdout in out
    for pattern in probe.absent:
        assert not list(tmp_path.glob(pattern)), pattern
    left = {p for p in set(tmp_path.rglob("*")) - before
            if not (probe.may_leave and p.is_relative_to(tmp_path / probe.may_leave))}
    assert not left, "left behind: " + ", ".join(str(p.relative_to(tmp_path)) for p in left)


def test_probe_names_are_unique():
    assert len({p.name for p in PROBES}) == len(PROBES)


# ----------------------------------------------------------------------------- faults


def test_closed_pipe_ends_quietly(tmp_path):
    """`dmlbench report DIR | head`: the reader leaves before the table is written."""
    runs = tmp_path / "runs"
    assert main(["suite", str(_suite_file(tmp_path)), "--out", str(runs)]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "dmlbench.bench.cli", "report", str(runs)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # nobody reads: the first write gets EPIPE
    err = proc.communicate(timeout=120)[1].decode()
    assert err == ""
    assert proc.returncode == 141


def _suite_file(d: Path) -> Path:
    _suite()(d)
    return d / "s.yaml"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_studies_shows_a_dead_workers_trial_as_stale(tmp_path, capsys):
    """A trial left RUNNING by a worker that was killed (no heartbeat since) is shown stale."""
    from dmlbench.bench.config import load_config
    from dmlbench.protocols import mlrc as S
    from dmlbench.protocols.mlrc import SearchOptions, build_settings

    db = tmp_path / "studies.db"
    cfg = load_config(overrides=["method.name=normsoftmax"])
    name, settings = build_settings(cfg, SearchOptions(n_trials=3, heartbeat_interval=1,
                                                       grace_period=5), tmp_path)
    st = S.open_storage(str(db))
    study = S.create_or_check_study(name, st, settings, checked=("experiment", "budget"))
    study.tell(study.ask(), 0.5)
    dead, alive = study.ask(), study.ask()
    for t in (dead, alive):
        st.storage.record_heartbeat(t._trial_id)
    assert main(["studies", "--storage", str(db)]) == 0
    assert f"  {name}  1 complete, 2 running  (n_trials 3)" in capsys.readouterr().out
    # the dead worker's last heartbeat is a minute old; the other one's is fresh
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-60 seconds') "
                     "WHERE trial_id = ?", (dead._trial_id,))
    assert main(["studies", "--storage", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"  {name}  1 complete, 1 running, 1 stale  (n_trials 3)" in out
    assert (f"    stale: trial {dead.number}: no heartbeat for more than the 5 s grace period "
            "(the worker died); the next worker on the study re-queues it") in out


def test_options_and_overrides_in_any_order(tmp_path, capsys, monkeypatch):
    """Issue 11 item 6: `dmlbench run my.yaml --out X train.lr=1e-4` runs with both."""
    monkeypatch.chdir(tmp_path)
    CONFIG(tmp_path)
    assert main(["run", "tiny.yaml", "--out", "X", "train.lr=1e-4", "run.seed=3"]) == 0
    rec = next((tmp_path / "X").glob("*/record.json"))
    cfg = json.loads(rec.read_text())["config"]
    assert cfg["train"]["lr"] == 1e-4 and cfg["run"]["seed"] == 3
