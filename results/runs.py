"""Loading a folder of run records as a DataFrame: one row per completed run with its metrics
(which numbers a record contributes, which runs are left out and in what order rows come: see
`results.tables`)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from dmlbench.bench.errors import UserError
from dmlbench.bench.records import read_records
from dmlbench.results.metric_names import VAL_MAP_R, metric_rank

__all__ = ["ID_COLUMNS", "load_runs", "skipped_summary"]

ID_COLUMNS: tuple[str, ...] = ("method", "base_method", "dataset", "protocol", "seed", "suite")
_SUPERSEDE_KEY = ("method", "dataset", "protocol", "seed", "suite")


def _numbers(metrics: Any) -> dict[str, float] | None:
    if not isinstance(metrics, dict):
        return None
    out = {k: (math.nan if v is None else float(v)) for k, v in metrics.items()
           if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
    return out or None


def _record_metrics(rec: dict[str, Any], which: str) -> dict[str, float] | None:
    if rec.get("protocol") == "mlrc":
        info = rec.get("mlrc") or {}
        conc = info.get("concatenated")
        if isinstance(conc, dict):
            found = _numbers(conc.get("metrics", conc))
            if found:
                val = info.get("best_value")
                if isinstance(val, (int, float)) and not isinstance(val, bool):
                    found[VAL_MAP_R] = float(val)
                return found
    block = rec.get(which)
    return _numbers(block.get("metrics")) if isinstance(block, dict) else None


def _ids(rec: dict[str, Any]) -> dict[str, Any]:
    for key in ("method", "dataset"):
        if not isinstance(rec.get(key), str) or not rec[key]:
            raise UserError(f"run record {rec.get('_path', '?')} has no {key!r}; "
                            "fix or delete that file and run again")
    return {k: rec.get(k) for k in ID_COLUMNS}


def load_runs(runs_dir: "str | os.PathLike[str]", *,
              which: Literal["best", "final"] = "best") -> pd.DataFrame:
    """One row per completed run under `runs_dir`: the ID_COLUMNS plus one column per metric.

    Rows in the suite's declared order (see the module docstring). `df.attrs` holds "which",
    "runs_dir", "skipped" (a list of dicts with the ID_COLUMNS, "status" and "error", one per
    diverged/failed run, or completed run without metrics) and "datasets" (their order).
    """
    if which not in ("best", "final"):
        raise UserError(f"which must be 'best' or 'final', not {which!r}")
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"runs directory {runs_dir} does not exist; run `dmlbench run` or "
                        "`dmlbench suite NAME` first, or pass the folder holding the run records")
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    records = _declared_order(list(read_records(runs_dir)))
    for rec in records:
        ids = _ids(rec)
        status = rec.get("status")
        metrics = _record_metrics(rec, which) if status == "completed" else None
        if metrics is not None:
            rows.append({**ids, **metrics})
        elif status == "completed":
            skipped.append({**ids, "status": "completed",
                            "error": f"record has no {which!r} metrics"})
        else:
            skipped.append({**ids, "status": str(status), "error": rec.get("error") or ""})
    if not rows and not skipped:
        raise UserError(f"no run records under {runs_dir}; "
                        "run `dmlbench run` or `dmlbench suite NAME` first")
    done = {tuple(r[k] for k in _SUPERSEDE_KEY) for r in rows}
    skipped = [s for s in skipped if tuple(s[k] for k in _SUPERSEDE_KEY) not in done]
    if not rows:
        raise UserError(f"no completed runs under {runs_dir}; {skipped_summary(skipped)}")
    df = pd.DataFrame(rows)
    metric_cols = sorted((c for c in df.columns if c not in ID_COLUMNS), key=metric_rank)
    df = df[list(ID_COLUMNS) + metric_cols]
    df.attrs.update(which=which, runs_dir=str(runs_dir), skipped=skipped,
                    datasets=list(dict.fromkeys(r["dataset"] for r in _declared_order(
                        records, datasets_first=True))))
    return df


def _position(rec: dict[str, Any], key: str) -> float:
    pos = rec.get("suite_position")
    v = pos.get(key) if isinstance(pos, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.inf


def _declared_order(records: list[dict[str, Any]], *, datasets_first: bool = False
                    ) -> list[dict[str, Any]]:
    """`records` in the suite's declared order: by their methods' and datasets' smallest
    `suite_position` indices, then by name (never by creation time); then seed and path."""
    run_rank: dict[str, float] = {}
    ds_rank: dict[str, float] = {}
    for r in records:
        m, d = str(r.get("method")), str(r.get("dataset"))
        run_rank[m] = min(run_rank.get(m, math.inf), _position(r, "run"))
        ds_rank[d] = min(ds_rank.get(d, math.inf), _position(r, "dataset"))

    def key(r: dict[str, Any]) -> tuple:
        m, d = str(r.get("method")), str(r.get("dataset"))
        seed = r.get("seed") if isinstance(r.get("seed"), int) else -1
        method_key, ds_key = (run_rank[m], m), (ds_rank[d], d)
        first, second = (ds_key, method_key) if datasets_first else (method_key, ds_key)
        return (*first, *second, seed, str(r.get("_path", "")))

    return sorted(records, key=key)


def skipped_summary(skipped: list[dict[str, Any]]) -> str:
    """One line naming each run left out of the table (method, dataset, seed, status: error)."""
    if not skipped:
        return ""
    parts = []
    for s in skipped:
        error = (str(s.get("error") or "").strip().splitlines() or ["no error message"])[0]
        if len(error) > 120:
            error = error[:117] + "..."
        parts.append(f"{s['method']} / {s['dataset']} / seed {s.get('seed')}: "
                     f"{s.get('status')} ({error})")
    n = len(skipped)
    return f"{n} run{'s' if n != 1 else ''} not in the table: " + "; ".join(parts) + "."
