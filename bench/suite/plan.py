"""From a loaded suite to validated run configs (conventional runs) and MLRC studies; every
error surfaces here, before any training."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dmlbench.bench import config as C
from dmlbench.bench.errors import UserError
from dmlbench.bench.suite.schema import (PlannedRun, PlannedStudy, _entry_datasets, _part_datasets,
                                mlrc_part)
from dmlbench.bench.suite.smoke import _smoke_config


def plan(suite: dict[str, Any], overrides: list[str], out_dir: Path, *,
         smoke_root: Path | None = None) -> list[PlannedRun]:
    """Every conventional run of the suite as a validated config (none for an mlrc suite);
    all errors surface before any training. `smoke_root`: smoke mode with fixture trees there
    (use `smoke_suite` on the suite first)."""
    from dmlbench.methods import get_method, resolve_params
    from dmlbench.protocols.conventional import run_id

    if suite.get("protocol", "conventional") == "mlrc":
        return []
    base = C.merge(C.defaults(), suite.get("config") or {}, prefix="suite config ")
    base["run"]["protocol"] = suite.get("protocol", base["run"]["protocol"])
    seeds = suite.get("seeds", [base["run"]["seed"]])
    datasets = suite.get("datasets") or [base["dataset"]["name"]]
    dcfg = suite.get("dataset_config") or {}
    out: list[PlannedRun] = []
    for di, ds in enumerate(datasets):
        for ri, entry in enumerate(suite["runs"]):
            if "space" in entry:
                raise UserError(f"suite {suite.get('name')!r}: `space` of run {entry['method']!r}"
                                " applies to MLRC runs only")
            if ds not in _entry_datasets(entry, datasets, suite.get("name")):
                continue
            for seed in seeds:
                cfg = _run_config(base, entry, ds, overrides, [dcfg.get(ds)], smoke_root)
                cfg["run"]["seed"] = seed
                cfg = C.validate(cfg)
                get_method(cfg["method"]["name"])
                resolve_params(cfg["method"]["name"], cfg["method"]["params"])
                out.append(PlannedRun(cfg, out_dir / run_id(cfg), {"run": ri, "dataset": di}))
    return out


def _run_config(base: dict, entry: dict, dataset: str, overrides: list[str],
                dataset_cfgs: list[dict | None] = (), smoke_root: Path | None = None) -> dict:
    cfg = base
    for dc in dataset_cfgs:
        cfg = C.merge(cfg, dc or {}, prefix=f"suite dataset_config.{dataset}.")
    cfg = C.merge(cfg, entry.get("config") or {})
    cfg["dataset"]["name"] = dataset
    run_params = ((entry.get("config") or {}).get("method") or {}).get("params")
    cfg["method"] = {"name": entry["method"],
                     "params": {**(run_params or {}), **(entry.get("params") or {})}}
    cfg["run"]["name"] = entry.get("name")
    if smoke_root is not None:
        cfg = _smoke_config(cfg, smoke_root)
    return C.apply_overrides(cfg, overrides)


def plan_mlrc(suite: dict[str, Any], overrides: list[str], out_dir: Path,
              search: dict[str, Any] | None = None, *, smoke_root: Path | None = None
              ) -> tuple[list[PlannedStudy], Path]:
    """Every MLRC experiment of the suite (its mlrc part, or the suite if protocol is mlrc),
    with `search` (command-line options) over the suite's search settings; all errors surface
    before any training."""
    from dmlbench.methods import get_method
    from dmlbench.protocols.mlrc import SearchOptions, build_settings

    part, mout = mlrc_part(suite, out_dir)
    if part is None:
        return [], mout
    config = C.merge(C.defaults(), suite.get("config") or {}, prefix="suite config ")
    dcfgs = [suite.get("dataset_config") or {}]
    if part is not suite:
        config = C.merge(config, part.get("config") or {}, prefix="suite mlrc config ")
        dcfgs.append(part.get("dataset_config") or {})
    config["run"]["protocol"] = "mlrc"
    search_base = dict(part.get("search") or {})
    if not isinstance(search_base.get("space", {}), dict):
        raise UserError(f"suite {suite.get('name')!r}: search.space must be a mapping")
    datasets = _part_datasets(suite, part, config)
    out: list[PlannedStudy] = []
    for ds in datasets:
        for entry in part["runs"]:
            if ds not in _entry_datasets(entry, datasets, suite.get("name")):
                continue
            cfg = _run_config(config, entry, ds, overrides, [d.get(ds) for d in dcfgs],
                              smoke_root)
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
            name, settings = build_settings(cfg, opts, mout, suite.get("name"))
            out.append(PlannedStudy(cfg, opts, mout, name, settings["budget"]))
    return out, mout
