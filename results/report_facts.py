"""Facts the HTML report draws from run records and Optuna studies: a run's training budget,
how its number was selected, the processes and kind of hours it used, budget mismatches between
a "+method" row and its base, and the studies (and their search time) behind MLRC records."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from dmlbench.results.metric_names import short_name

__all__ = ["run_budget", "group_budget", "selection", "record_key", "find_studies",
           "search_hours", "processes", "hour_kind", "budget_flags", "BUDGET_TOLERANCE"]

log = logging.getLogger(__name__)

BUDGET_TOLERANCE = 0.01  # relative difference of budgets below which they count as equal


def run_budget(rec: dict[str, Any]) -> dict[str, Any]:
    """The planned training budget of a run: epochs, iterations per epoch (configured, or
    measured from its evaluations, or train images // batch size; None if unknown), batch
    size, and their product "images" (None if iterations are unknown)."""
    t = (rec.get("config") or {}).get("train") or {}
    epochs, batch = t.get("epochs"), t.get("batch_size")
    ipe = t.get("iterations_per_epoch")
    if not ipe:
        for e in reversed(rec.get("evaluations") or []):
            if e.get("epoch") and e.get("iteration"):
                ipe = round(e["iteration"] / e["epoch"])
                break
    if not ipe and rec.get("num_train_images") and batch:
        ipe = max(1, int(rec["num_train_images"]) // int(batch))
    images = epochs * ipe * batch if epochs and ipe and batch else None
    return {"epochs": epochs, "iterations_per_epoch": ipe or None, "batch_size": batch,
            "images": images}


def group_budget(recs: list[dict[str, Any]]) -> tuple[float | None, str]:
    """(mean images of the runs' budgets or None if unknown, the distinct budgets as text)."""
    budgets = [run_budget(r) for r in recs]
    images = [b["images"] for b in budgets if b["images"]]
    if not images:
        return None, "unknown"
    text = " / ".join(dict.fromkeys(
        f"{b['epochs']} epochs × {b['iterations_per_epoch']} it × {b['batch_size']}"
        for b in budgets if b["images"]))
    return float(sum(images) / len(images)), text


def selection(recs: list[dict[str, Any]], which: str) -> tuple[str, bool]:
    """(how the reported number was selected, whether on the test set)."""
    r = recs[0]
    if r.get("protocol") == "mlrc":
        t = (r.get("config") or {}).get("train") or {}
        return ("best epoch of each fold on its validation classes (MAP@R, early stopping "
                f"patience {t.get('patience')}); test: the concatenated embedding of the fold "
                "models", False)
    if which == "final":
        return "last evaluation", False
    best = r.get("best") or {}
    n = len(r.get("evaluations") or [])
    sel = best.get("selection_set")
    by = best.get("selected_by", "?")
    if sel == "test":
        return (f"best of {n} evaluations by {short_name(str(by))} on the test set", True)
    if sel == "val":
        return f"best of {n} evaluations by {short_name(str(by))} on validation", False
    return f"best evaluation by {by} (selection set not recorded)", False


def record_key(rec: dict[str, Any]) -> tuple[str, str, str]:
    """(protocol, method, dataset) of a record: one result of the report."""
    return (str(rec.get("protocol")), str(rec.get("method")), str(rec.get("dataset")))


def find_studies(dirs: list[Path], names: set[str],
                 given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Optuna studies called `names`: from `given`, else from studies.db files under
    `dirs` (unreadable databases are logged and skipped)."""
    found: dict[str, Any] = dict(given or {})
    wanted = names - set(found)
    if not wanted:
        return found
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a dependency
        return found
    for d in dirs:
        for db in sorted(d.rglob("studies.db")):
            try:
                storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
                present = {s.study_name for s in storage.get_all_studies()}
                for name in sorted(wanted & present):
                    found[name] = optuna.load_study(study_name=name, storage=storage)
            except Exception as e:  # a foreign or locked database: the report goes on
                log.warning("cannot read studies from %s: %s", db, e)
            wanted = names - set(found)
            if not wanted:
                return found
    return found


def search_hours(study: Any) -> float | None:
    """The hours of a study's trials (their recorded timing, else start to end), None if none."""
    total = 0.0
    seen = False
    for t in study.get_trials(deepcopy=False):
        timing = t.user_attrs.get("timing")
        if isinstance(timing, dict) and isinstance(timing.get("trial_s"), (int, float)):
            total += float(timing["trial_s"])
            seen = True
        elif t.datetime_start and t.datetime_complete:
            total += (t.datetime_complete - t.datetime_start).total_seconds()
            seen = True
    return total / 3600.0 if seen else None


def processes(rec: dict[str, Any]) -> int:
    """The number of processes (one device each) that ran the fit."""
    n = rec.get("world_size")
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def hour_kind(recs: list[dict[str, Any]]) -> str:
    """"GPU-hours", "CPU-hours" or "hours" by the devices of the runs."""
    devs = {str(r.get("device") or ((r.get("config") or {}).get("train") or {}).get("device"))
            for r in recs}
    if all(d.startswith("cuda") for d in devs):
        return "GPU-hours"
    if all(d.startswith("cpu") for d in devs):
        return "CPU-hours"
    return "hours"


def budget_flags(table: pd.DataFrame, groups: dict[tuple, list[dict]], protocol: str
                 ) -> dict[tuple[str, str], tuple]:
    """{(variant, dataset): (ratio, its budget, base budget, base)} where they differ."""
    flags = {}
    datasets = list(dict.fromkeys(table.columns.get_level_values("dataset")))
    for variant, base in (table.attrs.get("base") or {}).items():
        for d in datasets:
            mine = groups.get((protocol, variant, d))
            theirs = groups.get((protocol, base, d))
            if not mine or not theirs:
                continue
            (a, at), (b, bt) = group_budget(mine), group_budget(theirs)
            if a and b and abs(a / b - 1.0) > BUDGET_TOLERANCE:
                flags[(variant, d)] = (a / b, at, bt, base)
    return flags
