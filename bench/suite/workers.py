"""A suite-level worker: `dmlbench worker --suite NAME --storage URL` serves every MLRC study
of a suite (search trials, then final-evaluation items, then reports) until nothing is left;
any number of such workers, and `dmlbench suite NAME --storage URL`, may work on one storage
at once.

The studies are the suite's plan (`prepare`), created in the storage with the names and
settings `dmlbench suite` would use. Each pass the worker looks at every study and takes one
unit of work that is available now: a search trial (the budget has a free slot), a
fold or reproduction item (the search has finished: `protocols.mlrc.items`), or the study's report
(every reproduction complete; the importance report, written once under a lock and marked on
the study). It takes the unit of the study with the most remaining work in fits (search
trials left x folds + reproductions x folds; then the fold items left), so the longest study
starts first and the suite finishes soonest; ties go search, then final items, then reports,
then an order of the worker's own (so that workers starting together spread over the
studies). With nothing
available but work left (other workers' trials running), it fails stale trials (a dead
worker's trial or item goes back to the queue) and waits. The last worker out writes the
suite's MLRC tables and HTML report (atomic writes; the same files whoever writes them).
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dmlbench.bench.errors import UserError
from dmlbench.bench.records import RunHeld, file_lock
from dmlbench.protocols.mlrc.items import REPORT_ATTR

logger = logging.getLogger(__name__)
PHASES = ("search", "reproductions", "report")


@dataclass
class Work:
    """What one study has left and whether a unit of it can be taken now."""

    phase: str            # search | reproductions | report | done | failed
    available: bool
    remaining_fits: int


@dataclass
class SuiteWorkerSummary:
    """What one suite worker did."""

    trials: list[tuple[str, int]] = field(default_factory=list)   # (study, trial number)
    items: list[tuple[str, str]] = field(default_factory=list)    # (study, item)
    reports: list[str] = field(default_factory=list)              # studies reported
    states: dict[str, str] = field(default_factory=dict)          # study -> phase at the end
    wall_s: float = 0.0
    idle_s: float = 0.0


class StudyWork:
    """One study of the suite as this worker sees it (study, final items, lazily its data)."""

    def __init__(self, ps: Any, st: Any, settings: dict[str, Any], dataset_for: Callable,
                 threads: int | None, log: Callable[[str], None]) -> None:
        from dmlbench.protocols.mlrc.items import final_study
        from dmlbench.protocols.mlrc.storage import load_study

        self.ps, self.st, self.settings, self.log = ps, st, settings, log
        self.name = ps.study
        self.study = load_study(self.name, st)
        self.final = final_study(self.study)
        self.dataset_for, self.threads = dataset_for, threads
        self._objective = None
        self._data = None
        self._failed_said = False
        budget, exp = settings["budget"], settings["experiment"]
        self.n, self.max_failed = int(budget["n_trials"]), int(budget["max_failed"])
        self.reps, self.folds = int(budget["reproductions"]), int(exp["num_folds"])

    @property
    def data(self):
        from dmlbench.protocols.mlrc.objective import FoldData

        if self._data is None:
            self._data = FoldData(self.dataset_for(self.settings["config"]), self.folds)
        return self._data

    def items(self) -> list[str]:
        from dmlbench.protocols.mlrc.items import final_items

        return final_items(self.reps, self.folds)

    def work(self) -> Work:
        """The study's phase, whether a unit can be taken now, and its remaining fits."""
        from dmlbench.protocols.mlrc.items import REPORT_ATTR, ensure_items, item_table
        from dmlbench.protocols.mlrc.worker import _budget_taken, _stop_reason, count_states

        trials = self.study.get_trials(deepcopy=False)
        states = count_states(trials)
        if _stop_reason(trials, states, 0, self.n, self.max_failed, None) is None:
            finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
            left = (self.n - finished + self.reps) * self.folds
            return Work("search", not _budget_taken(states, self.n), left)
        if states.get("COMPLETE", 0) == 0:
            return Work("failed", False, 0)
        ensure_items(self.final, self.items())
        table = item_table(self.final, self.items())
        if table.missing:
            if not self._failed_said:
                self.log(f"{self.name}: FAILED (reproductions {sorted(table.missing)} failed "
                         "on every attempt; see the log above)")
                self._failed_said = True
            return Work("failed", False, 0)
        if table.open:   # remaining fits: the open fold items (at least 1 while any is open)
            fits = sum("/fold-" in i for i in table.open)
            return Work("reproductions", bool(table.waiting), max(1, fits))
        if REPORT_ATTR not in self.final.user_attrs:
            return Work("report", True, 0)
        return Work("done", False, 0)

    def do(self, phase: str, summary: SuiteWorkerSummary) -> None:
        """Take one unit of `phase` work of this study."""
        if phase == "search":
            from dmlbench.protocols.mlrc.worker import one_trial, study_objective

            if self._objective is None:
                self._objective = study_objective(self.name, self.st, self.settings,
                                                  threads=self.threads, data=self.data,
                                                  log=self.log)
            number = one_trial(*self._objective, self.n, self.log)
            if number is not None:
                summary.trials.append((self.name, number))
        elif phase == "reproductions":
            from dmlbench.protocols.mlrc.final import FinalEvaluation
            from dmlbench.protocols.mlrc.items import reproduction_runner, take_item

            fe = FinalEvaluation.of(self.study, self.settings, self.data, self.ps.out_dir,
                                    storage_display=self.st.display, log=self.log)
            try:
                item = take_item(self.final, reproduction_runner(fe), self.log)
            except Exception as e:   # the item is closed as FAIL; retried up to 3 times
                self._failure("a reproduction", e)
                return
            if item is not None:
                summary.items.append((self.name, item))
        else:
            from dmlbench.protocols.mlrc.items import skip_leftover_copies

            skip_leftover_copies(self.final, self.log)
            try:
                if self.report():
                    summary.reports.append(self.name)
            except Exception as e:   # the suite goes on; `dmlbench importance` redoes it
                self._failure("the importance report", e)
                self.final.set_user_attr(REPORT_ATTR, f"failed: {type(e).__name__}: {e}")

    def _failure(self, what: str, e: Exception) -> None:
        import traceback

        self.log(f"{self.name}: {what} FAILED ({type(e).__name__}: {e})")
        logger.warning("%s: traceback of the failure:\n%s", self.name,
                       traceback.format_exc().rstrip())

    def report(self) -> bool:
        """Write the study's importance report once (under a lock); whether this worker did."""
        from dmlbench.bench.suite.runner import attach_importance_report
        from dmlbench.protocols.mlrc.items import REPORT_ATTR
        from dmlbench.results.importance import write_importance_report

        root = Path(self.ps.out_dir) / self.name
        try:
            with file_lock(root / ".report.lock"):
                if REPORT_ATTR in self.final.user_attrs:
                    return False
                paths = write_importance_report(self.study, root / "importance")
                attach_importance_report(self.study, paths, root / "artifacts")
                self.final.set_user_attr(REPORT_ATTR, str(paths["markdown"]))
                self.log(f"{self.name}: importance report {paths['markdown']}")
                return True
        except RunHeld:
            return False

    def fail_stale(self) -> None:
        from dmlbench.protocols.mlrc.items import fail_stale

        fail_stale(self.study)
        fail_stale(self.final)


def create_studies(studies: list[Any], st: Any, suite_name: str) -> list[dict[str, Any]]:
    """Create (or check) every planned study in the storage, as `dmlbench suite` names them;
    the stored settings of each."""
    from dmlbench.protocols.mlrc import build_settings, create_or_check_study, study_settings

    out = []
    for ps in studies:
        name, settings = build_settings(ps.cfg, ps.opts, ps.out_dir, suite_name)
        assert name == ps.study, (name, ps.study)
        study = create_or_check_study(name, st, settings, checked=("experiment", "budget"))
        out.append(study_settings(study))
    return out


def plan_suite_studies(suite_name: str, storage: str, *, overrides: list[str] | None = None,
                       out_dir: str | None = None, smoke: bool = False
                       ) -> tuple[dict[str, Any], list[Any], Path, Path, Any, list[dict]]:
    """(suite, planned studies, out dir, MLRC out dir, opened storage, stored settings): the suite's
    MLRC studies created in `storage`; UserError for a suite without an MLRC part."""
    from dmlbench.bench.suite.runner import prepare
    from dmlbench.protocols.mlrc import open_storage

    suite, out, _, studies, mout = prepare(suite_name, overrides, out_dir,
                                         search={"storage": storage}, smoke=smoke)
    if not studies:
        raise UserError(f"suite {suite['name']!r} has no MLRC studies for a suite worker; run "
                        f"it with `dmlbench suite {suite_name}`")
    opts = studies[0].opts
    st = open_storage(storage, heartbeat_interval=opts.heartbeat_interval,
                      grace_period=opts.grace_period)
    return suite, studies, out, mout, st, create_studies(studies, st, suite["name"])


def run_suite_worker(suite_name: str, storage: str, *, overrides: list[str] | None = None,
                     out_dir: str | None = None, smoke: bool = False,
                     threads: int | None = None, poll_s: float = 1.0,
                     log: Callable[[str], None] | None = None) -> SuiteWorkerSummary:
    """Serve every MLRC study of a suite until nothing is left (see the module docstring)."""
    from dmlbench.bench.data import DatasetPool
    from dmlbench.protocols.mlrc.worker import requeue_interrupted

    log = log or logger.info
    t0 = time.perf_counter()
    suite, studies, out, mout, st, settings = plan_suite_studies(
        suite_name, storage, overrides=overrides, out_dir=out_dir, smoke=smoke)
    if smoke and threads is None:
        threads = 1
    dataset_for = DatasetPool()   # each dataset loaded once for all its runs

    works = [StudyWork(ps, st, s, dataset_for, threads, log) for ps, s in zip(studies, settings)]
    for w in works:
        requeue_interrupted(w.study)
        requeue_interrupted(w.final)
    log(f"suite worker on {suite['name']}: {len(works)} studies in {st.display}")
    summary = SuiteWorkerSummary()
    # ties between studies broken in an order of this worker's own, so that workers starting
    # together begin on different studies rather than race for one study's trials
    order = random.Random(os.getpid()).sample(range(len(works)), len(works))
    spread = {w.name: i for w, i in zip(works, order)}
    while True:
        state = {w.name: w.work() for w in works}
        ready = [w for w in works if state[w.name].available]
        if ready:
            w = min(ready, key=lambda w: (-state[w.name].remaining_fits,
                                          PHASES.index(state[w.name].phase), spread[w.name]))
            w.do(state[w.name].phase, summary)
            continue
        if all(s.phase in ("done", "failed") for s in state.values()):
            break
        t_idle = time.perf_counter()
        for w in works:
            w.fail_stale()
        time.sleep(poll_s)
        summary.idle_s += time.perf_counter() - t_idle
    summary.states = {name: s.phase for name, s in state.items()}
    write_suite_tables(suite, studies, out, mout, log)
    summary.wall_s = time.perf_counter() - t0
    log(f"suite worker done: {len(summary.trials)} trials, {len(summary.items)} final items, "
        f"{len(summary.reports)} reports in {summary.wall_s:.0f} s")
    return summary


def write_suite_tables(suite: dict[str, Any], studies: list[Any], out: Path, mout: Path,
                       log: Callable[[str], None]) -> dict[str, Any]:
    """The suite's MLRC manifest, tables and HTML report (idempotent; serialised by a lock)."""
    from dmlbench.bench.records import write_manifest
    from dmlbench.bench.suite.published import load_published
    from dmlbench.bench.suite.schema import mlrc_part
    from dmlbench.results.html import write_html_report
    from dmlbench.results.tables import write_tables

    part, _ = mlrc_part(suite, mout)
    report = (part or {}).get("report") or {}
    published = load_published(suite["published"]) if suite.get("published") else None
    with file_lock(mout / ".suite-report.lock", wait=True):
        write_manifest(mout, [ps.study for ps in studies], suite["name"])
        if not any(mout.rglob("record.json")):
            return {}
        tables = write_tables(mout, which=report.get("which", "best"),
                              ci=report.get("ci", True), published=published)
        html = write_html_report([mout], out / "report.html", published=published,
                                 which=report.get("which", "best"))
    log(f"suite tables in {mout}; HTML report {html}")
    return tables
