"""`dmlbench launch`: worker placement on GPUs (without a GPU: the environment, memory share
and threads each process gets), the job's command lines, option checks, and submitit's local
executor running 2 real suite workers to the end of a 2-study suite."""
from __future__ import annotations

import logging
import subprocess

import pytest
import yaml

from dmlbench.bench.errors import UserError
from dmlbench.bench.suite import launch as L


def test_placement_without_gpu_is_one_process_with_the_job_cpus():
    (slot,) = L.placement(0, 1, 6)
    assert slot.env == {} and slot.memory_fraction is None and slot.threads == 6


def test_placement_several_workers_per_gpu():
    slots = L.placement(2, 3, 12, visible="4,7")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["4", "4", "4", "7", "7", "7"]
    assert all(s.memory_fraction == pytest.approx(1 / 3) for s in slots)
    assert [s.threads for s in slots] == [2] * 6          # 12 CPUs over 6 processes
    # one worker per GPU: no memory cap; without CUDA_VISIBLE_DEVICES the job's 0..g-1
    slots = L.placement(2, 1, 3)
    assert [(s.env, s.memory_fraction, s.threads) for s in slots] == [
        ({"CUDA_VISIBLE_DEVICES": "0"}, None, 1), ({"CUDA_VISIBLE_DEVICES": "1"}, None, 1)]
    with pytest.raises(UserError, match="sees 1 GPUs"):
        L.placement(2, 1, 2, visible="3")


def test_worker_job_starts_one_command_per_slot(monkeypatch):
    started = []

    class FakePopen:
        def __init__(self, cmd, env):
            started.append((cmd, env))

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    argv = L.worker_argv("s.yaml", "postgresql://h/db", overrides=["train.epochs=3"],
                         out_dir="/o", smoke=True)
    assert L.WorkerJob()(argv, 1, 2, 8) == [0, 0]
    assert len(started) == 2
    for cmd, env in started:
        assert cmd[-13:] == ["worker", "--suite", "s.yaml", "--storage", "postgresql://h/db",
                             "train.epochs=3", "--out", "/o", "--smoke", "--threads", "4",
                             "--gpu-memory-fraction", "0.5"][-13:]
        assert env["CUDA_VISIBLE_DEVICES"] == "5"


def test_a_preempted_job_is_resubmitted_with_the_same_arguments():
    submitit = pytest.importorskip("submitit")
    job = L.WorkerJob()
    assert isinstance(job, submitit.helpers.Checkpointable)
    again = job.checkpoint(["dmlbench", "worker"], 1, 2, 8)
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.args == (["dmlbench", "worker"], 1, 2, 8) and isinstance(again.function,
                                                                          L.WorkerJob)


def test_gpu_share_is_applied_and_stated(monkeypatch, caplog):
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda f, d: calls.append((f, d)))

    class Props:
        total_memory = 80 * 2 ** 30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with caplog.at_level(logging.INFO, logger="dmlbench"):
        L.apply_gpu_share(0.25)
    assert calls == [(0.25, 0)]
    assert "on GPU 3: CUDA memory share 0.25 (20.0 of 80.0 GiB)" in caplog.text
    with pytest.raises(UserError, match=r"must be in \(0, 1\]"):
        L.apply_gpu_share(1.5)


@pytest.mark.parametrize("kw, message", [
    ({"workers_per_gpu": 2}, "--workers-per-gpu needs --gpus-per-worker"),
    ({"workers": 0}, "--workers must be at least 1"),
    ({"executor": "pbs"}, "invalid --executor 'pbs'")])
def test_bad_options_are_one_line_errors(kw, message):
    with pytest.raises(UserError, match=message):
        L.LaunchOptions(**kw).check()


def _suite_with_launch(tmp_path, launch) -> str:
    path = tmp_path / "launched.yaml"
    path.write_text(yaml.safe_dump({"name": "launched", "protocol": "mlrc", "runs": ["ms"],
                                    "launch": launch}))
    return str(path)


def test_resources_from_flags_then_suite_then_defaults(tmp_path):
    suite = _suite_with_launch(tmp_path, {"workers": 32, "gpus_per_worker": 1, "mem_gb": 48,
                                          "partition": "gpu", "time_min": 600})
    flags = {key: None for key in L.RESOURCES}
    opts, origin = L.resolve_options(suite, {**flags, "workers": 4, "time_min": 90},
                                     executor="local")
    assert (opts.workers, opts.gpus_per_worker, opts.workers_per_gpu, opts.cpus_per_worker,
            opts.mem_gb, opts.time_min, opts.partition, opts.executor) == (
        4, 1, 1, 4, 48, 90, "gpu", "local")
    assert origin == {"workers": "flag", "gpus_per_worker": "suite", "workers_per_gpu": "default",
                      "cpus_per_worker": "default", "mem_gb": "suite", "time_min": "flag",
                      "partition": "suite"}
    assert L.describe(opts, origin) == (
        "launch: workers 4 (flag), gpus-per-worker 1 (suite), workers-per-gpu 1 (default), "
        "cpus-per-worker 4 (default), mem-gb 48 (suite), time-min 90 (flag), partition gpu "
        "(suite)")
    # a shipped suite without a `launch` section: the defaults
    opts, origin = L.resolve_options("demo", flags)
    assert set(origin.values()) == {"default"} and opts == L.LaunchOptions()
    # the suite's combination is checked like the flags'
    bad = _suite_with_launch(tmp_path, {"workers_per_gpu": 2})
    with pytest.raises(UserError, match="--workers-per-gpu needs --gpus-per-worker"):
        L.resolve_options(bad, flags)


@pytest.mark.parametrize("launch, message", [
    ({"gpus_per_worker": -1}, r"launch.gpus_per_worker=-1 is not valid; allowed: an integer "
                              r">= 0 or null \(the flag --gpus-per-worker overrides it\)"),
    ({"mem_gb": 0}, "launch.mem_gb=0 is not valid; allowed: a number > 0 or null"),
    ({"gpu": 1}, "launch has unknown key 'gpu'; valid keys: workers, gpus_per_worker"),
    ([1], "`launch` must be a mapping with keys workers, gpus_per_worker")])
def test_bad_suite_launch_section_is_a_one_line_error(tmp_path, launch, message):
    from dmlbench.bench.suite.schema import load_suite

    with pytest.raises(UserError, match=message):
        load_suite(_suite_with_launch(tmp_path, launch))


def test_sqlite_storage_refused(tmp_path):
    with pytest.raises(UserError, match="need a storage they can share"):
        L.launch("demo", f"sqlite:///{tmp_path}/s.db", L.LaunchOptions(executor="local"))


def test_launch_local_executor_runs_two_real_workers(tmp_path, capsys):
    pytest.importorskip("submitit")
    from dmlbench.bench.cli import main
    from tests.test_suite_workers import check_exact, write_suite

    suite = write_suite(tmp_path, n_trials=1, reproductions=1, epochs=1)
    with open(suite) as f:  # the job count and CPUs from the suite file, the time from a flag
        spec = yaml.safe_load(f)
    spec["launch"] = {"workers": 2, "cpus_per_worker": 1, "time_min": 30}
    with open(suite, "w") as f:
        yaml.safe_dump(spec, f)
    url = f"journal://{tmp_path / 'studies.log'}"
    out = tmp_path / "out"
    assert main(["launch", suite, "--storage", url, "--time-min", "20", "--executor", "local",
                 "--out", str(out), "--logs", str(tmp_path / "logs")]) == 0
    printed = capsys.readouterr().out
    assert ("launch: workers 2 (suite), gpus-per-worker 0 (default), workers-per-gpu 1 "
            "(default), cpus-per-worker 1 (suite), time-min 20 (flag)") in printed
    assert "submitted 2 worker jobs (LocalJob)" in printed
    assert printed.count("1 workers, exit codes [0]") == 2
    by_worker = check_exact(suite, url, out, n_trials=1, reps=1)
    assert sum(by_worker.values()) == 2 * 5   # per study: 4 fold items and the reproduction
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*_log.err"))
    assert logs.count("suite worker done") == 2


def test_bad_launch_section_from_the_command_line_is_exit_2_one_line(tmp_path, capsys):
    from dmlbench.bench.cli import main

    suite = _suite_with_launch(tmp_path, {"cpus_per_worker": 0})
    logs = tmp_path / "logs"
    code = main(["launch", suite, "--storage", f"journal://{tmp_path / 's.log'}",
                 "--executor", "local", "--logs", str(logs)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "launch.cpus_per_worker=0 is not valid; allowed: an integer >= 1 or null" in err
    assert not logs.exists() and not (tmp_path / "s.log").exists()   # nothing submitted
