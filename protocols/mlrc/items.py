"""Work items of an MLRC study's final evaluation, shared by any number of workers.

Each fold p of each reproduction r of a study, then each reproduction, is a trial of the
companion study `STUDY/final` in the same storage, enqueued WAITING with the user attribute
`item` = `rep-r/fold-p` or `rep-r` (`final_items`, `ensure_items`): fold items fit the folds in
parallel, a reproduction item ensembles its folds and writes the record. A worker
takes one by popping it (Optuna hands a WAITING trial to exactly one process) and runs it
under Optuna's heartbeat, so items inherit the search trials' guarantees: a worker killed with
`kill -9` leaves its item RUNNING without heartbeats; the next worker that looks fails it and
`RetryHeartbeatStaleTrialCallback` re-queues a copy (same `item`, `failed_trial` = the dead
trial's number); a stalled worker judged dead finds its trial finished when it reports and its
result is dropped.

Exactly once. A popped trial whose item has another trial numbered below it that is WAITING,
RUNNING or COMPLETE is closed as FAIL with the user attribute `skipped` without running (this
covers a second enqueue of the same items by a racing worker, and a fresh trial Optuna creates
when no item was left to pop). So each item ends with at most one COMPLETE trial, and
`item_table` raises if it ever finds two. The reproduction itself also runs under its folder's
lock and keeps a finished record for the same parameters (`FinalEvaluation.attempt`), so a
retry after a kill reuses the folds the dead worker finished and never trains a finished one
twice.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from dmlbench.bench.optuna_internals import storage_of
from dmlbench.protocols.mlrc.final import RECORD, FinalEvaluation, finished_record
from dmlbench.protocols.mlrc.objective import TrialFailed

logger = logging.getLogger(__name__)
ITEM_ATTR = "item"
FINAL_OF_ATTR = "dmlbench_final_of"
REPORT_ATTR = "report"


class ItemSkipped(TrialFailed):
    """A popped trial that is not (or no longer) an item to run."""


def final_study_name(study_name: str) -> str:
    """The name of the companion study that holds a study's final-evaluation items."""
    return f"{study_name}/final"


def rep_item(r: int) -> str:
    return f"rep-{r}"


def final_items(reproductions: int, folds: int) -> list[str]:
    """Every item of a final evaluation, in the order they are enqueued (and so taken): each
    reproduction's folds (`rep-r/fold-p`), then the reproductions (`rep-r`: the folds' ensemble
    and the record; a fold not fitted yet is fitted there, one being fitted waited for)."""
    return [f"{rep_item(r)}/fold-{p}" for r in range(reproductions) for p in range(folds)] \
        + [rep_item(r) for r in range(reproductions)]


def final_study(study: optuna.Study) -> optuna.Study:
    """The companion study `STUDY/final` of `study`, in the same storage (created if needed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        final = optuna.create_study(study_name=final_study_name(study.study_name),
                                    storage=storage_of(study), direction="maximize",
                                    load_if_exists=True)
    if FINAL_OF_ATTR not in final.user_attrs:
        final.set_user_attr(FINAL_OF_ATTR, study.study_name)
    return final


def ensure_items(final: optuna.Study, items: list[str], max_attempts: int = 3) -> int:
    """Enqueue each of `items` (in order) in a final study where it has no waiting, running or
    complete
    trial (none yet, or every one failed, fewer than `max_attempts` times); how many were
    enqueued. (Two workers enqueueing at once make duplicate items, which the pop rule
    skips.)"""
    trials = final.get_trials(deepcopy=False)
    have = {t.user_attrs.get(ITEM_ATTR) for t in trials if t.state in
            (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)}
    failed: dict[str, int] = {}
    for t in trials:
        if t.state == TrialState.FAIL and "skipped" not in t.user_attrs:
            failed[t.user_attrs.get(ITEM_ATTR)] = failed.get(t.user_attrs.get(ITEM_ATTR), 0) + 1
    todo = [i for i in items if i not in have and failed.get(i, 0) < max_attempts]
    for item in todo:
        final.enqueue_trial({}, user_attrs={ITEM_ATTR: item})
    return len(todo)


@dataclass
class ItemTable:
    """The state of each item of a final study."""

    done: dict[str, FrozenTrial] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)   # every trial of it failed (retries spent)

    @property
    def open(self) -> set[str]:
        """Items not finished yet."""
        return self.running | self.waiting | self.missing


def item_table(final: optuna.Study, items: list[str]) -> ItemTable:
    """Each item's state; AssertionError if an item has two COMPLETE trials (never expected)."""
    out = ItemTable()
    by_item: dict[str, list[FrozenTrial]] = {i: [] for i in items}
    for t in final.get_trials(deepcopy=False):
        if t.user_attrs.get(ITEM_ATTR) in by_item:
            by_item[t.user_attrs[ITEM_ATTR]].append(t)
    for item, trials in by_item.items():
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) <= 1, f"item {item} completed twice: trials " \
            f"{[t.number for t in complete]}"
        if complete:
            out.done[item] = complete[0]
        elif any(t.state == TrialState.RUNNING for t in trials):
            out.running.add(item)
        elif any(t.state == TrialState.WAITING for t in trials):
            out.waiting.add(item)
        else:
            out.missing.add(item)
    return out


def is_duplicate(trials: list[FrozenTrial], number: int, item: str) -> bool:
    """Whether trial `number` of `item` must not run: a trial of the same item numbered below
    it is waiting, running or complete."""
    return any(t.user_attrs.get(ITEM_ATTR) == item and t.number < number and t.state in
               (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE) for t in trials)


def take_item(final: optuna.Study, run_item: Callable[[str], float],
              log: Callable[[str], None] | None = None) -> str | None:
    """Pop one waiting item of `final` and run `run_item(item)` under Optuna's heartbeat; the
    item run, or None when the popped trial was skipped or its result dropped."""
    from dmlbench.protocols.mlrc.worker import run_attended, run_one, worker_label

    log = log or logger.info
    me = worker_label()

    def objective(trial: optuna.Trial) -> float:
        item = trial.user_attrs.get(ITEM_ATTR)
        if item is None:
            trial.set_user_attr("skipped", "no item was waiting")
            raise ItemSkipped()
        if is_duplicate(final.get_trials(deepcopy=False), trial.number, item):
            trial.set_user_attr("skipped", f"item {item} is taken by an earlier trial")
            raise ItemSkipped()
        return run_attended(trial, me, lambda: run_item(item))

    holder: dict[str, str] = {}

    def record(study_: optuna.Study, frozen: FrozenTrial) -> None:
        if "skipped" not in frozen.user_attrs and frozen.state == TrialState.COMPLETE:
            holder["item"] = frozen.user_attrs[ITEM_ATTR]

    run_one(final, objective, log, callbacks=[record])
    return holder.get("item")


def fail_stale(study: optuna.Study) -> None:
    """Fail the stale RUNNING trials of `study` (re-queueing each through the storage's retry
    callback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def reproduction_runner(fe: FinalEvaluation) -> Callable[[str], float]:
    """`run_item` for final items: a fold item fits its fold (value: its test MAP@R); a
    reproduction item makes the reproduction's record from its folds (or keeps the one a dead
    worker finished), its concatenated MAP@R as the value (0 when diverged)."""

    def run(item: str) -> float:
        rep, _, fold = item.partition("/fold-")
        r = int(rep.split("-", 1)[1])
        if fold:
            return fe.fold(r, int(fold))
        rec = fe.attempt(r, wait=True, before="before")
        if rec is None or rec.get("status") != "completed":
            return 0.0
        return float(rec["mlrc"]["concatenated"]["metrics"]["mean_average_precision_at_r"])

    return run


def skip_leftover_copies(final: optuna.Study, log: Callable[[str], None] | None = None) -> int:
    """Take (and so skip, by the pop rule) every trial still waiting once every item is done:
    the second copy of an item that a dead worker's retry and a worker's re-enqueue both made.
    Optuna pops waiting trials lowest number first, so a copy left waiting is numbered above
    the one that completed its item and is always skipped; should one ever not be, it fails
    instead of running its item a second time. How many were taken."""

    def never(item: str) -> float:
        raise RuntimeError(f"a copy of item {item} was left waiting after the item completed "
                           "and is not numbered above it")

    n = 0
    while any(t.state == TrialState.WAITING for t in final.get_trials(deepcopy=False)):
        take_item(final, never, log)
        n += 1
    return n


def take_waiting_items(fe: FinalEvaluation, study: optuna.Study, *,
                       log: Callable[[str], None] | None = None) -> list[str]:
    """Take this study's waiting reproduction items (enqueueing them first) until none waits;
    the items this process ran. Items other workers are running are left to them."""
    final = final_study(study)
    items = final_items(fe.reproductions, len(fe.data.folds))
    ensure_items(final, items)
    run, done = reproduction_runner(fe), []
    while item_table(final, items).waiting:
        item = take_item(final, run, log)
        if item is not None:
            done.append(item)
    if not item_table(final, items).open:
        skip_leftover_copies(final, log)
    return done


def run_final_items(fe: FinalEvaluation, study: optuna.Study, *, poll_s: float = 1.0,
                    log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The final evaluation as work items: take this study's reproduction items until every one
    is complete (waiting for other workers' running ones, re-queueing dead workers' ones), then
    every reproduction's record, in order."""
    log = log or logger.info
    final = final_study(study)
    items = final_items(fe.reproductions, len(fe.data.folds))
    ensure_items(final, items)
    run = reproduction_runner(fe)
    while True:
        table = item_table(final, items)
        if not table.open:
            break
        if table.missing:
            raise RuntimeError(f"final evaluation of {study.study_name}: items "
                               f"{sorted(table.missing)} failed on every retry")
        if table.waiting:
            take_item(final, run, log)
            continue
        fail_stale(final)
        time.sleep(poll_s)
    skip_leftover_copies(final, log)
    records = []
    for r in range(fe.reproductions):
        rec = finished_record(fe.folder(r) / RECORD)
        if rec is None:   # made by a worker that wrote elsewhere (no shared file system)
            logger.warning("reproduction %d of %s is complete in the storage but %s is not "
                           "here; the output folder must be shared by every worker", r,
                           study.study_name, fe.folder(r) / RECORD)
        else:
            records.append(rec)
    return records
