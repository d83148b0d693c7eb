"""Run records: one JSON file per run, written atomically.

A record is a plain dict (schema 1):

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
     "created": ISO-8601 str}

Metric keys are those of `bench.evaluate.compute_metrics` (precision_at_1, r_precision,
mean_average_precision_at_r, recall_at_K, nmi, f1), values in [0, 1].
MLRC records (protocol "mlrc") put the final test evaluation in "final" and add
"mlrc": {"separated": {...}, "concatenated": {...}, ...}.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

SCHEMA = 1


_UMASK: int | None = None


def _file_mode() -> int:
    """0o666 less the process umask: the mode `open()` would give a new file."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def atomic_write_bytes(path: "str | os.PathLike[str]", data: bytes) -> None:
    """Write `data` to `path` via a uniquely named temp file in the same folder and an atomic
    rename; the file gets the mode a plain `open()` would give it (the umask is respected).
    Nothing is left behind on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: "str | os.PathLike[str]", text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically; see `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_record(path: "str | os.PathLike[str]", record: dict[str, Any]) -> None:
    """Atomically write a run record as JSON."""
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=_jsonable) + "\n")


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


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes a run's result: the config after defaults without execution
    details, the method's parameters with the method's defaults filled in, and the versions
    of the code that computes it."""
    import copy
    import importlib.metadata as md

    from methods import resolve_params

    c = copy.deepcopy(cfg)
    for sec, keys in EXECUTION_KEYS.items():
        for k in keys:
            c.get(sec, {}).pop(k, None)
    for (sec, k), neutral in NEUTRAL_DEFAULTS.items():
        if c.get(sec, {}).get(k, neutral) == neutral:
            c.get(sec, {}).pop(k, None)
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
