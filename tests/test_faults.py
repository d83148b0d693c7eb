"""Faults of issue 13 that are not one bad command line: a full or unwritable output folder, NaN
weights after the last step of an epoch, the determinism a record states, data that makes
metrics or sampling behave unexpectedly (said once, in the output and the record), and what
the command line prints while training (resume line, one line per evaluation).

What could be tested here: a full disk (ENOSPC), a quota (EDQUOT), no permission (EACCES) and a
read-only file system (EROFS) are simulated in-process by making `os.write` /
`tempfile.mkstemp` fail for our files only, since the tests run as root (root ignores
permission bits: the chmod test is skipped then) and neither a small tmpfs nor a read-only
bind mount can be made here; an output folder below a regular file is real (tests/test_probes).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dmlbench.bench import records
from dmlbench.bench.cli import main
from dmlbench.bench.config import load_config
from dmlbench.bench.data import DMLDataset
from dmlbench.bench.data.loading import Split
from dmlbench.bench.errors import UserError
from dmlbench.bench.train import Callback
from dmlbench.protocols.conventional import run_conventional, run_id
from tests.conftest import ROOT, TINY, TINY_SUITE_CONFIG

TINY_CONFIG = {"dataset": {"name": "glyphs", "options": {"num_classes": 20,
                                                         "images_per_class": 8}},
               "model": {"width": 4, "embedding_size": 16},
               "train": {"batch_size": 16, "epochs": 3, "eval_every": 1, "progress": False,
                         "threads": 1},
               "eval": {"batch_size": 64}}
FULL_DISK_FIX = ("free some space (or choose another output folder) and re-run the command: it "
                 "resumes from what is saved")


def _config(tmp_path: Path, **train) -> Path:
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["train"].update(train)
    f = tmp_path / "tiny.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _failing_write(monkeypatch, code: int, match: str, after: int = 0, partial: int = 100):
    """Make `os.write` to a file whose path contains `match` fail with `code` from its
    (after+1)-th such file on (writing `partial` bytes first, as a disk filling up would);
    returns the list of the failed paths."""
    real = os.write
    seen: dict[str, int] = {}
    failed: list[str] = []

    def write(fd, data):
        path = _fd_path(fd)
        if match not in path:
            return real(fd, data)
        if path not in seen:
            seen[path] = len(seen)
        if seen[path] < after:
            return real(fd, data)
        if partial and os.fstat(fd).st_size == 0:
            return real(fd, bytes(data[:partial]))
        failed.append(path)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", write)
    return failed


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def _temp_files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- full disk


@pytest.mark.parametrize("code,said", [
    (errno.ENOSPC, "no space left on device writing {p} (needs about 1000 bytes); " + FULL_DISK_FIX),
    (errno.EDQUOT, "disk quota exceeded writing {p} (needs about 1000 bytes); " + FULL_DISK_FIX),
    (errno.EACCES, "permission denied writing {p} (needs about 1000 bytes); make {d} writable "
                   "or choose another output folder (--out)"),
    (errno.EROFS, "read-only file system writing {p} (needs about 1000 bytes); choose another "
                  "output folder (--out)"),
])
def test_atomic_write_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, code, said):
    target = tmp_path / "out" / "record.json"
    failed = _failing_write(monkeypatch, code, ".record.json.")
    with pytest.raises(UserError) as e:
        records.atomic_write_bytes(target, b"x" * 1000)
    assert failed  # the write did fail, after writing part of the data
    assert str(e.value) == said.format(p=target, d=target.parent)
    assert _files(tmp_path) == []


def test_atomic_write_other_errors_are_not_user_errors(tmp_path, monkeypatch):
    _failing_write(monkeypatch, errno.EIO, ".record.json.", partial=0)
    with pytest.raises(OSError) as e:
        records.atomic_write_text(tmp_path / "record.json", "{}")
    assert e.value.errno == errno.EIO and not isinstance(e.value, UserError)
    assert _files(tmp_path) == []


def test_write_below_a_file(tmp_path):
    (tmp_path / "f").write_text("a file")
    for target in (tmp_path / "f" / "x.json", tmp_path / "f" / "sub" / "x.json"):
        with pytest.raises(UserError) as e:
            records.atomic_write_text(target, "{}")
        assert str(e.value) == (f"cannot write {target}: {tmp_path / 'f'} is a file, not a "
                                "folder; choose another output folder (--out)")


def test_temp_file_that_cannot_be_created(tmp_path, monkeypatch):
    def mkstemp(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(UserError, match=f"^permission denied writing {tmp_path}/t.md "
                                        r"\(needs about 2 bytes\); make "):
        records.atomic_write_text(tmp_path / "t.md", "hi")


def test_full_disk_mid_run_is_one_line_then_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    """The first checkpoint is written, the second finds the disk full: one line naming the
    checkpoint and its size, exit 2, no temporary file; once space is free the same command
    resumes from the first checkpoint and ends as an uninterrupted run would; a table that
    cannot be written is one line too."""
    cfg_file = _config(tmp_path)
    out = tmp_path / "out"
    cfg = load_config(str(cfg_file))
    run_dir = out / run_id(cfg)
    failed = _failing_write(monkeypatch, errno.ENOSPC, "checkpoint.pt", after=1)
    assert main(["run", str(cfg_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert failed == [failed[0]] and Path(failed[0]).name.startswith(".checkpoint.pt.")
    first = run_dir / "checkpoint.pt"
    needs = int(err[-1].split("(needs about ")[1].split(" bytes)")[0])
    assert err[-1] == (f"dmlbench: error: no space left on device writing {first} (needs about "
                       f"{needs} bytes); {FULL_DISK_FIX}")
    assert abs(needs - first.stat().st_size) < 0.05 * first.stat().st_size
    assert [line for line in err[:-1] if "epoch" in line] == [err[0]] and "epoch 1/3" in err[0]
    assert _temp_files(tmp_path) == [] and not (run_dir / "record.json").exists()
    monkeypatch.undo()

    assert main(["run", str(cfg_file), "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "resuming" in line] == [
        f"resuming {run_dir} from its checkpoint at epoch 1"]
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["status"] == "completed" and rec["resumed_from_epoch"] == 1
    whole = run_conventional(cfg, tmp_path / "whole")
    assert [e["metrics"] for e in rec["evaluations"]] == \
        [e["metrics"] for e in whole["evaluations"]]
    assert _temp_files(tmp_path) == []

    # the tables of `dmlbench report` on a full disk
    _failing_write(monkeypatch, errno.ENOSPC, "table.", partial=0)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"dmlbench: error: no space left on device writing {out}/table.")
    assert err[0].endswith(FULL_DISK_FIX) and _temp_files(tmp_path) == []


def test_full_training_log_is_one_line(tmp_path, monkeypatch, capsys):
    """The training log is appended to, not written atomically: a full disk there is one
    line as well."""
    cfg_file = _config(tmp_path)
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if str(path).endswith("train_log.jsonl") and "a" in mode else f

    import builtins

    monkeypatch.setattr(builtins, "open", fake_open)
    assert main(["run", str(cfg_file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dmlbench: error: no space left on device writing ")
    assert err[-1].endswith(FULL_DISK_FIX) and "Traceback" not in "\n".join(err)


# ----------------------------------------------------------------------------- output folder


def test_full_output_folder_fails_before_training(tmp_path, monkeypatch, capsys):
    cfg_file = _config(tmp_path)
    out = tmp_path / "out"
    cfg = load_config(str(cfg_file))
    _failing_write(monkeypatch, errno.ENOSPC, ".dmlbench-write-check-", partial=0)
    assert main(["run", str(cfg_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dmlbench: error: output folder {out / run_id(cfg)} is on a full disk (no "
                   "space left on device); free some space or choose another output folder "
                   "(--out)"]
    assert _files(out) == []   # nothing trained, nothing written


@pytest.mark.parametrize("suite", [False, True])
def test_unwritable_output_folder_fails_before_training(tmp_path, monkeypatch, capsys, suite):
    """As root, permission bits do not stop writes: the refusal is simulated."""
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if "dmlbench-write-check" in str(k.get("prefix", "")):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = tmp_path / "out"
    if suite:
        f = tmp_path / "s.yaml"
        f.write_text(yaml.safe_dump({"name": "s", "seeds": [0], "config": TINY_SUITE_CONFIG,
                                     "runs": ["normsoftmax"]}))
        argv, where = ["suite", str(f), "--out", str(out)], out
    else:
        argv = ["run", str(_config(tmp_path)), "--out", str(out)]
        where = out / run_id(load_config(str(tmp_path / "tiny.yaml")))
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"dmlbench: error: output folder {where} is not writable (permission denied); make it "
        f"writable (chmod u+w {where}) or choose another output folder (--out)"]
    assert _files(out) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 folder regardless")
def test_read_only_folder_really_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(["run", str(_config(tmp_path)), "--out", str(out)]) == 2
    finally:
        out.chmod(0o700)
    assert "is not writable (permission denied)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- NaN weights


class _NanWeightsAtLastEpoch(Callback):
    """Sets one weight to NaN after the last step of the last epoch (before its evaluation)."""

    def on_epoch_end(self, trainer) -> None:
        if trainer.state.epoch == trainer.cfg["train"]["epochs"]:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("nan")


def _tiny_cfg(*extra: str) -> dict:
    return load_config(overrides=[*TINY, *extra])


def test_nan_weights_after_the_last_step_are_a_diverged_run(tmp_path, tiny_glyphs):
    cfg = _tiny_cfg("train.epochs=2", "train.eval_every=2")
    rec = run_conventional(cfg, tmp_path / "r", dataset=tiny_glyphs,
                           callbacks=[_NanWeightsAtLastEpoch()])
    assert rec["status"] == "diverged"
    assert rec["error"] == "embeddings became NaN or infinite by the evaluation of epoch 2"
    assert rec["evaluations"] == [] and rec["best"] is None
    assert json.loads((tmp_path / "r" / "record.json").read_text())["status"] == "diverged"


def test_a_diverged_suite_run_is_done_not_retried(tmp_path, monkeypatch):
    """NaN weights at the last epoch of one run of a suite: recorded as diverged, not FAILED,
    and a re-run of the suite skips it."""
    import dmlbench.protocols.conventional as conv
    from dmlbench.bench.suite import run_suite

    class NanForMs(_NanWeightsAtLastEpoch):
        def on_epoch_end(self, trainer) -> None:
            if trainer.cfg["method"]["name"] == "ms":
                super().on_epoch_end(trainer)

    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "seeds": [0], "config": TINY_SUITE_CONFIG,
                                     "runs": ["normsoftmax", "ms"]}))
    real_fit = conv.fit
    monkeypatch.setattr(conv, "fit", lambda *a, **k: real_fit(*a, **{**k, "callbacks": [
        NanForMs()]}))
    lines: list[str] = []
    res = run_suite(str(suite), out_dir=str(tmp_path / "out"), log=lines.append)
    assert res["failed"] == []
    assert [r["status"] for r in res["records"]] == ["completed", "diverged"]
    assert ("[2/2] glyphs ms seed 0: diverged (embeddings became NaN or infinite by the "
            "evaluation of epoch 2)") in lines
    written = {p: p.read_text() for p in (tmp_path / "out").rglob("record.json")}
    monkeypatch.undo()
    lines.clear()
    res = run_suite(str(suite), out_dir=str(tmp_path / "out"), log=lines.append)
    assert res["failed"] == [] and res["records"] == []
    assert lines[:2] == ["[1/2] glyphs normsoftmax seed 0: done before, skipped",
                         "[2/2] glyphs ms seed 0: done before, skipped"]
    assert {p: p.read_text() for p in written} == written


# ----------------------------------------------------------------------------- determinism


def test_record_states_its_determinism(tmp_path, tiny_glyphs):
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = run_conventional(_tiny_cfg("train.epochs=1", "train.threads=1"), tmp_path / "a",
                               dataset=tiny_glyphs)
        default = run_conventional(_tiny_cfg("train.epochs=1", "train.threads=null",
                                             "train.deterministic=false"), tmp_path / "b",
                                   dataset=tiny_glyphs)
    finally:
        torch.set_num_threads(n)
    assert one["determinism"] == {"threads": 1, "device": "cpu", "deterministic": True}
    assert default["determinism"] == {"threads": 2, "device": "cpu", "deterministic": False}
    on_disk = json.loads((tmp_path / "a" / "record.json").read_text())
    assert on_disk["determinism"] == one["determinism"]


# ----------------------------------------------------------------------------- degenerate data


def _dataset(train_counts: list[int], test_counts: list[int]) -> DMLDataset:
    counts = [*train_counts, *test_counts]
    labels = np.repeat(np.arange(len(counts)), counts)
    return DMLDataset("toy", labels, [f"c{i}" for i in range(len(counts))],
                      np.arange(len(train_counts)),
                      np.arange(len(train_counts), len(counts)),
                      images=np.zeros((len(labels), 8, 8), dtype=np.uint8))


def _warnings(ds: DMLDataset, *extra: str) -> list[str]:
    from dmlbench.bench.train.build import data_warnings

    cfg = _tiny_cfg(*extra)
    return data_warnings(cfg, Split.of_classes(ds, ds.train_classes),
                         Split.of_classes(ds, ds.test_classes))


def test_no_warnings_for_ordinary_data(tiny_glyphs):
    assert _warnings(tiny_glyphs) == []


def test_warning_lone_test_images():
    ds = _dataset([8] * 10, [1, 1, 1] + [8] * 7)
    assert _warnings(ds) == [
        "3 of the 10 classes of the test set have a single image; those 3 images are never "
        "queries (P@1, R-Precision, MAP@R and Recall@K average over the other 56 images; lone "
        "images stay in the gallery)"]
    one = _dataset([8] * 10, [1] + [8] * 9)
    assert _warnings(one)[0].startswith(
        "1 of the 10 classes of the test set has a single image, which is never a query (P@1, "
        "R-Precision, MAP@R and Recall@K average over the other 72 images;")


def test_warning_m_per_class_above_class_size():
    ds = _dataset([8] * 8 + [3, 2], [8] * 10)
    assert _warnings(ds, "train.m_per_class=4") == [
        "m_per_class=4 exceeds the images of 2 of the 10 training classes (fewest: 2): the "
        "sampler (pytorch-metric-learning's MPerClassSampler) draws their images with "
        "replacement, so a batch can hold one image several times"]
    # the method's own m_per_class counts too (normsoftmax samples 1 image per class: none)
    assert _warnings(ds) == []


def test_warning_few_test_classes():
    ds = _dataset([8] * 10, [8, 8])
    # a random embedding: 7 of the 15 other images share the query's class
    assert _warnings(ds) == [
        "the test set has only 2 classes (fewer than 5): a random embedding already scores P@1 "
        "of about 47%, so its metrics tell methods apart poorly"]
    assert _warnings(_dataset([8] * 10, [8] * 5)) == []


def test_warning_recall_ks_beyond_the_test_set():
    ds = _dataset([8] * 10, [2] * 5)
    assert _warnings(ds, "eval.recall_ks=[1,9,16]") == [
        "eval.recall_ks has K=9, 16 but a query of the 10-image test set has only 9 other "
        "images: Recall@K for K >= 9 retrieves them all and is 100% for every query"]
    # a recall the config does not compute is not warned about
    assert _warnings(ds, "eval.recall_ks=[1,16]", "eval.metrics=[precision_at_1]") == []
    assert _warnings(ds) == []   # recall_ks 1, 2, 4, 8 < 9


def test_warnings_said_once_in_output_and_record(tmp_path, caplog):
    ds = _dataset([8] * 10, [1] + [4] * 3)
    cfg = _tiny_cfg("train.epochs=1", "train.batch_size=8", "train.m_per_class=2",
                    "eval.recall_ks=[1,16]")
    expected = _warnings(ds, "train.batch_size=8", "train.m_per_class=2",
                         "eval.recall_ks=[1,16]")
    assert [w.split(" ")[0:3] for w in expected] == [["1", "of", "the"], ["the", "test", "set"],
                                                      ["eval.recall_ks", "has", "K=16"]]
    with caplog.at_level(logging.WARNING, logger="dmlbench"):
        rec = run_conventional(cfg, tmp_path / "r", dataset=ds)
    assert rec["warnings"] == expected
    said = [r.getMessage() for r in caplog.records if r.name == "dmlbench"]
    assert said == [f"{rec['run_id']}: {w}" for w in expected]
    assert json.loads((tmp_path / "r" / "record.json").read_text())["warnings"] == expected


def test_warnings_on_the_command_line(tmp_path, capsys):
    cfg_file = _config(tmp_path, epochs=1)
    args = ["dataset.options={num_classes: 8, images_per_class: 3}", "train.batch_size=8",
            "train.m_per_class=4"]
    assert main(["run", str(cfg_file), "--out", str(tmp_path / "o"), *args]) == 0
    err = capsys.readouterr().err.splitlines()
    rec = json.loads(next((tmp_path / "o").rglob("record.json")).read_text())
    assert len(rec["warnings"]) == 2
    assert [line for line in err if line.startswith("dmlbench: warning: ")] == [
        f"dmlbench: warning: {rec['run_id']}: {w}" for w in rec["warnings"]]
    assert rec["warnings"][0].startswith("m_per_class=4 exceeds the images of 4 of the 4 ")
    assert rec["warnings"][1].startswith("the test set has only 4 classes (fewer than 5)")


# ----------------------------------------------------------------------------- what is printed


def test_interrupted_run_says_once_that_it_resumes(tmp_path, monkeypatch, capsys):
    """`dmlbench run CFG`, stopped by Ctrl-C in its second epoch, then run again: one line
    says from which epoch it resumes, and each evaluation is one line (no terminal here)."""
    from dmlbench.bench.train.loop import Trainer

    cfg_file = _config(tmp_path)
    out = tmp_path / "out"
    real = Trainer.train_epoch

    def interrupted(self):
        if self.state.epoch == 1:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    assert main(["run", str(cfg_file), "--out", str(out)]) == 130
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("normsoftmax s0 epoch 1/3: precision_at_1 ")
    assert err[1].startswith("dmlbench: interrupted;")
    monkeypatch.undo()
    assert main(["run", str(cfg_file), "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    run_dir = out / run_id(load_config(str(cfg_file)))
    assert err[0] == f"resuming {run_dir} from its checkpoint at epoch 1"
    assert [line.split(":")[0] for line in err[1:]] == ["normsoftmax s0 epoch 2/3",
                                                        "normsoftmax s0 epoch 3/3"]


def test_one_line_per_evaluation_without_a_terminal(tmp_path):
    """A real process whose stderr is a pipe (progress bars on): one line per evaluation."""
    cfg_file = _config(tmp_path, progress=True)
    proc = subprocess.run([sys.executable, "-m", "dmlbench.bench.cli", "run", str(cfg_file), "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        f"normsoftmax s0 epoch {e}/3" for e in (1, 2, 3)], proc.stderr
    for line in lines:
        assert line.split(": ", 1)[1].startswith("precision_at_1 ") and line.endswith(" s)")
