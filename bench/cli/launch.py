"""`dmlbench launch`: submit suite workers through submitit (SLURM, or the local executor)."""
from __future__ import annotations

import argparse

from dmlbench.bench.cli.common import STORAGE, positive


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="submit N suite workers to SLURM (or run them locally) "
                       "through submitit",
                       description="Create the MLRC studies of suite NAME in the shared storage "
                       "URL, then submit N jobs, each running `dmlbench worker --suite NAME "
                       "--storage URL` (one per GPU of the job, or --workers-per-gpu per GPU). "
                       "A preempted or timed-out job is requeued; the trials its workers held "
                       "are re-queued through their heartbeats.", epilog=STORAGE)
    p.add_argument("suite", metavar="FILE|NAME")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--storage", required=True, metavar="URL",
                   help="a storage every job reaches (PostgreSQL on a cluster)")
    g = p.add_argument_group("resources of each job", "each flag overrides the suite file's "
                             "`launch` section (same keys: workers, gpus_per_worker, ...), "
                             "which overrides the default")
    g.add_argument("--workers", type=positive, metavar="N", help="jobs to submit (default 1)")
    g.add_argument("--gpus-per-worker", type=int, metavar="G", help="GPUs per job (default 0)")
    g.add_argument("--workers-per-gpu", type=positive, metavar="K",
                   help="worker processes sharing each GPU, each capped at 1/K of its memory "
                   "(pays off when one fit leaves the GPU mostly idle: small batches and "
                   "images, e.g. BN-Inception at batch 32; default 1)")
    g.add_argument("--cpus-per-worker", type=positive, metavar="C",
                   help="CPUs per job, split between its processes as torch threads (default 4)")
    g.add_argument("--mem-gb", type=float, metavar="GB",
                   help="memory per job (default: the scheduler's)")
    g.add_argument("--time-min", type=positive, metavar="MIN",
                   help="time limit per job; a job past it is requeued (default 1440)")
    g.add_argument("--partition", metavar="P", help="SLURM partition (default: the scheduler's)")
    p.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto",
                   help="auto: SLURM where sbatch exists, else local processes")
    p.add_argument("--logs", default="runs/launch", metavar="DIR",
                   help="submitit's job folder (logs, pickles)")
    p.add_argument("--out", help="the suite's output folder (default: runs/SUITE_NAME)")
    p.add_argument("--smoke", action="store_true", help="the suite in smoke mode")
    p.add_argument("--wait", action="store_true", help="wait for every job to end "
                   "(always with local jobs)")
    p.set_defaults(handler=cmd_launch)


def cmd_launch(ns: argparse.Namespace) -> int:
    from dmlbench.bench.suite.launch import RESOURCES, describe, launch, resolve_options

    opts, origin = resolve_options(ns.suite, {key: getattr(ns, key) for key in RESOURCES},
                                   executor=ns.executor, folder=ns.logs)
    print(describe(opts, origin))
    jobs = launch(ns.suite, ns.storage, opts, overrides=ns.overrides, out_dir=ns.out,
                  smoke=ns.smoke)
    print(f"submitted {len(jobs)} worker jobs ({jobs[0].__class__.__name__}): "
          + ", ".join(str(j.job_id) for j in jobs) + f"; logs in {ns.logs}")
    local = type(jobs[0]).__name__ == "LocalJob"   # --executor local, or auto without SLURM
    if not (ns.wait or local):
        return 0
    failed = 0
    for j in jobs:
        try:
            codes = j.result()
        except Exception as e:   # the job itself failed: submitit's message names its log
            print(f"job {j.job_id}: FAILED ({type(e).__name__}: {str(e).strip()[-500:]})")
            failed += 1
            continue
        bad = [c for c in codes if c != 0]
        failed += bool(bad)
        print(f"job {j.job_id}: {len(codes)} workers, exit codes {codes}")
    return 1 if failed else 0
