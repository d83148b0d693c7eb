"""One trial of an MLRC search: sample the parameters, train the folds, return the mean of
the folds' best validation MAP@R.

A trial trains fold p = 0..F-1 on the fold's train classes with seed `seed * 1000 + p`,
validating MAP@R on its val classes every `train.eval_every` epochs with early stopping
(`train.patience`). Every evaluation is reported as an intermediate value at step
`fold * train.epochs + epoch`. Trial user attributes: `fold_P` (value, best epoch, epochs run,
timing, curve), the flat `fold_P_map_at_r`, `fold_P_best_epoch`, `fold_P_epochs_run`,
`fold_P_fit_s`, and `fold_values`, `fold_sem`, `timing`; a diverged fold ends the trial as FAIL
with `fail_reason` (`TrialFailed`); with pruning, the pruner decides after each fold on the
running mean over folds and a pruned trial records `pruned_after_folds` (`make_objective` says
how). Fold checkpoints live in `OUT/STUDY/trial-NNNN/fold-P/` (a re-queued trial uses the
folder of the trial it retries, so its finished folds are skipped and the fold in progress
resumes) and are deleted once the fold's result is recorded.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

from dmlbench.bench import config as C
from dmlbench.bench.data import DMLDataset
from dmlbench.bench.data.loading import Split
from dmlbench.bench.errors import UserError
from dmlbench.bench.optuna_internals import trial_id
from dmlbench.bench.records import atomic_write_text
from dmlbench.bench.train import fit
from dmlbench.protocols.mlrc.search import distribution, suggest
from dmlbench.protocols.mlrc.storage import original_number
from dmlbench.protocols.splits import mlrc_folds

MAP_R = "mean_average_precision_at_r"
# a fold's summary key -> the name of its flat user attribute fold_P_<name>
FLAT_KEYS = {"value": "map_at_r", "best_epoch": "best_epoch", "epochs_run": "epochs_run",
             "fit_s": "fit_s"}


class TrialFailed(Exception):
    """A trial that ends as FAIL with a recorded reason; the study goes on."""


class FoldData:
    """The class splits of a dataset, built once per process."""

    def __init__(self, ds: DMLDataset, num_folds: int) -> None:
        folds, test = mlrc_folds(np.arange(ds.num_classes), num_folds)
        self.ds = ds
        self.folds = [(Split.of_classes(ds, tr), Split.of_classes(ds, va)) for tr, va in folds]
        self.test = Split.of_classes(ds, test)


def fold_config(cfg: dict, params: dict[str, Any], seed: int) -> dict:
    """The validated config of one fold fit: `params` for the method, `seed`, MAP@R selection."""
    c = copy.deepcopy(cfg)
    c["method"]["params"] = dict(params)
    c["run"]["seed"] = int(seed)
    c["run"]["protocol"] = "mlrc"
    c["eval"]["metrics"] = [MAP_R]
    c["train"]["select_by"] = MAP_R
    return C.validate(c)


def sem(values: list[float]) -> float:
    """Standard error of the mean (NaN for fewer than two values)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


def _fold_summary(res, wall_s: float) -> dict[str, Any]:
    return {"value": res.best["metrics"][MAP_R], "best_epoch": res.best["epoch"],
            "epochs_run": res.epochs_run, "stopped_early": res.stopped_early,
            "fit_s": wall_s, "train_s": res.timing["train_s"], "eval_s": res.timing["eval_s"]}


# ----------------------------------------------------------------------------- pruning


def _running_means(values: list[float]) -> dict[int, float]:
    return {q: float(np.mean(values[:q + 1])) for q in range(len(values))}


class _RunningMeanStudy:
    """What a pruner reads of a study, with the running-mean trials."""

    def __init__(self, study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> None:
        self._study = study
        self._trials = trials
        self.direction, self.directions = study.direction, study.directions

    def get_trials(self, deepcopy: bool = True, states=None):
        return [t for t in self._trials if states is None or t.state in states]

    @property
    def trials(self):
        return list(self._trials)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def should_prune(trial: optuna.Trial, values: list[float]) -> bool:
    """The study's pruner on running means over folds: every trial seen with the intermediate
    values {fold q: mean of its folds 0..q} (from `fold_values`), this one with `values`."""
    study = trial.study
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number:
            iv, state = _running_means(values), optuna.trial.TrialState.RUNNING
        else:
            fv = t.user_attrs.get("fold_values")
            iv = _running_means(fv) if isinstance(fv, list) else dict(t.intermediate_values)
            state = t.state
        trials.append(optuna.trial.FrozenTrial(
            number=t.number, state=state, value=t.value if state.is_finished() else None,
            datetime_start=t.datetime_start, datetime_complete=t.datetime_complete,
            params=t.params, distributions=t.distributions, user_attrs=t.user_attrs,
            system_attrs=t.system_attrs, intermediate_values=iv, trial_id=trial_id(t)))
    current = next(t for t in trials if t.number == trial.number)
    return study.pruner.prune(_RunningMeanStudy(study, trials), current)


# ----------------------------------------------------------------------------- one trial


class _Reporter:
    """Reports a fold's evaluations as intermediate values, each step once (Optuna keeps the
    first value of a step and warns)."""

    def __init__(self, trial: optuna.Trial, epochs: int) -> None:
        self.trial, self.epochs = trial, epochs
        self.reported: set[int] = set()

    def __call__(self, p: int, epoch: int, value: float) -> None:
        step = p * self.epochs + int(epoch)
        if step not in self.reported and math.isfinite(value):
            self.reported.add(step)
            self.trial.report(float(value), step)


def _fail(trial: optuna.Trial, reason: str) -> TrialFailed:
    trial.set_user_attr("fail_reason", reason)
    return TrialFailed(reason)


class _Objective:
    """The objective `make_objective` returns (see there)."""

    def __init__(self, settings: dict[str, Any], data: FoldData, out_dir: "str | Path",
                 study_name: str, threads: int | None) -> None:
        exp = settings["experiment"]
        self.cfg = copy.deepcopy(settings["config"])
        if threads:
            self.cfg["train"]["threads"] = threads
        self.dists = {k: distribution(v, k) for k, v in exp["space"].items()}
        self.fixed = exp["fixed"]
        self.seed = exp["seed"]
        self.prune = exp["pruner"] != "none"
        self.root = Path(out_dir) / study_name
        self.epochs = int(self.cfg["train"]["epochs"])
        self.data = data

    def __call__(self, trial: optuna.Trial) -> float:
        t_start = time.perf_counter()
        params = {**self.fixed, **{k: suggest(trial, k, d) for k, d in self.dists.items()}}
        tdir = self.root / f"trial-{original_number(trial.study, trial):04d}"
        values: list[float] = []
        timing = {"fit_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
        report = _Reporter(trial, self.epochs)
        for p, (train, val) in enumerate(self.data.folds):
            fdir = tdir / f"fold-{p}"
            done = self._earlier_result(trial, p, fdir, params)
            if done is None:
                done = self._train_fold(trial, p, train, val, fdir, params, report)
                for k in timing:
                    timing[k] += done[k]
            # evaluations restored from a checkpoint, or a retried trial's finished folds
            for epoch, value in done.get("curve") or []:
                report(p, epoch, value)
            for key, name in FLAT_KEYS.items():
                if key in done and trial.user_attrs.get(f"fold_{p}_{name}") != done[key]:
                    trial.set_user_attr(f"fold_{p}_{name}", done[key])
            values.append(float(done["value"]))
            if self.prune and p < len(self.data.folds) - 1 and should_prune(trial, values):
                trial.set_user_attr("pruned_after_folds", p + 1)
                trial.set_user_attr("fold_values", values)
                raise optuna.TrialPruned(f"pruned after {p + 1} folds")
        trial.set_user_attr("fold_values", values)
        trial.set_user_attr("fold_sem", sem(values))
        timing["trial_s"] = time.perf_counter() - t_start
        trial.set_user_attr("timing", timing)
        return float(np.mean(values))

    @staticmethod
    def _earlier_result(trial: optuna.Trial, p: int, fdir: Path,
                        params: dict[str, Any]) -> dict[str, Any] | None:
        """Fold p's result recorded before (in the trial, or in the folder of the trial this
        one retries, for the same parameters), else None."""
        done = trial.user_attrs.get(f"fold_{p}")
        if done is None and (fdir / "result.json").exists():
            saved = json.loads((fdir / "result.json").read_text())
            if saved.get("params") == json.loads(json.dumps(params)):
                done = saved["result"]
        return done

    def _train_fold(self, trial: optuna.Trial, p: int, train: Split, val: Split, fdir: Path,
                    params: dict[str, Any], report: _Reporter) -> dict[str, Any]:
        """Fit fold p (resuming from its checkpoint), record its result; TrialFailed when the
        fit diverged or refused."""
        fcfg = fold_config(self.cfg, params, self.seed * 1000 + p)
        t0 = time.perf_counter()
        try:
            res = fit(fcfg, train, val, run_dir=fdir, selection_set="val",
                      on_evaluation=lambda e: report(p, e["epoch"], e["metrics"][MAP_R]))
        except UserError as e:
            trial.set_user_attr("fail_reason", f"fold {p}: {e}")
            raise TrialFailed(str(e)) from None
        if res.status != "completed" or res.best is None:
            res.remove_checkpoints()
            raise _fail(trial, f"fold {p} {res.status}: {res.error}")
        done = {**_fold_summary(res, time.perf_counter() - t0),
                "curve": [[e["epoch"], e["metrics"][MAP_R]] for e in res.evaluations]}
        if not math.isfinite(done["value"]):
            raise _fail(trial, f"fold {p}: validation MAP@R is {done['value']}")
        atomic_write_text(fdir / "result.json", json.dumps(
            {"params": params, "result": done}, indent=1, default=str))
        trial.set_user_attr(f"fold_{p}", done)
        res.remove_checkpoints()
        return done


def make_objective(settings: dict[str, Any], data: FoldData, out_dir: "str | Path",
                   study_name: str, *, threads: int | None = None
                   ) -> Callable[[optuna.Trial], float]:
    """The Optuna objective of a study: sample, train the folds, return the mean MAP@R.

    What a trial records for optuna-dashboard: an intermediate value at every evaluation of
    every fold, the fold's validation MAP@R at step `fold * train.epochs + epoch` (epoch from
    1; a resumed or retried fold reports its earlier evaluations once, at the same steps), and
    per fold the flat user attributes `fold_P_map_at_r`, `fold_P_best_epoch`,
    `fold_P_epochs_run` and `fold_P_fit_s` beside the nested `fold_P` (which also holds the
    fold's `curve`, [[epoch, value], ...]). With a pruner, the decision is still taken between
    folds on the running mean over the finished folds: the pruner sees every trial with the
    intermediate values {fold q: mean of its folds 0..q} (from `fold_values`), not the
    per-epoch curves; a pruned trial's value is its last reported evaluation.
    """
    return _Objective(settings, data, out_dir, study_name, threads)
