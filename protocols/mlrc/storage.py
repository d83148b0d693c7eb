"""Where the studies of MLRC searches live: storage URLs, heartbeats of running trials, and
creating, loading and checking studies (Optuna's private API stays in bench/optuna_internals.py).

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
user attributes and system attributes (`failed_trial` = the number of the dead trial; see
`original_number`).

A study keeps every setting a worker needs as its user attribute `dmlbench` (`study_settings`);
`create_or_check_study` refuses to continue a study whose stored settings differ from the asked
ones.
"""
from __future__ import annotations

import contextlib
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from dmlbench.bench.errors import UserError
from dmlbench.bench.optuna_internals import (BaseHeartbeat, fresh_trial, stale_trial_ids,
                                             trial_id)
from dmlbench.bench.records import file_lock

SETTINGS_ATTR = "dmlbench"
HEARTBEAT_KEY = "dmlbench:heartbeat"


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



def default_storage(out_dir: "str | Path") -> str:
    """The storage of a study when none is given: the SQLite file OUT/studies.db."""
    return f"sqlite:///{Path(out_dir) / 'studies.db'}"


def original_number(study: optuna.Study, trial: optuna.Trial) -> int:
    """The number of the trial this one retries (a re-queued dead trial), else its own."""
    frozen = fresh_trial(study, trial)
    return int(frozen.system_attrs.get("failed_trial", trial.number))


# ----------------------------------------------------------------------------- studies


def list_study_names(st: Storage, *, companions: bool = False) -> list[str]:
    """The studies of a storage; without `companions`, not the `STUDY/final` studies that hold
    final-evaluation work items (`items`)."""
    try:
        return sorted(s.study_name for s in st.storage.get_all_studies()
                      if companions or not s.study_name.endswith("/final"))
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
