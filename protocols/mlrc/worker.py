"""Workers of an MLRC search: the loop that runs a study's trials until its budget is spent,
joining a study by name (`dmlbench worker STUDY --storage URL`), and starting worker processes.

Budget. The worker loop counts COMPLETE and PRUNED trials as finished: every worker stops once
`n_trials` are finished. Before a worker starts a new trial it checks that the finished, running
and queued trials leave room for it, and a trial that finds, once created, that trials created
before it already fill the budget (two workers raced) is closed as FAIL with the user attribute
`skipped` without running, so the study ends with exactly `n_trials` finished trials. FAIL
trials (diverged, skipped, or stale) do not count; a study stops early when `max_failed` trials
have failed with a `fail_reason`. A trial interrupted by Ctrl-C is re-queued by the next worker;
one whose worker died is re-queued through its heartbeat (see `storage`).

Progress lines go to `log` when given, else to this module's logger at INFO.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from dmlbench.bench.data import load_configured
from dmlbench.bench.optuna_internals import trial_id
from dmlbench.protocols.mlrc import search
from dmlbench.protocols.mlrc.objective import FoldData, TrialFailed, make_objective
from dmlbench.protocols.mlrc.storage import (Storage, load_study, open_storage, set_heartbeat,
                                             study_settings)

logger = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def quiet_optuna() -> None:
    """Optuna's own trial logging off and its experimental-feature warnings silenced, for the
    command line (which logs trials itself). Library code never calls this: importing
    dmlbench changes no global state."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class TrialSkipped(TrialFailed):
    """A trial created after the budget was already taken by other workers."""


@dataclass
class WorkerSummary:
    """What one worker did on a study, and the study's trial states when it stopped."""

    ran: list[int] = field(default_factory=list)        # trial numbers this worker finished
    wall_s_by_trial: dict[int, float] = field(default_factory=dict)  # ask to tell, seconds
    requeued: list[int] = field(default_factory=list)     # interrupted trials put back in queue
    states: dict[str, int] = field(default_factory=dict)  # the study's trial states at the end
    stopped: str = ""                                      # why the worker stopped
    reproductions: list[str] = field(default_factory=list)  # final items this worker ran
    wall_s: float = 0.0


def worker_label() -> str:
    """host:pid of this process, recorded as a trial's `worker`."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    """Number of trials per state name."""
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def real_failures(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that failed with a reason (not skipped, not stale)."""
    return [t for t in trials if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs]


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Put back in the queue (as a retry) each trial stopped by Ctrl-C and not retried yet."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    out = []
    for t in trials:
        if (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
                and t.number not in retried):
            attrs = {k: v for k, v in t.user_attrs.items() if k != "interrupted"}
            frozen = optuna.trial.FrozenTrial(
                number=t.number, state=t.state, value=None, values=None,
                datetime_start=t.datetime_start, datetime_complete=t.datetime_complete,
                params=t.params, distributions=t.distributions, user_attrs=attrs,
                system_attrs=t.system_attrs, intermediate_values={}, trial_id=trial_id(t))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                RetryHeartbeatStaleTrialCallback()(study, frozen)
            out.append(t.number)
    return out


def admitted(trials: list[FrozenTrial], number: int, n_trials: int) -> bool:
    """Whether trial `number` fits the budget: fewer than `n_trials` trials created before it
    are finished, running or queued."""
    taken = sum(1 for t in trials if t.number < number and t.state in
                (*FINISHED, TrialState.RUNNING, TrialState.WAITING))
    return taken < n_trials


def _stop_reason(trials: list[FrozenTrial], states: dict[str, int], ran: int, n_trials: int,
                 max_failed: int, max_trials: int | None) -> str | None:
    """Why a worker stops now (budget finished, too many failures, its own trial limit)."""
    finished = sum(states.get(s.name, 0) for s in FINISHED)
    if finished >= n_trials:
        return f"{finished} trials finished"
    failures = real_failures(trials)
    if len(failures) >= max_failed:
        return (f"{len(failures)} trials failed (the study allows "
                f"{max_failed}); last: {failures[-1].user_attrs['fail_reason']}")
    if max_trials is not None and ran >= max_trials:
        return f"this worker ran its {max_trials} trials"
    return None


def _budget_taken(states: dict[str, int], n_trials: int) -> bool:
    """Finished and running trials fill the budget and none waits in the queue."""
    waiting = states.get("WAITING", 0)
    occupied = sum(states.get(s.name, 0) for s in FINISHED) + states.get("RUNNING", 0) + waiting
    return occupied >= n_trials and not waiting


def _guarded(study: optuna.Study, objective: Callable[[optuna.Trial], float],
             n_trials: int) -> Callable[[optuna.Trial], float]:
    """`objective`, for a trial admitted by the budget (else TrialSkipped), recording the worker
    and marking a trial stopped by Ctrl-C as interrupted."""
    me = worker_label()

    def guarded(trial: optuna.Trial) -> float:
        if not admitted(study.get_trials(deepcopy=False), trial.number, n_trials):
            trial.set_user_attr("skipped", f"budget of {n_trials} trials already taken when "
                                f"trial {trial.number} started")
            raise TrialSkipped()
        return run_attended(trial, me, lambda: objective(trial))

    return guarded


def run_attended(trial: optuna.Trial, worker: str, call: Callable[[], float]) -> float:
    """`call()` for `trial`, recording the worker that runs it and marking a trial stopped by
    Ctrl-C as interrupted (search trials and final items alike)."""
    trial.set_user_attr("worker", worker)
    try:
        return call()
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        raise


def _run_one(study: optuna.Study, guarded: Callable[[optuna.Trial], float],
             log: Callable[[str], None]) -> int | None:
    """Run one trial; its number, or None when it was skipped or its result dropped."""
    holder: dict[str, int] = {}

    def record(study_: optuna.Study, frozen: FrozenTrial) -> None:
        if "skipped" not in frozen.user_attrs:
            holder["number"] = frozen.number

    run_one(study, guarded, log, callbacks=[record])
    return holder.get("number")


def run_one(study: optuna.Study, objective: Callable[[optuna.Trial], float],
            log: Callable[[str], None], callbacks: list[Callable] = ()) -> bool:
    """Run one trial of `study` (a waiting one first) under Optuna's heartbeat, TrialFailed
    closing it as FAIL; False when another worker re-queued it meanwhile (result dropped)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=1, catch=(TrialFailed,),
                           callbacks=list(callbacks), gc_after_trial=False,
                           show_progress_bar=False)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
        if isinstance(e, ValueError) and not str(e).startswith("Cannot tell a"):
            raise
        # another worker saw no heartbeat from us for the grace period (a stalled machine)
        # and re-queued this trial; the re-queued copy counts, this run is dropped
        log("  a trial of this worker was re-queued by another worker (no heartbeat for "
            "the grace period); its result is dropped")
        return False
    return True


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], *,
               n_trials: int, max_failed: int, max_trials: int | None = None,
               poll_s: float = 1.0, log: Callable[[str], None] | None = None) -> WorkerSummary:
    """Run trials of `study` until `n_trials` are finished (COMPLETE or PRUNED), `max_failed`
    failed with a reason, or this worker ran `max_trials`; wait for other workers' running
    trials (re-queueing dead ones) rather than start trials beyond the budget."""
    log = log or logger.info
    summary = WorkerSummary()
    t0 = time.perf_counter()
    guarded = _guarded(study, objective, n_trials)
    summary.requeued = requeue_interrupted(study)
    while True:
        trials = study.get_trials(deepcopy=False)
        states = count_states(trials)
        stop = _stop_reason(trials, states, len(summary.ran), n_trials, max_failed, max_trials)
        if stop is not None:
            summary.stopped = stop
            break
        if _budget_taken(states, n_trials):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)   # re-queues dead workers' trials
            time.sleep(poll_s)
            continue
        t_trial = time.perf_counter()
        number = _run_one(study, guarded, log)
        if number is not None:
            summary.ran.append(number)
            summary.wall_s_by_trial[number] = time.perf_counter() - t_trial
    summary.states = count_states(study.get_trials(deepcopy=False))
    summary.wall_s = time.perf_counter() - t0
    return summary


# ----------------------------------------------------------------------------- a study's worker


def run_worker(study_name: str, storage: str, *, out_dir: "str | Path | None" = None,
               max_trials: int | None = None, threads: int | None = None,
               data: FoldData | None = None, log: Callable[[str], None] | None = None
               ) -> WorkerSummary:
    """Join a study created by dmlbench and run its trials until its budget is spent; then
    (unless `max_trials` is given) take the study's waiting reproduction items (`items`),
    whose records go to the study's own output folder."""
    st = open_storage(storage)
    study = load_study(study_name, st)
    settings = study_settings(study)
    if data is None:
        data = FoldData(load_configured(settings["config"]), settings["experiment"]["num_folds"])
    summary = work_on(study_name, st, settings, out_dir=out_dir, max_trials=max_trials,
                      threads=threads, data=data, log=log)
    if max_trials is None and summary.states.get("COMPLETE", 0) and \
            summary.stopped.endswith("trials finished"):
        from dmlbench.protocols.mlrc.final import FinalEvaluation
        from dmlbench.protocols.mlrc.items import take_waiting_items

        study = load_study(study_name, st)
        fe = FinalEvaluation.of(study, settings, data, settings["execution"]["out_dir"],
                                storage_display=st.display, log=log)
        summary.reproductions = take_waiting_items(fe, study, log=log)
    return summary


def work_on(study_name: str, st: Storage, settings: dict[str, Any], *,
            out_dir: "str | Path | None" = None, max_trials: int | None = None,
            threads: int | None = None, data: FoldData | None = None,
            log: Callable[[str], None] | None = None) -> WorkerSummary:
    """Run trials of the study `study_name` (whose stored `settings` are given) in this
    process, logging one line per trial."""
    log = log or logger.info
    study, objective = study_objective(study_name, st, settings, out_dir=out_dir,
                                       threads=threads, data=data, log=log)
    budget = settings["budget"]
    return run_trials(study, objective, n_trials=budget["n_trials"],
                      max_failed=budget["max_failed"], max_trials=max_trials, log=log)


def study_objective(study_name: str, st: Storage, settings: dict[str, Any], *,
                    out_dir: "str | Path | None" = None, threads: int | None = None,
                    data: FoldData | None = None, log: Callable[[str], None] | None = None
                    ) -> tuple[optuna.Study, Callable[[optuna.Trial], float]]:
    """(the study loaded with its sampler and pruner, its logged trial objective)."""
    log = log or logger.info
    ex, exp = settings["execution"], settings["experiment"]
    set_heartbeat(st, ex["heartbeat_interval"], ex["grace_period"])
    dists = {k: search.distribution(v, k) for k, v in exp["space"].items()}
    sampler = search.PerTrialSeededSampler(exp["sampler"], exp["seed"], dists,
                                           exp.get("grid_points", 3))
    study = load_study(study_name, st, sampler=sampler, pruner=search.make_pruner(exp["pruner"]))
    if data is None:
        data = FoldData(load_configured(settings["config"]), exp["num_folds"])
    out = Path(out_dir) if out_dir is not None else Path(ex["out_dir"])
    objective = make_objective(settings, data, out, study_name, threads=threads)
    return study, _logged(objective, log)


def one_trial(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
              log: Callable[[str], None] | None = None) -> int | None:
    """Run one trial of `study` if the budget admits it (else it is closed as skipped); its
    number, or None when it was skipped or its result dropped."""
    return _run_one(study, _guarded(study, objective, n_trials), log or logger.info)


def _logged(objective: Callable[[optuna.Trial], float],
            log: Callable[[str], None]) -> Callable[[optuna.Trial], float]:
    """`objective`, saying how each trial ended."""

    def logged(trial: optuna.Trial) -> float:
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            log(f"  trial {trial.number}: pruned after "
                f"{trial.user_attrs.get('pruned_after_folds')} folds")
            raise
        except TrialSkipped:
            raise
        except TrialFailed as e:
            log(f"  trial {trial.number}: FAILED ({e})")
            raise
        vals = " ".join(f"{100 * v:.2f}" for v in trial.user_attrs["fold_values"])
        log(f"  trial {trial.number}: MAP@R {100 * value:.2f} (folds {vals}) "
            f"{params_text(trial.params)}")
        return value

    return logged


def params_text(params: dict[str, Any]) -> str:
    """Parameters as `name=value, ...` (floats with 4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def spawn_workers(study_name: str, storage: str, n: int, out_dir: "str | Path", *,
                  threads: int | None = None, quiet: bool = True) -> list[subprocess.Popen]:
    """Start `n` `dmlbench worker` processes on this machine for a study."""
    procs = []
    for _ in range(n):
        cmd = [sys.executable, "-m", "dmlbench.bench.cli", "worker", study_name, "--storage",
               storage, "--out", str(out_dir)]
        if threads:
            cmd += ["--threads", str(threads)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL if quiet else None,
                                      stderr=subprocess.DEVNULL if quiet else None))
    return procs
