"""Optuna studies shared by any number of workers: storage URLs, heartbeats, seeded samplers,
and a worker loop that ends a study with exactly `n_trials` finished trials.

Storage URLs (`open_storage`):
- `sqlite:///relative/file.db`, `sqlite:////absolute/file.db`, or a plain path ending in `.db`,
  `.sqlite` or `.sqlite3`: a SQLite file (the default; meant for one process, works for a few).
- `journal:///absolute/file.log`, `journal://relative/file.log`, or a plain path ending in
  `.log` or `.journal`: Optuna's JournalStorage over a file (several processes on one machine,
  or on a shared file system with working `link()`).
- any other SQLAlchemy URL (`postgresql://user:password@host:5432/db`,
  `mysql+pymysql://...`): several machines. A driver-less `postgresql://` URL uses psycopg2
  when psycopg (3), SQLAlchemy 2.1's default, is not installed.
A storage that cannot be opened raises UserError (the CLI prints one line, exit 2).

Dead workers. RDBStorage (SQLite, PostgreSQL, MySQL) has Optuna's heartbeat: a thread records
the time of a running trial every `heartbeat_interval` seconds in the database. Optuna 5.0's
JournalStorage has none, so `HeartbeatJournalStorage` adds the same mechanism: the heartbeat is
the trial system attribute `dmlbench:heartbeat` (wall-clock seconds, appended to the journal),
and a RUNNING trial whose last heartbeat (or start, whichever is later) is older than
`grace_period` is stale; this compares clocks of the machines sharing the file, so they must
agree to well within the grace period. In both cases, before each new trial and while waiting
for others to finish, a worker fails the stale trials of the study and
`RetryHeartbeatStaleTrialCallback` re-queues each as a WAITING trial with the same parameters,
user attributes and system attributes (`failed_trial` = the number of the dead trial).

Budget. The worker loop counts COMPLETE and PRUNED trials as finished: every worker stops once
`n_trials` are finished. Before a worker starts a new trial it checks that the finished, running
and queued trials leave room for it, and a trial that finds, once created, that trials created
before it already fill the budget (two workers raced) is closed as FAIL with the user attribute
`skipped` without running, so the study ends with exactly `n_trials` finished trials. FAIL
trials (diverged, skipped, or stale) do not count; a study stops early when `max_failed` trials
have failed with a `fail_reason`.

Sampling is reproducible per trial: the sampler (TPE, GP, random) is rebuilt before each trial
with a seed derived from the study seed and the trial number, so two workers never draw from
the same random stream, and the trials of a study do not depend on how many workers ran it
(up to what each trial's sampler saw finished). The grid sampler is seeded once: trial N takes
cell N of the grid shuffled by the study seed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from dmlbench.bench.errors import UserError
from dmlbench.bench.optuna_internals import (BaseHeartbeat, fresh_trial, stale_trial_ids,
                                     trial_id)
from dmlbench.bench.records import file_lock

SETTINGS_ATTR = "dmlbench"
HEARTBEAT_KEY = "dmlbench:heartbeat"
SAMPLERS = ("tpe", "gp", "random", "grid")
PRUNERS = ("none", "median")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)



def quiet_optuna() -> None:
    """Optuna's own trial logging off and its experimental-feature warnings silenced, for the
    command line (which logs trials itself). Library code never calls this: importing
    dmlbench changes no global state."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class TrialFailed(Exception):
    """A trial that ends as FAIL with a recorded reason; the study goes on."""


class TrialSkipped(TrialFailed):
    """A trial created after the budget was already taken by other workers."""


# ----------------------------------------------------------------------------- storage


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """JournalStorage with heartbeats kept as a trial system attribute (see module docstring)."""

    def __init__(self, backend, *, heartbeat_interval: int | None = None,
                 grace_period: int | None = None,
                 heartbeat_stale_trial_callback: Callable | None = None) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker judged this trial dead; it was re-queued

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period or 2 * self.heartbeat_interval
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            started = t.datetime_start.timestamp() if t.datetime_start else 0.0
            last = max(float(t.system_attrs.get(HEARTBEAT_KEY, 0.0)), started)
            if now - last > grace:
                stale.append(trial_id(t))
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.heartbeat_stale_trial_callback


@dataclass
class Storage:
    """An opened storage and how it was named."""

    url: str                     # as given (normalised), for messages and records
    kind: str                    # "sqlite" | "journal" | "rdb"
    storage: BaseStorage
    path: Path | None = None     # the file, for sqlite and journal

    @property
    def display(self) -> str:
        return redact(self.url)


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def parse_storage_url(url: str) -> tuple[str, str]:
    """(kind, target): kind "sqlite" | "journal" | "rdb"; target a file path or a SQLAlchemy URL."""
    text = str(url).strip()
    if not text:
        raise UserError("empty storage URL; use e.g. sqlite:///runs/studies.db, "
                        "journal:///path/studies.log or postgresql://user@host/db")
    if text.startswith("journal://"):
        path = text[len("journal://"):]
        if not path:
            raise UserError(f"storage URL {text!r} names no file; use journal:///abs/path.log "
                            "or journal://relative/path.log")
        return "journal", path
    if text.startswith("sqlite:///"):
        return "sqlite", text[len("sqlite:///"):]
    if "://" in text:
        return "rdb", text
    low = text.lower()
    if low.endswith((".log", ".journal")):
        return "journal", text
    if low.endswith((".db", ".sqlite", ".sqlite3")):
        return "sqlite", text
    raise UserError(f"cannot tell what storage {text!r} is; use sqlite:///FILE.db (or a path "
                    "ending in .db), journal:///FILE.log (or a path ending in .log), or a "
                    "SQLAlchemy URL such as postgresql://user:password@host:5432/db")


def open_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int = 40,
                 max_retry: int | None = 3, create: bool = True) -> Storage:
    """Open (creating files and tables as needed) the storage at `url`, with heartbeats on;
    with `create=False` a SQLite or journal file that does not exist raises UserError (for
    commands that read studies, which must not leave an empty storage behind)."""
    if not create:
        check_exists(url)
    kind, target = parse_storage_url(url)
    with contextlib.ExitStack() as stack:
        if kind == "sqlite" and Path(target).parent.is_dir():
            # Optuna creates a SQLite file's tables (and its alembic_version row) on first
            # open; two processes doing that at once fail (UNIQUE constraint failed):
            # serialise opening with a lock file beside the database
            try:
                stack.enter_context(file_lock(f"{target}.lock", wait=True))
            except UserError:   # a folder we cannot write in: open it unserialised
                pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _open_storage(url, kind, target, heartbeat_interval, grace_period, max_retry)


def check_exists(url: str) -> None:
    """UserError if `url` names a SQLite or journal file that does not exist (a database
    server's storage is not checked here)."""
    kind, target = parse_storage_url(url)
    if kind in ("sqlite", "journal") and not Path(target).is_file():
        raise UserError(f"storage {redact(str(url))} does not exist (no file {target}); check "
                        "the path, or create a study there with `dmlbench mlrc CONFIG` or "
                        "`dmlbench suite NAME`")


def _open_storage(url: str, kind: str, target: str, heartbeat_interval: int, grace_period: int,
                  max_retry: int | None) -> Storage:
    retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    hb = dict(heartbeat_interval=int(heartbeat_interval), grace_period=int(grace_period),
              heartbeat_stale_trial_callback=retry)
    shown = redact(str(url))
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        path = Path(target)
        if not path.parent.is_dir():
            raise UserError(f"cannot open storage {shown}: folder {path.parent} does not exist")
        try:
            backend = JournalFileBackend(str(path))
            storage = HeartbeatJournalStorage(backend, **hb)
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise UserError(f"cannot open storage {shown}: {_first_line(e)}") from None
        return Storage(f"journal://{target}", kind, storage, path)
    if kind == "sqlite":
        path = Path(target)
        if not path.parent.is_dir():
            raise UserError(f"cannot open storage {shown}: folder {path.parent} does not exist")
        rdb_url = f"sqlite:///{target}"
        engine_kwargs = {"creator": _sqlite_creator(str(path))}
    else:
        rdb_url = _with_installed_driver(target)
        engine_kwargs = {}
        if rdb_url.startswith("postgresql"):
            engine_kwargs = {"connect_args": {"connect_timeout": 10}}
        path = None
    try:
        storage = RDBStorage(rdb_url, engine_kwargs=engine_kwargs, **hb)
    except ImportError as e:
        raise UserError(f"cannot open storage {shown}: the database driver is not installed "
                        f"({_first_line(e)}); for PostgreSQL: pip install psycopg2-binary") from None
    except Exception as e:  # sqlalchemy / driver errors: unreachable, auth, bad URL
        raise UserError(f"cannot open storage {shown}: {_first_line(e)}") from None
    return Storage(rdb_url, kind, storage, path)


def _sqlite_creator(path: str) -> Callable[[], Any]:
    """Connections in WAL mode with synchronous=NORMAL: a commit is a write to the log, not
    an fsync of the database (the file stays consistent; several readers and one writer may
    work at once)."""
    import sqlite3

    def connect():
        conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return connect


def _with_installed_driver(url: str) -> str:
    """`postgresql://` means psycopg (3) to SQLAlchemy 2.1; use psycopg2 when only it is there."""
    import importlib.util

    if url.startswith(("postgresql://", "postgres://")):
        if importlib.util.find_spec("psycopg") is None and \
                importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
        if url.startswith("postgres://"):
            return "postgresql://" + url.split("://", 1)[1]
    return url


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    line = text.splitlines()[0].strip() if text else type(e).__name__
    return f"{type(getattr(e, 'orig', None) or e).__name__}: {line}"


def set_heartbeat(st: Storage, interval: int, grace: int) -> None:
    """Change the heartbeat interval and grace period of an opened storage."""
    st.storage.heartbeat_interval = int(interval)
    st.storage.grace_period = int(grace)


def stale_trials(study: optuna.Study, st: Storage) -> list[FrozenTrial]:
    """RUNNING trials of `study` whose worker sent no heartbeat for longer than the grace
    period (the study's own when dmlbench created it): their worker is gone, and the next
    worker on the study re-queues them."""
    ex = (study.user_attrs.get(SETTINGS_ATTR) or {}).get("execution") or {}
    if "heartbeat_interval" in ex and "grace_period" in ex:
        set_heartbeat(st, ex["heartbeat_interval"], ex["grace_period"])
    if st.storage.get_heartbeat_interval() is None:
        return []
    ids = stale_trial_ids(st.storage, study)
    return [t for t in study.get_trials(deepcopy=False) if trial_id(t) in ids]


def grace_period(st: Storage) -> int:
    """The grace period (seconds) the opened storage judges heartbeats by."""
    st_ = st.storage
    return int(st_.grace_period or 2 * st_.heartbeat_interval)


# ----------------------------------------------------------------------------- studies


def settings_hash(defining: dict[str, Any], n: int = 10) -> str:
    """Short stable hash of a JSON-able dict."""
    text = json.dumps(defining, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def list_study_names(st: Storage) -> list[str]:
    try:
        return sorted(s.study_name for s in st.storage.get_all_studies())
    except Exception as e:
        raise UserError(f"cannot read studies from {st.display}: {_first_line(e)}") from None


def load_study(name: str, st: Storage, sampler: BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """An existing study; UserError naming the studies there if it does not exist."""
    try:
        return optuna.load_study(study_name=name, storage=st.storage, sampler=sampler,
                                 pruner=pruner)
    except KeyError:
        names = list_study_names(st)
        raise UserError(f"no study named {name!r} in {st.display}; studies there: "
                        f"{', '.join(names) or '(none)'}") from None


def study_settings(study: optuna.Study) -> dict[str, Any]:
    """The dmlbench settings stored with a study at creation."""
    attrs = study.user_attrs
    if SETTINGS_ATTR not in attrs:
        raise UserError(f"study {study.study_name!r} was not created by dmlbench (it has no "
                        f"{SETTINGS_ATTR!r} user attribute); create it with `dmlbench suite` or "
                        "`dmlbench mlrc`")
    return attrs[SETTINGS_ATTR]


def create_or_check_study(name: str, st: Storage, settings: dict[str, Any],
                          checked: tuple[str, ...]) -> optuna.Study:
    """Create the study with `settings` as its user attribute, or load it and check that the
    keys `checked` of its stored settings equal ours (UserError naming the first conflicts)."""
    try:
        study = optuna.create_study(study_name=name, storage=st.storage, direction="maximize",
                                    load_if_exists=True)
    except Exception as e:
        raise UserError(f"cannot create study {name!r} in {st.display}: {_first_line(e)}") \
            from None
    attrs = study.user_attrs
    if SETTINGS_ATTR not in attrs:
        if study.trials:
            raise UserError(f"study {name!r} in {st.display} holds trials but no dmlbench "
                            "settings; name another study (--study NAME)")
        study.set_user_attr(SETTINGS_ATTR, settings)
        return study
    stored = attrs[SETTINGS_ATTR]
    diffs = [d for k in checked for d in diff_paths(stored.get(k), settings.get(k), k)]
    if diffs:
        shown = "; ".join(f"{path}: stored {_short(a)}, asked {_short(b)}"
                          for path, a, b in diffs[:3])
        raise UserError(f"study {name!r} in {st.display} was created with other settings "
                        f"({shown}); re-run with the same settings, or name a new study "
                        "(--study NAME)")
    return study


def diff_paths(a: Any, b: Any, path: str) -> list[tuple[str, Any, Any]]:
    """(dotted path, a's value, b's value) of each leaf where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += diff_paths(a.get(k), b.get(k), f"{path}.{k}")
        return out
    return [] if _canon(a) == _canon(b) else [(path, a, b)]


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _short(v: Any, n: int = 80) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= n else text[:n - 3] + "..."


# ----------------------------------------------------------------------------- search space


def distribution(spec: Any, name: str = "?") -> BaseDistribution:
    """An Optuna distribution from a registry search-space entry
    ("float"|"log"|"int", low, high) or ("categorical", [choices])."""
    if not isinstance(spec, (list, tuple)) or not spec:
        raise UserError(f"search space entry {name}={spec!r} must be [float|log|int, low, high] "
                        "or [categorical, [choices]]")
    kind = spec[0]
    try:
        if kind == "categorical":
            (choices,) = spec[1:]
            return CategoricalDistribution(list(choices))
        lo, hi = spec[1:]
        if kind == "float":
            return FloatDistribution(float(lo), float(hi))
        if kind == "log":
            return FloatDistribution(float(lo), float(hi), log=True)
        if kind == "int":
            if float(lo) != int(lo) or float(hi) != int(hi):
                raise ValueError("int bounds must be integers")
            return IntDistribution(int(lo), int(hi))
    except (TypeError, ValueError) as e:
        raise UserError(f"search space entry {name}={list(spec)!r} is invalid ({e}); use "
                        "[float|log|int, low, high] with low <= high (low > 0 for log) or "
                        "[categorical, [choices]]") from None
    raise UserError(f"search space entry {name}={list(spec)!r} has unknown kind {kind!r}; "
                    "valid kinds: float, log, int, categorical")


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask `trial` for parameter `name` from `dist` (a re-queued trial returns its value)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def grid_values(dist: BaseDistribution, points: int) -> list[Any]:
    """The grid of one parameter for GridSampler: categorical choices, or `points` values
    evenly spaced (log-spaced for log scales; distinct integers for ints)."""
    import numpy as np

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    lo, hi = dist.low, dist.high
    if points <= 1 or lo == hi:
        return [lo]
    vals = (np.geomspace(lo, hi, points) if getattr(dist, "log", False)
            else np.linspace(lo, hi, points))
    if isinstance(dist, IntDistribution):
        return sorted({int(round(v)) for v in vals})
    return [float(v) for v in vals]


# ----------------------------------------------------------------------------- samplers


def _seed_for(seed: int, number: int) -> int:
    h = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(h[:4], "little")


class PerTrialSeededSampler(BaseSampler):
    """Rebuilds the inner sampler before each trial, seeded by (study seed, trial number);
    the grid sampler is built once (its shuffled grid order comes from the study seed and trial
    N evaluates cell N, so workers never collide)."""

    def __init__(self, kind: str, seed: int, space: dict[str, BaseDistribution],
                 grid_points: int = 3) -> None:
        if kind not in SAMPLERS:
            raise UserError(f"unknown sampler {kind!r}; valid samplers: {', '.join(SAMPLERS)}")
        self.kind = kind
        self.seed = int(seed)
        self.space = space
        self.grid_points = grid_points
        self._inner = self._make(self.seed)

    def _make(self, seed: int) -> BaseSampler:
        s = optuna.samplers
        if self.kind == "tpe":
            return s.TPESampler(seed=seed)
        if self.kind == "gp":
            return s.GPSampler(seed=seed)
        if self.kind == "random":
            return s.RandomSampler(seed=seed)
        return s.GridSampler({k: grid_values(d, self.grid_points) for k, d in self.space.items()},
                             seed=seed)

    def grid_size(self) -> int | None:
        if self.kind != "grid":
            return None
        n = 1
        for d in self.space.values():
            n *= len(grid_values(d, self.grid_points))
        return n

    def before_trial(self, study, trial: FrozenTrial) -> None:
        if self.kind != "grid":  # the grid's order is fixed by the study seed; trial N takes cell N
            self._inner = self._make(_seed_for(self.seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_pruner(kind: str) -> optuna.pruners.BasePruner:
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    raise UserError(f"unknown pruner {kind!r}; valid pruners: {', '.join(PRUNERS)}")


# ----------------------------------------------------------------------------- worker loop


@dataclass
class WorkerSummary:
    ran: list[int] = field(default_factory=list)        # trial numbers this worker finished
    wall_s_by_trial: dict[int, float] = field(default_factory=dict)  # ask to tell, seconds
    requeued: list[int] = field(default_factory=list)     # interrupted trials put back in queue
    states: dict[str, int] = field(default_factory=dict)  # the study's trial states at the end
    stopped: str = ""                                      # why the worker stopped
    wall_s: float = 0.0


def worker_label() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def real_failures(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs]


def original_number(study: optuna.Study, trial: optuna.Trial) -> int:
    """The number of the trial this one retries (a re-queued dead trial), else its own."""
    frozen = fresh_trial(study, trial)
    return int(frozen.system_attrs.get("failed_trial", trial.number))


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


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], *,
               n_trials: int, max_failed: int, max_trials: int | None = None,
               poll_s: float = 1.0, log: Callable[[str], None] = print) -> WorkerSummary:
    """Run trials of `study` until `n_trials` are finished (COMPLETE or PRUNED), `max_failed`
    failed with a reason, or this worker ran `max_trials`; wait for other workers' running
    trials (re-queueing dead ones) rather than start trials beyond the budget."""
    summary = WorkerSummary()
    t0 = time.perf_counter()
    me = worker_label()

    def guarded(trial: optuna.Trial) -> float:
        if not admitted(study.get_trials(deepcopy=False), trial.number, n_trials):
            trial.set_user_attr("skipped", f"budget of {n_trials} trials already taken when "
                                f"trial {trial.number} started")
            raise TrialSkipped()
        trial.set_user_attr("worker", me)
        try:
            return objective(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise

    summary.requeued = requeue_interrupted(study)
    while True:
        trials = study.get_trials(deepcopy=False)
        states = count_states(trials)
        finished = sum(states.get(s.name, 0) for s in FINISHED)
        if finished >= n_trials:
            summary.stopped = f"{finished} trials finished"
            break
        failures = real_failures(trials)
        if len(failures) >= max_failed:
            summary.stopped = (f"{len(failures)} trials failed (the study allows "
                               f"{max_failed}); last: {failures[-1].user_attrs['fail_reason']}")
            break
        if max_trials is not None and len(summary.ran) >= max_trials:
            summary.stopped = f"this worker ran its {max_trials} trials"
            break
        waiting = states.get("WAITING", 0)
        occupied = finished + states.get("RUNNING", 0) + waiting
        if occupied >= n_trials and not waiting:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)   # re-queues dead workers' trials
            time.sleep(poll_s)
            continue
        holder: dict[str, int] = {}

        def record(study_: optuna.Study, frozen: FrozenTrial) -> None:
            if "skipped" not in frozen.user_attrs:
                holder["number"] = frozen.number

        t_trial = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(guarded, n_trials=1, catch=(TrialFailed,), callbacks=[record],
                               gc_after_trial=False, show_progress_bar=False)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
            if isinstance(e, ValueError) and not str(e).startswith("Cannot tell a"):
                raise
            # another worker saw no heartbeat from us for the grace period (a stalled machine)
            # and re-queued this trial; the re-queued copy counts, this run is dropped
            log("  a trial of this worker was re-queued by another worker (no heartbeat for "
                "the grace period); its result is dropped")
            continue
        if "number" in holder:
            summary.ran.append(holder["number"])
            summary.wall_s_by_trial[holder["number"]] = time.perf_counter() - t_trial
    summary.states = count_states(study.get_trials(deepcopy=False))
    summary.wall_s = time.perf_counter() - t0
    return summary
