"""Several processes on one output folder (issue 13): two copies of a suite started at once
(two terminals, a SLURM array with one --out) train each run once; run locks are OS locks that
a killed holder does not leave behind; a SQLite study storage created by several processes at
once is created once."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from dmlbench.bench.cli import main
from tests.conftest import ROOT, TINY_SUITE_CONFIG

HOLD = textwrap.dedent("""
    import sys, time
    from dmlbench.bench.records import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(run_dir: Path, seconds: float) -> subprocess.Popen:
    """A process that holds the lock of `run_dir` for `seconds` (once it printed 'locked')."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_held_run_lock_is_refused_and_freed_by_kill_9(tmp_path):
    from dmlbench.bench.records import LOCK_FILE, RunHeld, run_lock

    run_dir = tmp_path / "run"
    proc = _holder(run_dir, 600)
    try:
        with pytest.raises(RunHeld) as e:
            with run_lock(run_dir):
                pass
        assert e.value.holder == f"pid {proc.pid} on {socket.gethostname()}"
        assert str(e.value) == (f"{run_dir} is being written by another process (pid {proc.pid} "
                                f"on {socket.gethostname()}); wait for it to finish, or use "
                                "another output folder")
    finally:
        proc.kill()   # SIGKILL: no clean-up code runs in the holder
        proc.wait()
    assert (run_dir / LOCK_FILE).exists()   # the file stays, the lock does not
    with run_lock(run_dir) as path:
        assert path == run_dir / LOCK_FILE
        with run_lock(run_dir):   # the same process may nest it
            pass
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []   # the lock file is removed
    with run_lock(tmp_path / "new" / "run"):
        pass
    assert not (tmp_path / "new").exists()   # and so are folders made for the lock alone


def test_waiting_for_a_run_lock(tmp_path):
    from dmlbench.bench.records import run_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = _holder(run_dir, 2)
    t0 = time.monotonic()
    with run_lock(run_dir, wait=True):
        waited = time.monotonic() - t0
    proc.wait()
    assert waited > 1.0   # the holder slept 2 s after saying it held the lock
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []   # a folder it did not make stays


def test_run_held_by_another_process_is_one_line(tmp_path, capsys):
    """`dmlbench run CFG` on a run another process is training: one line, exit 2."""
    from dmlbench.bench.config import load_config
    from dmlbench.protocols.conventional import run_id

    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump({"dataset": TINY_SUITE_CONFIG["dataset"] | {
        "name": "glyphs"}, "model": TINY_SUITE_CONFIG["model"],
        "train": TINY_SUITE_CONFIG["train"]}))
    run_dir = tmp_path / "out" / run_id(load_config(str(cfg_file)))
    run_dir.mkdir(parents=True)
    fd = os.open(run_dir / "run.lock", os.O_RDWR | os.O_CREAT)   # another holder (flock locks
    try:                                                       # differ per open file)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"pid 1 on elsewhere\n")
        assert main(["run", str(cfg_file), "--out", str(tmp_path / "out")]) == 2
    finally:
        os.close(fd)
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dmlbench: error: {run_dir} is being written by another process (pid 1 on elsewhere); "
        "wait for it to finish, or use another output folder"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]   # nothing trained


OPEN_AT = textwrap.dedent("""
    import sys, time
    from dmlbench.protocols import mlrc as S
    url, start = sys.argv[1], float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.001)
    S.open_storage(url)
    print("opened")
""")


def test_sqlite_storage_created_by_several_processes_at_once(tmp_path):
    """Optuna creates a new SQLite storage's tables on first open; without the creation lock
    processes opening it at the same moment fail with `UNIQUE constraint failed:
    alembic_version`."""
    dbs = [tmp_path / f"s{i}.db" for i in range(3)]
    start = time.time() + 12   # after every process has imported optuna
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, f"sqlite:///{db}", str(start)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for db in dbs for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 and out.strip() == "opened" for p, (out, _) in zip(procs, outs)), \
        [err[-500:] for _, err in outs if err]
    assert start < time.time()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(  # no lock file left behind
        n for db in dbs for n in (db.name, f"{db.name}-shm", f"{db.name}-wal")
        if (tmp_path / n).exists())


# ----------------------------------------------------------------------------- two suites


def _suite_file(d: Path) -> Path:
    f = d / "s.yaml"
    train = dict(TINY_SUITE_CONFIG["train"], epochs=4)
    f.write_text(yaml.safe_dump({
        "name": "both", "seeds": [0, 1], "config": {**TINY_SUITE_CONFIG, "train": train},
        "runs": ["normsoftmax", "ms"],
        "mlrc": {"config": {"train": {"epochs": 1}},
                 "search": {"n_trials": 1, "reproductions": 2, "sampler": "random",
                            "space": {"loss_lr": 0.01}},
                 "runs": ["normsoftmax"]}}))
    return f


def test_two_suites_at_once_train_each_run_once(tmp_path):
    suite = _suite_file(tmp_path)
    out = tmp_path / "runs" / "both"
    cmd = [sys.executable, "-m", "dmlbench.bench.cli", "suite", str(suite), "--out", str(out)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, o[-3000:] + e[-3000:]
        assert "Traceback" not in e and "FAILED" not in e, o[-3000:] + e[-3000:]
    printed = [e.splitlines() for _, e in outs]   # the progress lines (on stderr)

    # conventional runs: 4, each trained by exactly one process, and recorded once
    labels = [f"[{i}/4] glyphs {m} seed {s}" for i, (m, s) in enumerate(
        [(m, s) for m in ("normsoftmax", "ms") for s in (0, 1)], 1)]
    for label in labels:
        trained = [n for n, lines in enumerate(printed)
                   if any(line.startswith(f"{label}: P@1 ") for line in lines)]
        assert len(trained) == 1, (label, printed)
        other = printed[1 - trained[0]]
        said = [line for line in other if line.startswith(label)]
        assert said and all(
            line.startswith((f"{label}: held by another process, skipped (pid ",
                             f"{label}: done before, skipped",
                             f"{label}: done by another process, skipped",
                             f"{label}: waiting for the other process to finish it"))
            for line in said), said
    run_dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(run_dirs) == 4
    for d in run_dirs:
        rec = json.loads((d / "record.json").read_text())
        assert rec["status"] == "completed" and rec["resumed_from_epoch"] is None
        log = [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()]
        assert [e["epoch"] for e in log if e["kind"] == "eval"] == [1, 2, 3, 4]   # one fit
        for pt in ("checkpoint.pt", "best_model.pt"):
            torch.load(d / pt, weights_only=True)
        assert not (d / "run.lock").exists()
    table = (out / "table.md").read_text()   # whoever wrote it last: every run in it
    assert "| normsoftmax | 2 |" in table and "| ms | 2 |" in table

    # the MLRC part: one study with exactly 1 trial, each reproduction made once
    mout = tmp_path / "runs" / "both-mlrc"
    reps = sorted(mout.glob("*/final/rep-*/record.json"))
    assert [p.parent.name for p in reps] == ["rep-0", "rep-1"]
    for r in (0, 1):
        made = [n for n, lines in enumerate(printed) if any(
            line.startswith(f"  reproduction {r} (seed ") and ": concatenated P@1" in line
            for line in lines)]
        assert len(made) == 1, (r, printed)
    for p in reps:
        rec = json.loads(p.read_text())
        assert rec["status"] == "completed"
        assert rec["determinism"] == {"threads": 1, "device": "cpu", "deterministic": True}
        for pt in p.parent.glob("fold-*/best_model.pt"):
            torch.load(pt, weights_only=True)
    from dmlbench.protocols import mlrc as S

    st = S.open_storage(f"sqlite:///{mout / 'studies.db'}", create=False)
    (name,) = S.list_study_names(st)
    states = [t.state.name for t in S.load_study(name, st).trials]
    assert states.count("COMPLETE") == 1 and set(states) <= {"COMPLETE", "FAIL"}
    assert "| normsoftmax | 2 |" in (mout / "table.md").read_text()
    left = [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".lock"))]
    assert left == []
