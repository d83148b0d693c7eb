"""Suites: a YAML list of runs (methods x seeds x datasets) under one protocol, run in order,
skipping runs whose record exists, then turned into tables.

    name: demo
    protocol: conventional          # or mlrc
    seeds: [0, 1]
    datasets: [glyphs]              # optional; default: config.dataset.name
    config: {train: {epochs: 8}}    # applied to every run (sections as in a run config)
    runs:
      - method: normsoftmax
      - {method: ms, params: {alpha: 2}, config: {train: {batch_size: 64}}, name: ms-a2}
    report: {which: best}

This module and `bench.cli` are the face: the one place that wires protocols and results.
"""
from __future__ import annotations

import copy
import sys
import traceback
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bench import config as C
from bench.errors import UserError
from bench.records import read_records

SUITE_KEYS = {"name", "description", "protocol", "seeds", "datasets", "config", "runs", "report",
              "mlrc"}
RUN_KEYS = {"method", "params", "config", "name"}


@dataclass
class PlannedRun:
    cfg: dict
    run_dir: Path


def list_suites() -> list[str]:
    """Names of the suites shipped with dmlbench."""
    return sorted(p.name[:-5] for p in resources.files("bench").joinpath("suites").iterdir()
                  if p.name.endswith(".yaml"))


def load_suite(name_or_path: str) -> dict[str, Any]:
    """A suite by shipped name or by YAML path, checked for unknown keys."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        data = C.read_yaml(p)
        data.setdefault("name", p.stem)
    else:
        if name_or_path not in list_suites():
            raise UserError(f"unknown suite {name_or_path!r}; valid suites: "
                            f"{', '.join(list_suites())} (or give a path to a suite YAML file)")
        ref = resources.files("bench").joinpath("suites", f"{name_or_path}.yaml")
        with resources.as_file(ref) as f:
            data = C.read_yaml(f)
    unknown = set(data) - SUITE_KEYS
    if unknown:
        raise UserError(f"suite {data.get('name')!r} has unknown key(s) {sorted(unknown)}; "
                        f"valid keys: {', '.join(sorted(SUITE_KEYS))}")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise UserError(f"suite {data.get('name')!r} needs a non-empty list `runs`")
    for i, r in enumerate(runs):
        if isinstance(r, str):
            runs[i] = r = {"method": r}
        if not isinstance(r, dict) or "method" not in r or set(r) - RUN_KEYS:
            raise UserError(f"suite {data['name']!r} run #{i + 1} must be a mapping with "
                            f"`method` and optionally {sorted(RUN_KEYS - {'method'})}")
    return data


def plan(suite: dict[str, Any], overrides: list[str], out_dir: Path) -> list[PlannedRun]:
    """Every run of the suite as a validated config; all errors surface before any training."""
    from methods import get_method, resolve_params
    from protocols.conventional import run_id

    base = C.merge(C.defaults(), suite.get("config") or {}, prefix="suite config ")
    base["run"]["protocol"] = suite.get("protocol", base["run"]["protocol"])
    seeds = suite.get("seeds", [base["run"]["seed"]])
    datasets = suite.get("datasets") or [base["dataset"]["name"]]
    out: list[PlannedRun] = []
    for ds in datasets:
        for entry in suite["runs"]:
            for seed in seeds:
                cfg = C.merge(base, entry.get("config") or {})
                cfg["dataset"]["name"] = ds
                run_params = ((entry.get("config") or {}).get("method") or {}).get("params")
                cfg["method"] = {"name": entry["method"],
                                 "params": {**(run_params or {}), **(entry.get("params") or {})}}
                cfg["run"]["seed"] = seed
                cfg["run"]["name"] = entry.get("name")
                cfg = C.validate(C.apply_overrides(cfg, overrides))
                get_method(cfg["method"]["name"])
                resolve_params(cfg["method"]["name"], cfg["method"]["params"])
                out.append(PlannedRun(cfg, out_dir / run_id(cfg)))
    return out


def _done(run_dir: Path) -> bool:
    rec = run_dir / "record.json"
    return rec.exists() and any(r.get("status") in ("completed", "diverged")
                                for r in read_records(run_dir))


def run_suite(name_or_path: str, overrides: list[str] | None = None, out_dir: str | None = None,
              *, log=print) -> dict[str, Any]:
    """Run (or resume) a suite; returns {"out_dir", "records", "tables", "failed"}."""
    from bench.data import load_dataset
    from protocols.conventional import run_conventional
    from results.tables import write_tables

    suite = load_suite(name_or_path)
    out = Path(out_dir or Path(C.defaults()["run"]["output"]) / suite["name"])
    runs = plan(suite, overrides or [], out)
    if suite.get("protocol", "conventional") == "mlrc":
        raise UserError("the mlrc protocol is not available in this version; use "
                        "protocol: conventional")
    datasets: dict[str, Any] = {}
    records, failed = [], []
    for i, pr in enumerate(runs, 1):
        cfg = pr.cfg
        label = f"[{i}/{len(runs)}] {cfg['dataset']['name']} {cfg['run']['name'] or cfg['method']['name']} seed {cfg['run']['seed']}"
        if _done(pr.run_dir):
            log(f"{label}: done before, skipped")
            continue
        key = repr((cfg["dataset"]["name"], cfg["dataset"]["root"], cfg["dataset"]["options"]))
        if key not in datasets:
            d = cfg["dataset"]
            datasets[key] = load_dataset(d["name"], d["root"], **d["options"])
        try:
            rec = run_conventional(cfg, pr.run_dir, suite=suite["name"], dataset=datasets[key])
        except UserError:
            raise
        except Exception as e:  # a bug or an environment failure: record it, go on
            failed.append((label, e))
            log(f"{label}: FAILED ({type(e).__name__}: {e})")
            traceback.print_exc(file=sys.stderr)
            continue
        records.append(rec)
        if rec["status"] == "diverged":
            log(f"{label}: diverged ({rec['error']})")
        else:
            m = rec["best"]["metrics"]
            log(f"{label}: P@1 {100 * m['precision_at_1']:.2f}  MAP@R "
                f"{100 * m['mean_average_precision_at_r']:.2f}  ({rec['wall_time_s']:.0f} s, "
                f"{rec['images_per_s']:.0f} img/s)")
    report = suite.get("report") or {}
    tables = write_tables(out, which=report.get("which", "best"), ci=report.get("ci", False))
    return {"out_dir": out, "records": records, "tables": tables, "failed": failed,
            "suite": copy.deepcopy(suite)}
