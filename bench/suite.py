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

MLRC experiments (protocol mlrc, see protocols/mlrc.py): each run is one experiment = one
Optuna study (4-fold search) + R reproductions of the best parameters on the test set; `seeds`
does not apply (the search seed is `search.seed`, reproductions use seed+1..seed+R). `params`
of a run are fixed values (taken out of the search space); `space` overrides the registry
search space of the run's method: `param: [float|log|int, low, high]`,
`param: [categorical, [a, b]]`, or `param: value` to fix it.

    name: table
    protocol: mlrc
    datasets: [cub200, cars196]
    config: {train: {eval_every: 2, patience: 9}}
    search:                          # all optional; defaults shown
      n_trials: 50
      sampler: tpe                   # tpe | gp | random | grid (grid_points per float/int)
      seed: null                     # default: config run.seed
      pruner: none                   # none | median (between folds)
      reproductions: 3
      max_failed: null               # stop the search after this many failed trials (n_trials)
      storage: null                  # default: sqlite file OUT/studies.db; see protocols/study.py
      workers: 1                     # processes on this machine (needs journal/RDB storage)
      heartbeat_interval: 10         # seconds; a trial silent for grace_period is re-queued
      grace_period: 40
      space: {loss_lr: [log, 1.0e-5, 1.0e-2]}   # for every run
    runs:
      - method: normsoftmax
      - {method: memvir+normsoftmax, space: {warmup_epochs: 1}}
    report: {ci: true}               # MLRC tables default to t-based 95% CIs

A conventional suite may add an MLRC part under the key `mlrc`: a mapping with the keys of an
MLRC suite (`datasets`, `config` merged over the suite's config, `search`, `runs`, `report`),
run after the conventional runs and written to the sibling folder OUT-mlrc (so that the two
protocols' tables stay apart). After each MLRC study the suite writes its importance report
(OUT/STUDY/importance/importance.md + PNGs) and, at the end, the MLRC table (mean ± CI over
reproductions, deltas of "+method" rows to their base). Command-line overrides apply to both.

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
              "mlrc", "search"}
MLRC_PART_KEYS = {"description", "datasets", "config", "runs", "report", "search"}
RUN_KEYS = {"method", "params", "config", "name", "space"}


@dataclass
class PlannedRun:
    cfg: dict
    run_dir: Path


@dataclass
class PlannedStudy:
    """One MLRC experiment of a suite."""

    cfg: dict
    opts: Any              # protocols.mlrc.SearchOptions
    out_dir: Path
    study: str             # the study name it will use


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
    _check_runs(data, data.get("name"))
    protocol = data.get("protocol", "conventional")
    if protocol not in ("conventional", "mlrc"):
        raise UserError(f"suite {data.get('name')!r}: protocol {protocol!r} is not valid; "
                        "valid protocols: conventional, mlrc")
    if protocol == "mlrc":
        if "seeds" in data:
            raise UserError(f"suite {data.get('name')!r}: an mlrc suite takes no `seeds`; use "
                            "search.seed and search.reproductions")
        if "mlrc" in data:
            raise UserError(f"suite {data.get('name')!r}: `mlrc` is the MLRC part of a "
                            "conventional suite; with protocol: mlrc put its keys at the top")
    elif "search" in data:
        raise UserError(f"suite {data.get('name')!r}: `search` applies to protocol mlrc; put it "
                        "under the `mlrc` part or set protocol: mlrc")
    part = data.get("mlrc")
    if part is not None:
        if not isinstance(part, dict):
            raise UserError(f"suite {data.get('name')!r}: `mlrc` must be a mapping with keys "
                            f"{', '.join(sorted(MLRC_PART_KEYS))}")
        unknown = set(part) - MLRC_PART_KEYS
        if unknown:
            raise UserError(f"suite {data.get('name')!r} mlrc part has unknown key(s) "
                            f"{sorted(unknown)}; valid keys: {', '.join(sorted(MLRC_PART_KEYS))}")
        _check_runs(part, f"{data.get('name')} (mlrc part)")
    return data


def _check_runs(data: dict[str, Any], name: Any) -> None:
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise UserError(f"suite {name!r} needs a non-empty list `runs`")
    for i, r in enumerate(runs):
        if isinstance(r, str):
            runs[i] = r = {"method": r}
        if not isinstance(r, dict) or "method" not in r or set(r) - RUN_KEYS:
            raise UserError(f"suite {name!r} run #{i + 1} must be a mapping with "
                            f"`method` and optionally {sorted(RUN_KEYS - {'method'})}")


def plan(suite: dict[str, Any], overrides: list[str], out_dir: Path) -> list[PlannedRun]:
    """Every conventional run of the suite as a validated config (none for an mlrc suite);
    all errors surface before any training."""
    from methods import get_method, resolve_params
    from protocols.conventional import run_id

    if suite.get("protocol", "conventional") == "mlrc":
        return []
    base = C.merge(C.defaults(), suite.get("config") or {}, prefix="suite config ")
    base["run"]["protocol"] = suite.get("protocol", base["run"]["protocol"])
    seeds = suite.get("seeds", [base["run"]["seed"]])
    datasets = suite.get("datasets") or [base["dataset"]["name"]]
    out: list[PlannedRun] = []
    for ds in datasets:
        for entry in suite["runs"]:
            if "space" in entry:
                raise UserError(f"suite {suite.get('name')!r}: `space` of run {entry['method']!r}"
                                " applies to MLRC runs only")
            for seed in seeds:
                cfg = _run_config(base, entry, ds, overrides)
                cfg["run"]["seed"] = seed
                cfg = C.validate(cfg)
                get_method(cfg["method"]["name"])
                resolve_params(cfg["method"]["name"], cfg["method"]["params"])
                out.append(PlannedRun(cfg, out_dir / run_id(cfg)))
    return out


def _run_config(base: dict, entry: dict, dataset: str, overrides: list[str]) -> dict:
    cfg = C.merge(base, entry.get("config") or {})
    cfg["dataset"]["name"] = dataset
    run_params = ((entry.get("config") or {}).get("method") or {}).get("params")
    cfg["method"] = {"name": entry["method"],
                     "params": {**(run_params or {}), **(entry.get("params") or {})}}
    cfg["run"]["name"] = entry.get("name")
    return C.apply_overrides(cfg, overrides)


def mlrc_part(suite: dict[str, Any], out_dir: Path) -> tuple[dict[str, Any] | None, Path]:
    """(the MLRC part of a suite or None, the folder it writes to)."""
    if suite.get("protocol", "conventional") == "mlrc":
        return suite, out_dir
    part = suite.get("mlrc")
    if part is None:
        return None, out_dir
    return part, out_dir.parent / f"{out_dir.name}-mlrc"


def plan_mlrc(suite: dict[str, Any], overrides: list[str], out_dir: Path,
              search: dict[str, Any] | None = None) -> tuple[list[PlannedStudy], Path]:
    """Every MLRC experiment of the suite (its mlrc part, or the suite if protocol is mlrc),
    with `search` (command-line options) over the suite's search settings; all errors surface
    before any training."""
    from methods import get_method
    from protocols.mlrc import SearchOptions, build_settings

    part, mout = mlrc_part(suite, out_dir)
    if part is None:
        return [], mout
    config = C.merge(C.defaults(), suite.get("config") or {}, prefix="suite config ")
    if part is not suite:
        config = C.merge(config, part.get("config") or {}, prefix="suite mlrc config ")
    config["run"]["protocol"] = "mlrc"
    search_base = dict(part.get("search") or {})
    if not isinstance(search_base.get("space", {}), dict):
        raise UserError(f"suite {suite.get('name')!r}: search.space must be a mapping")
    datasets = part.get("datasets") or suite.get("datasets") or [config["dataset"]["name"]]
    out: list[PlannedStudy] = []
    for ds in datasets:
        for entry in part["runs"]:
            cfg = _run_config(config, entry, ds, overrides)
            cfg["run"]["protocol"] = "mlrc"
            cfg = C.validate(cfg)
            get_method(cfg["method"]["name"])
            sd = {**search_base, **(search or {})}
            space = {**(search_base.get("space") or {}), **(entry.get("space") or {})}
            if not isinstance(entry.get("space", {}), dict):
                raise UserError(f"suite {suite.get('name')!r}: `space` of run "
                                f"{entry['method']!r} must be a mapping param: range or value")
            sd["space"] = {k: v for k, v in space.items()
                           if k in get_method(cfg["method"]["name"]).defaults
                           or k in (entry.get("space") or {})}
            opts = SearchOptions.from_dict(sd)
            name, _ = build_settings(cfg, opts, mout, suite.get("name"))
            out.append(PlannedStudy(cfg, opts, mout, name))
    return out, mout


def _done(run_dir: Path) -> bool:
    rec = run_dir / "record.json"
    return rec.exists() and any(r.get("status") in ("completed", "diverged")
                                for r in read_records(run_dir))


def run_suite(name_or_path: str, overrides: list[str] | None = None, out_dir: str | None = None,
              *, log=print, search: dict[str, Any] | None = None,
              threads: int | None = None) -> dict[str, Any]:
    """Run (or resume) a suite; returns {"out_dir", "records", "tables", "failed", "suite",
    "mlrc"}; "mlrc" (None without an MLRC part) holds its "out_dir", "tables", "studies" and
    "importance" (report paths by study). `search` overrides the suite's MLRC search settings
    (e.g. {"storage": URL, "workers": 2}); `threads` sets the MLRC workers' torch threads."""
    from bench.data import load_dataset
    from protocols.conventional import run_conventional
    from results.tables import write_tables

    suite = load_suite(name_or_path)
    out = Path(out_dir or Path(C.defaults()["run"]["output"]) / suite["name"])
    runs = plan(suite, overrides or [], out)
    studies, mout = plan_mlrc(suite, overrides or [], out, search)
    if studies:
        from protocols import study as S

        for url in dict.fromkeys(ps.opts.storage for ps in studies if ps.opts.storage):
            S.open_storage(url)  # an unreachable storage fails before any training
    datasets: dict[str, Any] = {}

    def dataset_for(cfg: dict) -> Any:
        key = repr((cfg["dataset"]["name"], cfg["dataset"]["root"], cfg["dataset"]["options"]))
        if key not in datasets:
            d = cfg["dataset"]
            datasets[key] = load_dataset(d["name"], d["root"], **d["options"])
        return datasets[key]

    records, failed = [], []
    for i, pr in enumerate(runs, 1):
        cfg = pr.cfg
        label = f"[{i}/{len(runs)}] {cfg['dataset']['name']} {cfg['run']['name'] or cfg['method']['name']} seed {cfg['run']['seed']}"
        if _done(pr.run_dir):
            log(f"{label}: done before, skipped")
            continue
        try:
            rec = run_conventional(cfg, pr.run_dir, suite=suite["name"], dataset=dataset_for(cfg))
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
    tables = {}
    if runs:
        tables = write_tables(out, which=report.get("which", "best"), ci=report.get("ci", False))
    mlrc = None
    if studies:
        mlrc = _run_mlrc_part(suite, studies, mout, dataset_for, failed, threads, log)
        records += mlrc.pop("records")
    return {"out_dir": out, "records": records, "tables": tables, "failed": failed,
            "suite": copy.deepcopy(suite), "mlrc": mlrc}


def _run_mlrc_part(suite: dict[str, Any], studies: list[PlannedStudy], mout: Path,
                   dataset_for, failed: list, threads: int | None, log) -> dict[str, Any]:
    from protocols import study as S
    from protocols.mlrc import default_storage, run_mlrc
    from results.importance import write_importance_report
    from results.tables import write_tables

    part, _ = mlrc_part(suite, mout)
    records, importance, names = [], {}, []
    for i, ps in enumerate(studies, 1):
        cfg = ps.cfg
        label = (f"[mlrc {i}/{len(studies)}] {cfg['dataset']['name']} "
                 f"{cfg['run']['name'] or cfg['method']['name']}")
        log(f"{label}: study {ps.study}")
        try:
            res = run_mlrc(cfg, ps.opts, ps.out_dir, suite=suite["name"],
                           dataset=dataset_for(cfg), threads=threads, log=log)
        except UserError:
            raise
        except Exception as e:  # a bug or an environment failure: record it, go on
            failed.append((label, e))
            log(f"{label}: FAILED ({type(e).__name__}: {e})")
            traceback.print_exc(file=sys.stderr)
            continue
        names.append(res["study"])
        records += res["records"]
        if res["status"] == "failed":
            failed.append((label, RuntimeError(res["message"])))
            log(f"{label}: FAILED ({res['message']})")
        try:
            st = S.open_storage(ps.opts.storage or default_storage(ps.out_dir))
            paths = write_importance_report(S.load_study(res["study"], st),
                                            ps.out_dir / res["study"] / "importance")
            importance[res["study"]] = paths["markdown"]
            log(f"{label}: importance report {paths['markdown']}")
        except UserError:
            raise
        except Exception as e:
            log(f"{label}: importance report failed ({type(e).__name__}: {e})")
    report = part.get("report") or {}
    tables = {}
    if any(r.get("status") == "completed" for r in records) or any(mout.rglob("record.json")):
        tables = write_tables(mout, which=report.get("which", "best"), ci=report.get("ci", True))
    return {"out_dir": mout, "tables": tables, "studies": names, "importance": importance,
            "records": records}
