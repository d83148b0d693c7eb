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

Per-dataset settings: `dataset_config` maps a dataset name to config sections merged over the
suite's `config` for that dataset only, before each run's own `config` (order: defaults <
config < dataset_config[DATASET] < run config < command-line overrides; method parameters come
from the run only: `params` and its config's method.params). A run may name the
datasets it applies to with `datasets` (a subset of the suite's), e.g. to give one dataset
its own parameters or search range:

    datasets: [cub, cars196, sop]
    dataset_config:
      sop: {train: {eval_every: 20, patience: 39}, eval: {recall_ks: [1, 10, 100, 1000]}}
    runs:
      - {method: arcface, datasets: [cub, cars196]}
      - {method: arcface, datasets: [sop], space: {scale: [float, 0.01, 300.0]}}

`published: KEY` names the published numbers (bench/published/published.csv, column `suite`)
that the suite's tables show beside the measured ones (`pub.` and `diff` columns); rows of
protocol `mlrc-validation` are compared with the best search value (4-fold mean validation
MAP@R, column `val MAP@R`) of MLRC runs.

A conventional suite may add an MLRC part under the key `mlrc`: a mapping with the keys of an
MLRC suite (`datasets`, `config` merged over the suite's config, `search`, `runs`, `report`,
`dataset_config` merged over the suite's), run after the conventional runs and written to the
sibling folder OUT-mlrc (so that the two protocols' tables stay apart). After each MLRC study
the suite writes its importance report (OUT/STUDY/importance/importance.md + PNGs) and, at the
end, the MLRC table (mean ± CI over reproductions, deltas of "+method" rows to their base).
Command-line overrides apply to both.

Smoke mode (`run_suite(..., smoke=True)`, `dmlbench suite NAME --smoke`) runs every run of a
suite end to end in seconds, so that a preset cannot rot: fixture trees in the real on-disk
layouts (bench.data.fixtures) replace CUB/CARS196/SOP, images are 32 px, the preset's own trunk
runs with random weights (its transforms, pooling, frozen BN, normalisation, optimiser groups
and schedule unchanged: the real code path on less data), fits last 2 epochs of 1 iteration
at batch 8 (MemVir without warm-up or step gap), one seed, one search trial and one
reproduction; each run is kept once,
on one of its datasets (rotating over the suite's datasets by base method, so that a method
and its "+method" variants share one). Command-line overrides still apply on top.

`estimate_run` / `estimate_study` give the GPU hours of a run / an MLRC study (an upper bound:
every fit to its last epoch) from the assumed throughputs in `THROUGHPUT` (see there) and the
dataset sizes of bench.data.real.DATASET_INFO.

This module and `bench.cli` are the face: the one place that wires protocols and results.
"""
from __future__ import annotations
from __future__ import annotations

import copy
import math
import sys
import traceback
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench import config as C
from bench.errors import UserError
from bench.records import read_records

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
            names = sorted(list_suites(), key=lambda n: (n != "demo", n))  # demo needs no data
            raise UserError(f"unknown suite {name_or_path!r}; valid suites: "
                            f"{', '.join(names)} (or give a path to a suite YAML file)")
        ref = resources.files("bench").joinpath("suites", f"{name_or_path}.yaml")
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


def plan(suite: dict[str, Any], overrides: list[str], out_dir: Path, *,
         smoke_root: Path | None = None) -> list[PlannedRun]:
    """Every conventional run of the suite as a validated config (none for an mlrc suite);
    all errors surface before any training. `smoke_root`: smoke mode with fixture trees there
    (use `smoke_suite` on the suite first)."""
    from methods import get_method, resolve_params
    from protocols.conventional import run_id

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


def plan_mlrc(suite: dict[str, Any], overrides: list[str], out_dir: Path,
              search: dict[str, Any] | None = None, *, smoke_root: Path | None = None
              ) -> tuple[list[PlannedStudy], Path]:
    """Every MLRC experiment of the suite (its mlrc part, or the suite if protocol is mlrc),
    with `search` (command-line options) over the suite's search settings; all errors surface
    before any training."""
    from methods import get_method
    from protocols.mlrc import SearchOptions, build_settings

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


# ----------------------------------------------------------------------------- smoke mode

# Config of every smoke run (then the fixture root, and a batch size that suits m_per_class).
# Smoke mode shrinks data, image size and iterations, never the code path: the preset's trunk
# (random weights instead of downloaded ones), transforms, pooling, frozen BN, normalisation,
# optimiser groups and schedule stay. 32 px is a size every built-in trunk accepts
# (BN-Inception takes sides of 32k-1 to 32k+6).
SMOKE_CONFIG: dict[str, dict[str, Any]] = {
    "model": {"pretrained": False, "weights": None},
    "dataset": {"image_size": 32},
    "train": {"epochs": 2, "iterations_per_epoch": 1, "eval_every": 1, "patience": None,
              "num_workers": 0, "amp": False, "threads": 1, "progress": False},
    "eval": {"batch_size": 64},
}
SMOKE_SEARCH = {"n_trials": 1, "reproductions": 1, "workers": 1}
# Method parameters fixed in smoke mode where a method has them: MemVir's virtual classes take
# part from the second of the 4 training steps.
SMOKE_PARAMS = {"warmup_epochs": 0, "step_gap": 0}


def smoke_suite(suite: dict[str, Any]) -> dict[str, Any]:
    """A copy of a loaded suite cut down for smoke mode: one seed, one search trial and one
    reproduction, each run on one of its datasets (rotating by base method)."""
    from methods import get_method

    s = copy.deepcopy(suite)
    if "seeds" in s:
        s["seeds"] = list(s["seeds"])[:1]
    parts = [s] + ([s["mlrc"]] if isinstance(s.get("mlrc"), dict) else [])
    base_cfg = C.merge(C.defaults(), s.get("config") or {}, prefix="suite config ")
    for part in parts:
        datasets = _part_datasets(s, part, base_cfg) if part is not s else (
            s.get("datasets") or [base_cfg["dataset"]["name"]])
        groups: dict[str, int] = {}
        for entry in part["runs"]:
            allowed = _entry_datasets(entry, datasets, s.get("name"))
            key = get_method(entry["method"]).base or entry["method"]
            i = groups.setdefault(key, len(groups))
            mine = datasets[i % len(datasets)]   # the group's dataset, where the run allows it
            entry["datasets"] = [mine if mine in allowed else allowed[i % len(allowed)]]
        if part is not s or s.get("protocol") == "mlrc":
            part["search"] = {**(part.get("search") or {}), **SMOKE_SEARCH}
    return s


def _smoke_config(cfg: dict, root: Path) -> dict:
    from bench.data.fixtures import BUILDERS
    from methods import get_method

    cfg = C.merge(cfg, SMOKE_CONFIG)
    if cfg["dataset"]["name"] in BUILDERS:
        cfg["dataset"]["root"] = str(root)
        cfg["dataset"]["options"] = {}
    spec = get_method(cfg["method"]["name"])
    cfg["method"]["params"].update({k: v for k, v in SMOKE_PARAMS.items() if k in spec.defaults})
    m = cfg["train"]["m_per_class"] or spec.m_per_class
    cfg["train"]["batch_size"] = 8 if 8 % m == 0 else 2 * m
    return cfg


def smoke_datasets(runs: list[PlannedRun], studies: list[PlannedStudy]) -> list[str]:
    """The datasets a smoke run needs fixture trees for."""
    return list(dict.fromkeys(p.cfg["dataset"]["name"] for p in [*runs, *studies]))


# ----------------------------------------------------------------------------- GPU hours

# Assumed throughput of one A100-class GPU with AMP, in images/s at the given resolution:
# trunk -> (resolution, training, embedding). Planning figures, not measurements: "training"
# is forward + backward + optimizer step of trunk and head at the papers' batch sizes,
# "embedding" a forward pass at eval batch size. Both scale with the pixel count at other
# resolutions; without AMP (train.amp=false) both rates are halved. Data loading is assumed to
# keep up (enough train.num_workers); kNN and k-means time is not counted.
THROUGHPUT: dict[str, tuple[int, float, float]] = {
    "bninception": (227, 1000.0, 3000.0),
    "resnet50": (224, 800.0, 2400.0),
    "googlenet": (224, 1500.0, 4500.0),
    "timm": (224, 800.0, 2400.0),       # any timm:<name>: assumed like ResNet50
}
NEGLIGIBLE_TRUNKS = ("smallcnn",)        # trains on a CPU in minutes: effectively 0 GPU hours


@dataclass
class Estimate:
    """Images through training and evaluation, and the GPU hours they take (nan: unknown).
    `iterations` per epoch, `evaluations` per fit on `eval_set` images each, `fits` in all."""

    train_images: float
    eval_images: float
    gpu_hours: float
    iterations: float = math.nan
    evaluations: int = 0
    eval_set: float = math.nan
    fits: int = 1
    upper_bound: bool = False


def _rates(cfg: dict) -> tuple[float, float] | None:
    trunk = cfg["model"]["trunk"]
    if trunk in NEGLIGIBLE_TRUNKS:
        return math.inf, math.inf
    key = "timm" if trunk.startswith("timm:") else trunk
    if key not in THROUGHPUT:
        return None
    res, train, embed = THROUGHPUT[key]
    scale = (res / cfg["dataset"]["image_size"]) ** 2 * (1.0 if cfg["train"]["amp"] else 0.5)
    return train * scale, embed * scale


def dataset_sizes(cfg: dict, *, measure: bool = False) -> dict[str, float] | None:
    """Image counts of the config's dataset: "train"/"test" (conventional split), "trainval",
    "val" (one MLRC validation fold), "test_mlrc"; from the published counts of CUB/CARS196/SOP
    (the MLRC ones approximated from the class counts) unless `measure` is set, else from the
    loaded dataset. None if the dataset cannot be loaded."""
    import numpy as np

    from bench.data import load_configured
    from bench.data.real import DATASET_INFO
    from protocols.splits import mlrc_folds

    d = cfg["dataset"]
    info = DATASET_INFO.get(d["name"])
    if info is not None and not measure:
        n = info.classes // 2                     # MLRC train+val classes: the first half
        trainval = info.train_images * n / info.train_classes
        return {"train": info.train_images, "test": info.test_images, "trainval": trainval,
                "val": trainval * (n // 4) / n, "test_mlrc": info.images - trainval}
    try:
        ds = load_configured(cfg)
    except UserError:
        return None
    counts = np.bincount(ds.labels, minlength=ds.num_classes)
    folds, test = mlrc_folds(np.arange(ds.num_classes))
    val = float(np.mean([counts[v].sum() for _, v in folds]))
    return {"train": float(counts[ds.train_classes].sum()),
            "test": float(counts[ds.test_classes].sum()),
            "trainval": float(counts[np.concatenate(folds[0])].sum()), "val": val,
            "test_mlrc": float(counts[test].sum())}


def _fit_images(cfg: dict, train_images: float | None, eval_images: float | None
                ) -> tuple[float, float, float, int]:
    """(images trained on, images embedded, iterations per epoch, evaluations) of one fit
    that runs all its epochs."""
    t = cfg["train"]
    iters = t["iterations_per_epoch"] or (max(1, int(train_images) // t["batch_size"])
                                          if train_images is not None else math.nan)
    evals = -(-t["epochs"] // t["eval_every"])  # every k epochs, and the last one
    return (t["epochs"] * iters * t["batch_size"],
            evals * eval_images if eval_images is not None else math.nan, iters, evals)


def _hours(cfg: dict, train_images: float, eval_images: float) -> float:
    rates = _rates(cfg)
    if rates is None:
        return math.nan
    if math.isinf(rates[0]):
        return 0.0
    return (train_images / rates[0] + eval_images / rates[1]) / 3600.0


def estimate_run(cfg: dict, *, measure: bool = False) -> Estimate:
    """GPU hours of one conventional run (all epochs: conventional runs do not stop early
    unless train.patience is set)."""
    sizes = dataset_sizes(cfg, measure=measure) or {}
    train, ev, iters, evals = _fit_images(cfg, sizes.get("train"), sizes.get("test"))
    return Estimate(train, ev, _hours(cfg, train, ev), iters, evals,
                    sizes.get("test", math.nan), upper_bound=cfg["train"]["patience"] is not None)


def estimate_study(ps: PlannedStudy, *, measure: bool = False) -> Estimate:
    """Upper bound of the GPU hours of one MLRC study: (n_trials + reproductions) x folds fits
    that all run to train.epochs (early stopping usually ends them far earlier), plus the
    reproductions' test embeddings."""
    cfg, folds = ps.cfg, ps.opts.num_folds
    n_trials = ps.budget.get("n_trials", ps.opts.n_trials)
    reps = ps.budget.get("reproductions", ps.opts.reproductions)
    sizes = dataset_sizes(cfg, measure=measure) or {}
    fold_train = (sizes["trainval"] - sizes["val"]) if sizes else None
    train, ev, iters, evals = _fit_images(cfg, fold_train, sizes.get("val"))
    fits = (n_trials + reps) * folds
    test = reps * folds * sizes.get("test_mlrc", math.nan)
    return Estimate(fits * train, fits * ev + test, _hours(cfg, fits * train, fits * ev + test),
                    iters, evals, sizes.get("val", math.nan), fits=fits, upper_bound=True)


def throughput_note() -> str:
    """One line stating the throughputs the estimates assume."""
    rates = ", ".join(f"{k} {r}px train {t:.0f} / embed {e:.0f} img/s"
                      for k, (r, t, e) in THROUGHPUT.items())
    return (f"Assumed: one A100-class GPU with AMP ({rates}; timm models like resnet50; "
            f"{', '.join(NEGLIGIBLE_TRUNKS)} ~0; rates scale with pixel count, halved without "
            "AMP; data loading keeps up; kNN/k-means time not counted).")


# ----------------------------------------------------------------------------- published


def published_keys() -> list[str]:
    """The suite keys of the published numbers shipped with dmlbench."""
    return list(dict.fromkeys(_published_table()["suite"]))


def _published_table():
    import pandas as pd

    ref = resources.files("bench").joinpath("published", "published.csv")
    with resources.as_file(ref) as f:
        return pd.read_csv(f)


def load_published(name_or_path: str):
    """Published numbers (a DataFrame with columns method, dataset, metric, value in percent,
    and protocol, source where known): the rows of bench/published/published.csv whose
    `suite` is `name_or_path`, or a CSV file with those columns."""
    import pandas as pd

    p = Path(name_or_path)
    if p.suffix == ".csv" or p.is_file():
        try:
            df = pd.read_csv(p)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read published numbers {str(p)!r}: {e}") from None
    else:
        table = _published_table()
        df = table[table["suite"] == name_or_path]
        if df.empty:
            raise UserError(f"no published numbers named {name_or_path!r}; valid names: "
                            f"{', '.join(published_keys())} (or give a CSV file with columns "
                            "method, dataset, metric, value)")
    missing = {"method", "dataset", "metric", "value"} - set(df.columns)
    if missing:
        raise UserError(f"published numbers {name_or_path!r} lack column(s) "
                        f"{', '.join(sorted(missing))}; expected method, dataset, metric, "
                        "value (percent) and optionally protocol, source")
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- running


def _done(run_dir: Path, cfg: dict) -> bool:
    """A finished record of exactly this config (same fingerprint) is in `run_dir`."""
    from bench.records import fingerprint

    fp = fingerprint(cfg)
    return (run_dir / "record.json").exists() and any(
        r.get("status") in ("completed", "diverged") and r.get("fingerprint") == fp
        for r in read_records(run_dir))


def prepare(name_or_path: str, overrides: list[str] | None = None, out_dir: str | None = None,
            *, search: dict[str, Any] | None = None, smoke: bool = False
            ) -> tuple[dict, Path, list[PlannedRun], list[PlannedStudy], Path]:
    """(suite, out dir, conventional runs, MLRC studies, MLRC out dir) of a suite; in smoke
    mode the suite is cut down and its fixture trees are written to OUT/smoke-data."""
    suite = load_suite(name_or_path)
    default = Path(C.defaults()["run"]["output"]) / (suite["name"] + ("-smoke" if smoke else ""))
    out = Path(out_dir or default)
    root = None
    if smoke:
        suite = smoke_suite(suite)
        root = out / "smoke-data"
    runs = plan(suite, overrides or [], out, smoke_root=root)
    studies, mout = plan_mlrc(suite, overrides or [], out, search, smoke_root=root)
    if smoke:
        from bench.data.fixtures import build_fixture_tree

        build_fixture_tree(root, smoke_datasets(runs, studies))
    return suite, out, runs, studies, mout


def run_suite(name_or_path: str, overrides: list[str] | None = None, out_dir: str | None = None,
              *, log=print, search: dict[str, Any] | None = None,
              threads: int | None = None, smoke: bool = False) -> dict[str, Any]:
    """Run (or resume) a suite; returns {"out_dir", "records", "tables", "failed", "suite",
    "mlrc"}; "mlrc" (None without an MLRC part) holds its "out_dir", "tables", "studies" and
    "importance" (report paths by study). `search` overrides the suite's MLRC search settings
    (e.g. {"storage": URL, "workers": 2}); `threads` sets the MLRC workers' torch threads;
    `smoke` runs the suite in smoke mode (see the module docstring; default out
    runs/NAME-smoke)."""
    from bench.data import load_configured
    from bench.records import check_output_dir, write_manifest
    from results.html import write_html_report
    from results.tables import write_tables

    suite, out, runs, studies, mout = prepare(name_or_path, overrides, out_dir, search=search,
                                              smoke=smoke)
    published = load_published(suite["published"]) if suite.get("published") else None
    if smoke and threads is None:
        threads = 1
    if studies:
        from protocols import study as S

        for url in dict.fromkeys(ps.opts.storage for ps in studies if ps.opts.storage):
            S.open_storage(url)  # an unreachable storage fails before any training
    datasets: dict[str, Any] = {}

    def dataset_for(cfg: dict) -> Any:
        key = repr((cfg["dataset"]["name"], cfg["dataset"]["root"], cfg["dataset"]["options"]))
        if key not in datasets:
            datasets[key] = load_configured(cfg)
        return datasets[key]

    for folder in ([out] if runs else []) + ([mout] if studies else []):
        check_output_dir(folder)   # a folder that cannot hold results fails before training
    records, failed, held = [], [], []
    for i, pr in enumerate(runs, 1):
        cfg = pr.cfg
        label = f"[{i}/{len(runs)}] {cfg['dataset']['name']} {cfg['run']['name'] or cfg['method']['name']} seed {cfg['run']['seed']}"
        if _done(pr.run_dir, cfg):
            log(f"{label}: done before, skipped")
            continue
        rec = _run_once(pr, label, failed, log, dataset_for, suite["name"], wait=False)
        if rec is _HELD:
            held.append((label, pr))
        elif rec is not None:
            records.append(rec)
    # runs another process held: wait for it; train any it left undone (it died)
    for label, pr in held:
        log(f"{label}: waiting for the other process to finish it")
        rec = _run_once(pr, label, failed, log, dataset_for, suite["name"], wait=True)
        if rec is not None:
            records.append(rec)
    report = suite.get("report") or {}
    tables = {}
    if runs:
        write_manifest(out, [pr.run_dir.name for pr in runs], suite["name"])
        tables = write_tables(out, which=report.get("which", "best"), ci=report.get("ci", False),
                              published=published)
    mlrc = None
    if studies:
        write_manifest(mout, [ps.study for ps in studies], suite["name"])
        mlrc = _run_mlrc_part(suite, studies, mout, dataset_for, failed, threads, log,
                              published)
        records += mlrc.pop("records")
    html = _attempt("HTML report", failed, log, lambda: write_html_report(
        [d for d, has in ((out, bool(runs)), (mout, bool(studies))) if has], out / "report.html",
        published=published, which=report.get("which", "best")))
    if html is not None:
        log(f"HTML report: {html}")
    return {"out_dir": out, "records": records, "tables": tables, "failed": failed,
            "suite": copy.deepcopy(suite), "mlrc": mlrc, "html": html}


_HELD = object()


def _run_once(pr: PlannedRun, label: str, failed: list, log, dataset_for, suite_name: str, *,
              wait: bool):
    """Run `pr` under its folder's lock unless it is done: its record, None (done by another
    process, or failed), or _HELD when another process holds the run (without `wait`)."""
    from bench.records import RunHeld
    from protocols.conventional import run_conventional, run_guard

    cfg = pr.cfg
    try:
        with run_guard(pr.run_dir, wait=wait):
            if _done(pr.run_dir, cfg):  # finished by another process since we looked
                log(f"{label}: done by another process, skipped")
                return None
            rec = _attempt(label, failed, log, lambda: run_conventional(
                cfg, pr.run_dir, suite=suite_name, dataset=dataset_for(cfg),
                position=pr.position))
    except RunHeld as e:
        log(f"{label}: held by another process, skipped ({e.holder})")
        return _HELD
    if rec is None:
        return None
    if rec["status"] == "diverged":
        log(f"{label}: diverged ({rec['error']})")
    else:
        m = rec["best"]["metrics"]
        log(f"{label}: P@1 {100 * m['precision_at_1']:.2f}  MAP@R "
            f"{100 * m['mean_average_precision_at_r']:.2f}  ({rec['wall_time_s']:.0f} s, "
            f"{rec['images_per_s']:.0f} img/s)")
    return rec


def _attempt(label: str, failed: list, log, fn):
    """`fn()`, or None after recording a failure: a UserError (the user's to fix) ends the
    suite; any other exception (a bug, the environment) is logged and the suite goes on."""
    try:
        return fn()
    except UserError:
        raise
    except Exception as e:
        failed.append((label, e))
        log(f"{label}: FAILED ({type(e).__name__}: {e})")
        traceback.print_exc(file=sys.stderr)
        return None


def attach_importance_report(study: Any, paths: dict[str, Path],
                             artifact_dir: "str | Path") -> dict[str, str]:
    """Attach an importance report's files (importance.md and its PNGs) to `study` as Optuna
    artifacts in a FileSystemArtifactStore at `artifact_dir`, for optuna-dashboard (`optuna-
    dashboard STORAGE --artifact-dir ARTIFACT_DIR`). A file already attached under its name is
    rewritten under the same artifact id, so a re-run adds no duplicate. Returns {file name:
    artifact id}."""
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(artifact_dir))
    attached = {m.filename: m.artifact_id for m in get_all_artifact_meta(study)}
    out = {}
    for path in map(Path, paths.values()):
        if path.name in attached:
            with open(path, "rb") as f:
                store.write(attached[path.name], f)
            out[path.name] = attached[path.name]
        else:
            out[path.name] = upload_artifact(artifact_store=store, file_path=str(path),
                                             study_or_trial=study)
    return out


def _run_mlrc_part(suite: dict[str, Any], studies: list[PlannedStudy], mout: Path,
                   dataset_for, failed: list, threads: int | None, log,
                   published=None) -> dict[str, Any]:
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
        res = _attempt(label, failed, log, lambda: run_mlrc(
            cfg, ps.opts, ps.out_dir, suite=suite["name"], dataset=dataset_for(cfg),
            threads=threads, log=log))
        if res is None:
            continue
        names.append(res["study"])
        records += res["records"]
        if res["status"] == "failed":
            failed.append((label, RuntimeError(res["message"])))
            log(f"{label}: FAILED ({res['message']})")
        try:
            st = S.open_storage(ps.opts.storage or default_storage(ps.out_dir))
            study = S.load_study(res["study"], st)
            paths = write_importance_report(study, ps.out_dir / res["study"] / "importance")
            importance[res["study"]] = paths["markdown"]
            log(f"{label}: importance report {paths['markdown']}")
            attach_importance_report(study, paths, ps.out_dir / res["study"] / "artifacts")
        except UserError:
            raise
        except Exception as e:
            log(f"{label}: importance report failed ({type(e).__name__}: {e})")
    report = part.get("report") or {}
    tables = {}
    if any(r.get("status") == "completed" for r in records) or any(mout.rglob("record.json")):
        tables = write_tables(mout, which=report.get("which", "best"), ci=report.get("ci", True),
                              published=published)
    return {"out_dir": mout, "tables": tables, "studies": names, "importance": importance,
            "records": records}
