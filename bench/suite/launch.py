"""`dmlbench launch`: suite workers submitted through submitit (SLURM on a cluster, its local
executor on one machine), each job with its GPUs, CPUs, memory and time limit.

A job is one scheduler allocation running `max(1, gpus) x workers_per_gpu` suite-worker
processes (`dmlbench worker --suite NAME --storage URL`); with `workers_per_gpu` N > 1, N of
them share each GPU (`CUDA_VISIBLE_DEVICES` naming it, CUDA memory capped at 1/N each: see
`placement`). Jobs are `submitit.helpers.Checkpointable`: on preemption or time-out submitit
requeues the job; the trials and reproductions its workers held go stale and the heartbeat
re-queues them (other workers, or the requeued job, take them up).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlbench.bench.errors import UserError

logger = logging.getLogger(__name__)
EXECUTORS = ("auto", "slurm", "local")


@dataclass
class LaunchOptions:
    """Per-job resources and how many jobs (see the module docstring)."""

    workers: int = 1                 # jobs
    gpus_per_worker: int = 0
    workers_per_gpu: int = 1
    cpus_per_worker: int = 4
    mem_gb: float | None = None
    time_min: int = 24 * 60
    partition: str | None = None
    executor: str = "auto"
    folder: str = "runs/launch"      # submitit's job logs

    def check(self) -> None:
        if self.executor not in EXECUTORS:
            raise UserError(f"invalid --executor {self.executor!r}; allowed: "
                            f"{', '.join(EXECUTORS)}")
        for name in ("workers", "workers_per_gpu", "cpus_per_worker", "time_min"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                                f"{getattr(self, name)}")
        if self.gpus_per_worker < 0:
            raise UserError(f"--gpus-per-worker must be 0 or more, got {self.gpus_per_worker}")
        if self.workers_per_gpu > 1 and self.gpus_per_worker == 0:
            raise UserError("--workers-per-gpu needs --gpus-per-worker 1 or more (it places "
                            "several workers on each GPU of a job)")


RESOURCES = ("workers", "gpus_per_worker", "workers_per_gpu", "cpus_per_worker", "mem_gb",
             "time_min", "partition")  # what a suite's `launch` section may set


def resolve_options(suite: str, flags: dict[str, Any], **rest: Any
                    ) -> tuple[LaunchOptions, dict[str, str]]:
    """Launch options from the flags given (not None), else the suite's `launch` section,
    else the defaults; and where each resource came from ("flag", "suite" or "default")."""
    from dmlbench.bench.suite.schema import load_suite

    section = load_suite(suite).get("launch") or {}
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key in RESOURCES:
        if flags.get(key) is not None:
            values[key], origin[key] = flags[key], "flag"
        elif section.get(key) is not None:
            values[key], origin[key] = section[key], "suite"
        else:
            origin[key] = "default"
    opts = LaunchOptions(**values, **rest)
    opts.check()
    return opts, origin


def describe(opts: LaunchOptions, origin: dict[str, str]) -> str:
    """One line: each job's resources and where each came from."""
    parts = [f"{key.replace('_', '-')} {getattr(opts, key)} ({origin[key]})" for key in RESOURCES
             if getattr(opts, key) is not None]
    return "launch: " + ", ".join(parts)


@dataclass
class Slot:
    """One worker process of a job: its environment additions, CUDA memory share, threads."""

    env: dict[str, str]
    memory_fraction: float | None
    threads: int


def placement(gpus: int, workers_per_gpu: int, cpus: int,
              visible: str | None = None) -> list[Slot]:
    """The worker processes of one job: `workers_per_gpu` on each of its `gpus` GPUs (named by
    `visible`, the job's CUDA_VISIBLE_DEVICES, else 0..gpus-1), each with CUDA memory share
    1/workers_per_gpu (None when alone on its GPU), the job's CPUs split between them; one
    process without a GPU when `gpus` is 0."""
    if gpus == 0:
        return [Slot({}, None, max(1, cpus))]
    devices = [d for d in (visible or "").split(",") if d.strip()] or \
        [str(i) for i in range(gpus)]
    if len(devices) < gpus:
        raise UserError(f"the job sees {len(devices)} GPUs ({visible}) but asked for {gpus}")
    n = gpus * workers_per_gpu
    share = None if workers_per_gpu == 1 else 1.0 / workers_per_gpu
    return [Slot({"CUDA_VISIBLE_DEVICES": devices[g]}, share, max(1, cpus // n))
            for g in range(gpus) for _ in range(workers_per_gpu)]


def worker_argv(suite: str, storage: str, *, overrides: list[str] | None = None,
                out_dir: str | None = None, smoke: bool = False) -> list[str]:
    """The `dmlbench worker --suite` command line every process of a job runs."""
    argv = [sys.executable, "-m", "dmlbench.bench.cli", "worker", "--suite", suite,
            "--storage", storage, *(overrides or [])]
    if out_dir:
        argv += ["--out", out_dir]
    if smoke:
        argv.append("--smoke")
    return argv


def apply_gpu_share(fraction: float) -> None:
    """Cap this process's CUDA memory on its device at `fraction` and log the share (no-op,
    logged, without a CUDA device)."""
    if not 0 < fraction <= 1:
        raise UserError(f"--gpu-memory-fraction must be in (0, 1], got {fraction}")
    import torch

    if not torch.cuda.is_available():
        logger.info(f"no CUDA device: CUDA memory share {fraction:.3g} not applied")
        return
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    total = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    logger.info(f"worker pid {os.getpid()} on GPU {os.environ.get('CUDA_VISIBLE_DEVICES', '0')}"
                f": CUDA memory share {fraction:.3g} ({fraction * total:.1f} of {total:.1f} GiB)")


try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:   # submitit is optional (pip install 'dmlbench[cluster]')
    _Checkpointable = object


class WorkerJob(_Checkpointable):
    """A submitit job: the worker processes of `placement`, run until all exit. Checkpointable:
    on preemption submitit resubmits it with the same arguments (its workers' unfinished
    trials are re-queued through their heartbeats)."""

    def __call__(self, argv: list[str], gpus: int, workers_per_gpu: int,
                 cpus: int) -> list[int]:
        slots = placement(gpus, workers_per_gpu, cpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
        procs = []
        for slot in slots:
            cmd = [*argv, "--threads", str(slot.threads)]
            if slot.memory_fraction is not None:
                cmd += ["--gpu-memory-fraction", f"{slot.memory_fraction:.6g}"]
            procs.append(subprocess.Popen(cmd, env={**os.environ, **slot.env}))
        return [p.wait() for p in procs]


def _executor(opts: LaunchOptions) -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("dmlbench launch needs submitit: pip install 'dmlbench[cluster]' "
                        "(or pip install submitit)") from None
    cluster = None if opts.executor == "auto" else opts.executor
    ex = submitit.AutoExecutor(folder=opts.folder, cluster=cluster)
    params: dict[str, Any] = {"name": "dmlbench-worker", "timeout_min": int(opts.time_min),
                              "cpus_per_task": int(opts.cpus_per_worker),
                              "gpus_per_node": int(opts.gpus_per_worker), "tasks_per_node": 1,
                              "nodes": 1}
    if opts.mem_gb is not None:
        params["mem_gb"] = float(opts.mem_gb)
    if opts.partition:
        params["slurm_partition"] = opts.partition
    ex.update_parameters(**params)
    return ex


def launch(suite: str, storage: str, opts: LaunchOptions, *,
           overrides: list[str] | None = None, out_dir: str | None = None,
           smoke: bool = False) -> list[Any]:
    """Create the suite's studies in `storage`, then submit `opts.workers` jobs of suite
    workers; the submitit jobs."""
    from dmlbench.bench.suite.workers import plan_suite_studies
    from dmlbench.protocols.mlrc.storage import parse_storage_url

    opts.check()
    if parse_storage_url(storage)[0] == "sqlite":
        raise UserError(f"workers of several jobs need a storage they can share: give a "
                        f"PostgreSQL URL (or journal:///shared/path.log), not {storage}")
    ex = _executor(opts)
    if Path(suite).is_file():
        suite = str(Path(suite).resolve())
    out_dir = str(Path(out_dir).resolve()) if out_dir else None
    plan_suite_studies(suite, storage, overrides=overrides, out_dir=out_dir, smoke=smoke)
    argv = worker_argv(suite, storage, overrides=overrides, out_dir=out_dir, smoke=smoke)
    with ex.batch():
        jobs = [ex.submit(WorkerJob(), argv, int(opts.gpus_per_worker),
                          int(opts.workers_per_gpu), int(opts.cpus_per_worker))
                for _ in range(opts.workers)]
    return jobs
