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


def atomic_write_text(path: "str | os.PathLike[str]", text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_record(path: "str | os.PathLike[str]", record: dict[str, Any]) -> None:
    """Atomically write a run record as JSON."""
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=_jsonable) + "\n")


def read_records(runs_dir: "str | os.PathLike[str]") -> Iterator[dict[str, Any]]:
    """Every `*.json` record under `runs_dir` (recursively) with a `schema` key."""
    for p in sorted(Path(runs_dir).rglob("*.json")):
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


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
