"""The suite file format: loading a suite (by shipped name or YAML path), checking its keys,
and the planned units of work (`PlannedRun`, `PlannedStudy`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dmlbench.bench import config as C
from dmlbench.bench.errors import UserError

SUITE_KEYS = {"name", "description", "protocol", "seeds", "datasets", "config", "runs", "report",
              "mlrc", "search", "dataset_config", "published"}
MLRC_PART_KEYS = {"description", "datasets", "config", "runs", "report", "search",
                  "dataset_config"}
RUN_KEYS = {"method", "params", "config", "name", "space", "datasets"}


@dataclass
class PlannedRun:
    cfg: dict
    run_dir: Path
    position: dict = field(default_factory=dict)   # {"run": i, "dataset": j} in the suite


@dataclass
class PlannedStudy:
    """One MLRC experiment of a suite."""

    cfg: dict
    opts: Any              # protocols.mlrc.SearchOptions
    out_dir: Path
    study: str             # the study name it will use
    budget: dict = field(default_factory=dict)   # n_trials, reproductions, max_failed


def list_suites() -> list[str]:
    """Names of the suites shipped with dmlbench."""
    return sorted(p.name[:-5] for p in resources.files("dmlbench.bench").joinpath("suites").iterdir()
                  if p.name.endswith(".yaml"))


def load_suite(name_or_path: str) -> dict[str, Any]:
    """A suite by shipped name or by YAML path, checked for unknown keys."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        data = C.read_yaml(p)
        data.setdefault("name", p.stem)
    else:
        if name_or_path not in list_suites():
            names = sorted(list_suites(), key=lambda n: (n != "demo", n))  # demo needs no data
            raise UserError(f"unknown suite {name_or_path!r}; valid suites: "
                            f"{', '.join(names)} (or give a path to a suite YAML file)")
        ref = resources.files("dmlbench.bench").joinpath("suites", f"{name_or_path}.yaml")
        with resources.as_file(ref) as f:
            data = C.read_yaml(f)
    unknown = set(data) - SUITE_KEYS
    if unknown:
        raise UserError(f"suite {data.get('name')!r} has unknown key(s) {sorted(unknown)}; "
                        f"valid keys: {', '.join(sorted(SUITE_KEYS))}")
    _check_runs(data, data.get("name"))
    _check_dataset_config(data.get("dataset_config"), data.get("name"))
    if "published" in data and not (isinstance(data["published"], str) and data["published"]):
        raise UserError(f"suite {data.get('name')!r}: `published` must name the published "
                        "numbers, e.g. published: memvir-table2")
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
    seeds = data.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2 ** 32 for x in seeds)
            and len(set(seeds)) == len(seeds)):
        raise UserError(f"suite {data.get('name')!r}: seeds={seeds!r} is not valid; allowed: a "
                        "non-empty list of distinct integers >= 0, e.g. seeds: [0, 1, 2]")
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
        _check_dataset_config(part.get("dataset_config"), f"{data.get('name')} (mlrc part)")
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
        ds = r.get("datasets")
        if ds is not None and not (isinstance(ds, list) and ds
                                   and all(isinstance(d, str) and d for d in ds)):
            raise UserError(f"suite {name!r} run #{i + 1} ({r['method']}): `datasets` must be a "
                            "non-empty list of dataset names")


def _check_dataset_config(dc: Any, name: Any) -> None:
    if dc is None:
        return
    if not isinstance(dc, dict):
        raise UserError(f"suite {name!r}: `dataset_config` must map dataset names to config "
                        "sections, e.g. {sop: {train: {eval_every: 20}}}")
    for ds, sections in dc.items():
        C.merge(C.defaults(), sections or {}, prefix=f"suite dataset_config.{ds}.")


def _entry_datasets(entry: dict, datasets: list[str], name: Any) -> list[str]:
    """The suite datasets a run applies to (its `datasets`, in the suite's order)."""
    want = entry.get("datasets")
    if want is None:
        return list(datasets)
    extra = [d for d in want if d not in datasets]
    if extra:
        raise UserError(f"suite {name!r}: run {entry['method']!r} names dataset(s) "
                        f"{', '.join(extra)} that are not among the suite's datasets "
                        f"({', '.join(datasets)})")
    return [d for d in datasets if d in want]


def mlrc_part(suite: dict[str, Any], out_dir: Path) -> tuple[dict[str, Any] | None, Path]:
    """(the MLRC part of a suite or None, the folder it writes to)."""
    if suite.get("protocol", "conventional") == "mlrc":
        return suite, out_dir
    part = suite.get("mlrc")
    if part is None:
        return None, out_dir
    return part, out_dir.parent / f"{out_dir.name}-mlrc"


def _part_datasets(suite: dict[str, Any], part: dict[str, Any], config: dict) -> list[str]:
    return part.get("datasets") or suite.get("datasets") or [config["dataset"]["name"]]
