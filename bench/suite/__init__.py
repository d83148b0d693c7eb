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
      storage: null                  # default: sqlite file OUT/studies.db; see protocols/mlrc/storage.py
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

Smoke mode (`run_suite(..., smoke=True)`, `dmlbench suite NAME --smoke`, bench.suite.smoke) runs every run of a
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

from dmlbench.bench.suite.estimate import (NEGLIGIBLE_TRUNKS, THROUGHPUT, Estimate, dataset_sizes,
                                  estimate_run, estimate_study, throughput_note)
from dmlbench.bench.suite.plan import plan, plan_mlrc
from dmlbench.bench.suite.published import load_published, published_keys
from dmlbench.bench.suite.runner import attach_importance_report, mlrc_experiment, prepare, run_suite
from dmlbench.bench.suite.schema import (MLRC_PART_KEYS, RUN_KEYS, SUITE_KEYS, PlannedRun, PlannedStudy,
                                list_suites, load_suite, mlrc_part)
from dmlbench.bench.suite.smoke import (SMOKE_CONFIG, SMOKE_PARAMS, SMOKE_SEARCH, smoke_datasets,
                               smoke_suite)

__all__ = ["Estimate", "MLRC_PART_KEYS", "NEGLIGIBLE_TRUNKS", "PlannedRun", "PlannedStudy",
           "RUN_KEYS", "SMOKE_CONFIG", "SMOKE_PARAMS", "SMOKE_SEARCH", "SUITE_KEYS", "THROUGHPUT",
           "attach_importance_report", "dataset_sizes", "estimate_run", "estimate_study",
           "list_suites", "load_published", "load_suite", "mlrc_experiment", "mlrc_part", "plan",
           "plan_mlrc",
           "prepare", "published_keys", "run_suite", "smoke_datasets", "smoke_suite",
           "throughput_note"]
