"""Run records: one JSON file per run, written atomically; the identity (fingerprint) of a
run's result; the suite manifest; versions and git commit. Atomic writes, the output folder
check and the per-run OS locks that let several processes share one output folder are in
`bench.files` and re-exported here.

A record is a `RunRecord` (typed; written and read here; `to_dict` gives the JSON form,
schema 1), the same for every protocol:

    {"schema": 1, "run_id": str, "status": "completed" | "diverged" | "failed",
     "suite": str | None, "method": str, "base_method": str | None,
     "dataset": str, "protocol": "conventional" | "mlrc", "seed": int,
     "config": {...},                          # the full validated config
     "evaluations": [{"epoch": int, "iteration": int, "metrics": {key: float}}, ...],
     "final": {"epoch": int, "metrics": {...}} | None,   # the last evaluation
     "best":  {"epoch": int, "metrics": {...}, "selected_by": str,
               "selection_set": "test" | "val"} | None,
     "wall_time_s": float, "images_per_s": float, "train_time_s": float,
     "versions": {package: version}, "git_commit": str | None, "error": str | None,
     "created": ISO-8601 str,
     "warnings": [str, ...],                   # what the data makes odd, said before training
     "determinism": {"threads": int, "device": str, "deterministic": bool}}
                                               # what the numbers reproduce under

Metric keys are those of `bench.evaluate.compute_metrics` (precision_at_1, r_precision,
mean_average_precision_at_r, recall_at_K, nmi, f1), values in [0, 1].
MLRC records (protocol "mlrc") put the final test evaluation in "final" and add
"mlrc": {"separated": {...}, "concatenated": {...}, ...}.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from dmlbench.bench.files import (LOCK_FILE, RunHeld, atomic_write_bytes, atomic_write_text,
                                  check_output_dir, disk_error, file_lock, run_lock)

__all__ = ["SCHEMA", "RunRecord", "Status", "write_record", "read_run_records", "read_records",
           "MANIFEST", "write_manifest", "versions", "git_commit", "RESULT_VERSION",
           "EXTENDABLE_KEYS", "result_config", "identity", "checkpoint_identity", "fingerprint",
           "describe_difference", "now_iso",
           # from bench.files, kept importable from here
           "atomic_write_bytes", "atomic_write_text", "disk_error", "check_output_dir",
           "LOCK_FILE", "RunHeld", "file_lock", "run_lock"]

SCHEMA = 1


def write_record(path: "str | os.PathLike[str]", record: dict[str, Any]) -> None:
    """Atomically write a run record as JSON."""
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=_jsonable) + "\n")


class Status(str, enum.Enum):
    """How a run ended: completed, diverged (a non-finite loss or embeddings: a result, not an
    error), or failed (an exception; retried by a re-run)."""

    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        """A finished run is not run again (a diverged one would diverge again)."""
        return self in (Status.COMPLETED, Status.DIVERGED)


@dataclasses.dataclass
class RunRecord:
    """The record of one run, conventional or an MLRC reproduction: its identity (config,
    fingerprint, seed, method and its base), its outcome (status, evaluations, best, final)
    and where it came from (versions, git commit, times). Protocol-specific fields (the MLRC
    block, timing, optimizer groups, warnings, determinism, split sizes) live in `extra` and
    are written at the top level of the JSON."""

    run_id: str
    method: str
    base_method: str | None
    dataset: str
    protocol: str
    seed: int
    config: dict[str, Any]
    suite: str | None = None
    fingerprint: str | None = None
    status: Status = Status.FAILED
    error: str | None = None
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    final: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    images_per_s: float = 0.0
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    git_commit: str | None = None
    created: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def start(cls, cfg: dict[str, Any], *, run_id: str, suite: str | None = None
              ) -> "RunRecord":
        """A record for a run of `cfg` about to start (validates the method name)."""
        from dmlbench.methods import get_method

        spec = get_method(cfg["method"]["name"])
        return cls(run_id=run_id, method=cfg["run"]["name"] or spec.name,
                   base_method=spec.base, dataset=cfg["dataset"]["name"],
                   protocol=cfg["run"]["protocol"], seed=int(cfg["run"]["seed"]), config=cfg,
                   suite=suite, fingerprint=fingerprint(cfg), versions=versions(),
                   git_commit=git_commit(), created=now_iso())

    def update(self, **fields: Any) -> "RunRecord":
        """Set fields by name; names that are not fields go to `extra`."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in fields.items():
            if key == "status":
                value = Status(value)
            if key in names and key != "extra":
                setattr(self, key, value)
            else:
                self.extra[key] = value
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (schema 1): fields and `extra` at the top level."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra"}
        out["status"] = self.status.value
        return {"schema": SCHEMA, **self.extra, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        """A record from its JSON form (unknown keys go to `extra`; `_path` is dropped)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names | {"schema", "_path"}}
        known["status"] = Status(known.get("status", "failed"))
        return cls(**known, extra=extra)

    def write(self, path: "str | os.PathLike[str]") -> None:
        """Atomically write the record as JSON to `path`."""
        write_record(path, self.to_dict())


def read_run_records(runs_dir: "str | os.PathLike[str]") -> Iterator[RunRecord]:
    """`read_records` as typed `RunRecord`s."""
    for data in read_records(runs_dir):
        yield RunRecord.from_dict(data)


MANIFEST = "suite-manifest.json"


def write_manifest(runs_dir: "str | os.PathLike[str]", folders: list[str],
                   suite: str | None = None) -> None:
    """Name the sub-folders of `runs_dir` that the suite run last planned; `read_records`
    then reads only those, so runs of an earlier, different plan (other overrides, other
    parameters) never show up as stale rows."""
    atomic_write_text(Path(runs_dir) / MANIFEST, json.dumps(
        {"suite": suite, "folders": list(dict.fromkeys(folders))}, indent=1) + "\n")


def _planned(runs_dir: Path) -> set[str] | None:
    try:
        data = json.loads((runs_dir / MANIFEST).read_text(encoding="utf-8"))
        return set(data["folders"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_records(runs_dir: "str | os.PathLike[str]") -> Iterator[dict[str, Any]]:
    """Every `*.json` record under `runs_dir` (recursively) with a `schema` key; where a suite
    manifest names the planned sub-folders, only records under those."""
    planned = _planned(Path(runs_dir))
    for p in sorted(Path(runs_dir).rglob("*.json")):
        if planned is not None and p.relative_to(runs_dir).parts[0] not in planned:
            continue
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("schema") == SCHEMA:
            rec.setdefault("_path", str(p))
            yield rec


def _jsonable(o: Any) -> Any:
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, RunRecord):
        return o.to_dict()
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("dmlbench", "torch", "torchvision", "pytorch-metric-learning", "optuna",
                "faiss-cpu", "faiss-gpu", "numpy", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the source tree dmlbench runs from, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return commit + ("-dirty" if dirty else "")


# Config keys that change how a run executes, not what it computes: not part of its identity.
EXECUTION_KEYS: dict[str, tuple[str, ...]] = {
    "dataset": ("root",),
    "train": ("progress", "threads", "device", "num_workers", "log_every", "trackers"),
    "eval": ("batch_size",),
    "run": ("output", "name"),
}
# Keys added after runs were recorded whose value here computes exactly what a config without
# the key computed: left out of the identity at that value, so earlier runs keep their
# fingerprints (and resume).
NEUTRAL_DEFAULTS: dict[tuple[str, str], Any] = {("dataset", "cache"): "none"}
# Bumped when a change of dmlbench changes what an unchanged config computes.
RESULT_VERSION = 2
# Keys that only decide when a fit stops: a checkpoint may be continued under other values.
EXTENDABLE_KEYS = (("train", "epochs"), ("train", "patience"))


def result_config(cfg: dict[str, Any],
                  execution_keys: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """A copy of `cfg` without its execution keys (default `EXECUTION_KEYS`) and without the
    keys that sit at their neutral default (`NEUTRAL_DEFAULTS`): what changes the result."""
    import copy

    c = copy.deepcopy(cfg)
    for sec, keys in (execution_keys or EXECUTION_KEYS).items():
        for k in keys:
            c.get(sec, {}).pop(k, None)
    for (sec, k), neutral in NEUTRAL_DEFAULTS.items():
        if c.get(sec, {}).get(k, neutral) == neutral:
            c.get(sec, {}).pop(k, None)
    return c


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes a run's result: the config after defaults without execution
    details, the method's parameters with the method's defaults filled in, and the versions
    of the code that computes it."""
    import importlib.metadata as md

    from dmlbench.methods import resolve_params

    c = result_config(cfg)
    try:
        c["method"]["params"] = resolve_params(c["method"]["name"], c["method"]["params"])
    except Exception:  # an unregistered method: its own check reports it
        pass

    def minor(pkg: str) -> str | None:
        try:
            return ".".join(md.version(pkg).split(".")[:2])
        except md.PackageNotFoundError:
            return None

    code = {"result_version": RESULT_VERSION, "torch": minor("torch"),
            "pytorch-metric-learning": minor("pytorch-metric-learning")}
    return json.loads(json.dumps({"config": c, "code": code}, sort_keys=True, default=str))


def checkpoint_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The identity a checkpoint must match to be resumed: `identity` less the keys that only
    decide when to stop (train.epochs unless a cosine schedule depends on it)."""
    ident = identity(cfg)
    for sec, key in EXTENDABLE_KEYS:
        if (sec, key) == ("train", "epochs") and cfg["train"]["schedule"] == "cosine":
            continue
        ident["config"][sec].pop(key, None)
    return ident


def fingerprint(cfg: dict[str, Any]) -> str:
    """A short hash of `identity(cfg)`: two configs with one fingerprint compute one result."""
    import hashlib

    text = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def describe_difference(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """`a.b: old -> new, ...` for the keys whose values differ (at most `limit` shown)."""
    a, b = _flatten(old.get("config", old)), _flatten(new.get("config", new))
    ca, cb = _flatten(old.get("code", {})), _flatten(new.get("code", {}))
    diffs = [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    diffs += [f"code {k}: {ca.get(k)!r} -> {cb.get(k)!r}"
              for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)]
    if not diffs:
        return "unknown settings"
    more = f", and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
