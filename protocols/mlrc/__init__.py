"""The MLRC protocol: a 4-fold cross-validated Optuna search, then the best configuration
retrained R times and evaluated on the test set, separated and concatenated (specs/mlrc.md).

One study per (dataset, method, protocol settings), named
`mlrc--DATASET--NAME--HASH` where HASH is a short hash of the settings that define the
experiment (config without execution details such as threads or progress bars, the search space,
fixed parameters, sampler, pruner, seed, folds). The study keeps every setting a worker needs
as its user attribute `dmlbench`, so `dmlbench worker STUDY --storage URL` can join with nothing
else. Re-running a command continues its study (finished trials and final-evaluation records are
skipped; a fold in progress resumes from its checkpoint); a command whose settings differ from
the stored ones (e.g. another n_trials) stops with a UserError.

A trial samples the method's parameters (registry search space, overridable per suite run),
trains fold p = 0..3 on the fold's train classes with seed `seed * 1000 + p`, validating MAP@R on
its val classes every `train.eval_every` epochs with early stopping (`train.patience`), and
returns the mean of the folds' best validation MAP@R. Every evaluation is reported as an
intermediate value at step `fold * train.epochs + epoch`. Trial user attributes: `fold_P`
(value, best epoch, epochs run, timing, curve), the flat `fold_P_map_at_r`, `fold_P_best_epoch`,
`fold_P_epochs_run`, `fold_P_fit_s`, and `fold_values`, `fold_sem`, `timing`, `worker`; a
diverged fold ends the trial as FAIL with `fail_reason`; with pruning, the pruner decides after
each fold on the running mean over folds and a pruned trial records `pruned_after_folds`
(`make_objective` says how). Fold checkpoints live
in `OUT/STUDY/trial-NNNN/fold-P/` (a re-queued trial uses the folder of the trial it retries,
so its finished folds are skipped and the fold in progress resumes) and are deleted once the
fold's result is recorded.

Final evaluation: reproduction r (r = 0..R-1, seed `seed + 1 + r`) retrains the 4 folds with the
best parameters (fold seed `rep_seed * 1000 + p`, same early stopping on the val classes), keeps
each fold's best-validation weights, embeds the test set (compared to itself) and writes
`OUT/STUDY/final/rep-r/record.json` (protocol "mlrc"): `mlrc.separated` (mean and SEM over the
fold models), `mlrc.concatenated` (fold embeddings L2-normalised, concatenated, L2-normalised
again) with P@1, RP, MAP@R, NMI and F1, plus the study, best trial and parameters.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

from dmlbench.bench import config as C
from dmlbench.bench.data import DMLDataset, load_configured
from dmlbench.bench.data.loading import Split
from dmlbench.bench.errors import UserError
from dmlbench.bench import records as R
from dmlbench.bench.evaluate import compute_metrics, l2_normalize
from dmlbench.bench.optuna_internals import trial_id
from dmlbench.bench.records import LOCK_FILE, RunHeld, atomic_write_text, check_output_dir, now_iso
from dmlbench.bench.train import embed, fit
from dmlbench.methods import get_method, resolve_params
from dmlbench.protocols import study as S
from dmlbench.protocols.conventional import determinism, run_guard
from dmlbench.protocols.mlrc.options import SearchOptions
from dmlbench.protocols.splits import check_mlrc_classes, mlrc_folds

MAP_R = "mean_average_precision_at_r"
FINAL_METRICS = ["precision_at_1", "r_precision", MAP_R, "nmi", "f1"]
# Config keys that change how a fit runs, not what it computes: left out of the study's identity.
# (a run's execution keys, bench.records.EXECUTION_KEYS, and the protocol and seed, which the
# study's own settings fix).
EXECUTION_KEYS = {**R.EXECUTION_KEYS, "run": (*R.EXECUTION_KEYS["run"], "protocol", "seed")}
RECORD = "record.json"


# ----------------------------------------------------------------------------- settings


def search_space(method: str, fixed: dict[str, Any], overrides: dict[str, Any]
                 ) -> tuple[dict[str, list], dict[str, Any]]:
    """(space, fixed): the registry space of `method`, with `overrides` (param -> new range or
    a fixed value) applied and the `fixed` parameters taken out of it."""
    spec = get_method(method)
    space = {k: list(v) for k, v in spec.search_space.items()}
    fixed = dict(fixed)
    for name, value in (overrides or {}).items():
        if name not in spec.defaults:
            valid = ", ".join(sorted(spec.defaults)) or "(none)"
            raise UserError(f"search space override {name!r}: method {method!r} has no such "
                            f"parameter; its parameters are: {valid}")
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
            space[name] = list(value)
            fixed.pop(name, None)
        else:
            fixed[name] = value
    for name in fixed:
        space.pop(name, None)
    for name, spec_ in space.items():
        S.distribution(spec_, name)
    resolve_params(method, fixed)
    return space, fixed


def _identity_config(cfg: dict[str, Any]) -> dict[str, Any]:
    out = R.result_config(cfg, EXECUTION_KEYS)
    out["method"].pop("params", None)
    return out


def build_settings(cfg: dict[str, Any], opts: SearchOptions, out_dir: "str | Path",
                   suite: str | None = None) -> tuple[str, dict[str, Any]]:
    """(study name, settings stored with the study)."""
    method = cfg["method"]["name"]
    space, fixed = search_space(method, cfg["method"]["params"], opts.space)
    seed = cfg["run"]["seed"] if opts.seed is None else opts.seed
    n_trials = opts.n_trials
    if not space:
        n_trials = 1
    dists = {k: S.distribution(v, k) for k, v in space.items()}
    if opts.sampler == "grid" and space:
        n_trials = min(n_trials, S.PerTrialSeededSampler("grid", 0, dists, opts.grid_points)
                       .grid_size())
    experiment = {
        "protocol": "mlrc", "config": _identity_config(cfg), "space": space, "fixed": fixed,
        "sampler": opts.sampler, "pruner": opts.pruner, "seed": seed,
        "num_folds": opts.num_folds,
    }
    if opts.sampler == "grid":
        experiment["grid_points"] = opts.grid_points
    budget = {"n_trials": n_trials, "reproductions": opts.reproductions,
              "max_failed": opts.max_failed or max(n_trials, 3)}
    label = cfg["run"]["name"] or method
    name = opts.study or f"mlrc--{cfg['dataset']['name']}--{label}--{S.settings_hash(experiment)}"
    settings = {
        "version": 1, "experiment": experiment, "budget": budget, "config": cfg,
        "execution": {"out_dir": str(Path(out_dir).resolve()), "suite": suite,
                      "heartbeat_interval": opts.heartbeat_interval,
                      "grace_period": opts.grace_period, "created": now_iso()},
    }
    return name, json.loads(json.dumps(settings, default=str))


def default_storage(out_dir: "str | Path") -> str:
    return f"sqlite:///{Path(out_dir) / 'studies.db'}"


# ----------------------------------------------------------------------------- one trial


class FoldData:
    """The class splits of a dataset, built once per process."""

    def __init__(self, ds: DMLDataset, num_folds: int) -> None:
        folds, test = mlrc_folds(np.arange(ds.num_classes), num_folds)
        self.ds = ds
        self.folds = [(Split.of_classes(ds, tr), Split.of_classes(ds, va)) for tr, va in folds]
        self.test = Split.of_classes(ds, test)


def fold_config(cfg: dict, params: dict[str, Any], seed: int) -> dict:
    c = copy.deepcopy(cfg)
    c["method"]["params"] = dict(params)
    c["run"]["seed"] = int(seed)
    c["run"]["protocol"] = "mlrc"
    c["eval"]["metrics"] = [MAP_R]
    c["train"]["select_by"] = MAP_R
    return C.validate(c)


def _fold_summary(res, wall_s: float) -> dict[str, Any]:
    return {"value": res.best["metrics"][MAP_R], "best_epoch": res.best["epoch"],
            "epochs_run": res.epochs_run, "stopped_early": res.stopped_early,
            "fit_s": wall_s, "train_s": res.timing["train_s"], "eval_s": res.timing["eval_s"]}


def _sem(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


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
    exp = settings["experiment"]
    cfg = copy.deepcopy(settings["config"])
    if threads:
        cfg["train"]["threads"] = threads
    dists = {k: S.distribution(v, k) for k, v in exp["space"].items()}
    fixed = exp["fixed"]
    seed = exp["seed"]
    prune = exp["pruner"] != "none"
    root = Path(out_dir) / study_name
    epochs = int(cfg["train"]["epochs"])
    flat_keys = {"value": "map_at_r", "best_epoch": "best_epoch", "epochs_run": "epochs_run",
                 "fit_s": "fit_s"}

    def running_means(values: list[float]) -> dict[int, float]:
        return {q: float(np.mean(values[:q + 1])) for q in range(len(values))}

    def should_prune(trial: optuna.Trial, values: list[float]) -> bool:
        """The study's pruner on running means over folds (see the docstring above)."""
        study = trial.study
        trials = []
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number:
                iv, state = running_means(values), optuna.trial.TrialState.RUNNING
            else:
                fv = t.user_attrs.get("fold_values")
                iv = running_means(fv) if isinstance(fv, list) else dict(t.intermediate_values)
                state = t.state
            trials.append(optuna.trial.FrozenTrial(
                number=t.number, state=state, value=t.value if state.is_finished() else None,
                datetime_start=t.datetime_start, datetime_complete=t.datetime_complete,
                params=t.params, distributions=t.distributions, user_attrs=t.user_attrs,
                system_attrs=t.system_attrs, intermediate_values=iv, trial_id=trial_id(t)))
        current = next(t for t in trials if t.number == trial.number)

        class View:
            """What a pruner reads of a study, with the running-mean trials."""
            direction, directions = study.direction, study.directions

            def get_trials(self, deepcopy: bool = True, states=None):
                return [t for t in trials if states is None or t.state in states]

            @property
            def trials(self):
                return list(trials)

            def __getattr__(self, name: str) -> Any:
                return getattr(study, name)

        return study.pruner.prune(View(), current)

    def objective(trial: optuna.Trial) -> float:
        t_start = time.perf_counter()
        study = trial.study
        sampled = {k: S.suggest(trial, k, d) for k, d in dists.items()}
        params = {**fixed, **sampled}
        origin = S.original_number(study, trial)
        tdir = root / f"trial-{origin:04d}"
        values: list[float] = []
        timing = {"fit_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
        reported: set[int] = set()   # Optuna keeps the first value of a step and warns

        def report(p: int, epoch: int, value: float) -> None:
            step = p * epochs + int(epoch)
            if step not in reported and math.isfinite(value):
                reported.add(step)
                trial.report(float(value), step)

        for p, (train, val) in enumerate(data.folds):
            fdir = tdir / f"fold-{p}"
            done = trial.user_attrs.get(f"fold_{p}")
            if done is None and (fdir / "result.json").exists():
                saved = json.loads((fdir / "result.json").read_text())
                if saved.get("params") == json.loads(json.dumps(params)):
                    done = saved["result"]
            if done is None:
                fcfg = fold_config(cfg, params, seed * 1000 + p)
                t0 = time.perf_counter()
                try:
                    res = fit(fcfg, train, val, run_dir=fdir, selection_set="val",
                              on_evaluation=lambda e, p=p: report(p, e["epoch"],
                                                                  e["metrics"][MAP_R]))
                except UserError as e:
                    trial.set_user_attr("fail_reason", f"fold {p}: {e}")
                    raise S.TrialFailed(str(e)) from None
                if res.status != "completed" or res.best is None:
                    reason = f"fold {p} {res.status}: {res.error}"
                    trial.set_user_attr("fail_reason", reason)
                    res.remove_checkpoints()
                    raise S.TrialFailed(reason)
                done = {**_fold_summary(res, time.perf_counter() - t0),
                        "curve": [[e["epoch"], e["metrics"][MAP_R]] for e in res.evaluations]}
                if not math.isfinite(done["value"]):
                    reason = f"fold {p}: validation MAP@R is {done['value']}"
                    trial.set_user_attr("fail_reason", reason)
                    raise S.TrialFailed(reason)
                atomic_write_text(fdir / "result.json", json.dumps(
                    {"params": params, "result": done}, indent=1, default=str))
                trial.set_user_attr(f"fold_{p}", done)
                res.remove_checkpoints()
                for k in timing:
                    timing[k] += done[k]
            # evaluations restored from a checkpoint, or a retried trial's finished folds
            for epoch, value in done.get("curve") or []:
                report(p, epoch, value)
            attrs = trial.user_attrs
            for key, name in flat_keys.items():
                if key in done and attrs.get(f"fold_{p}_{name}") != done[key]:
                    trial.set_user_attr(f"fold_{p}_{name}", done[key])
            values.append(float(done["value"]))
            if prune and p < len(data.folds) - 1 and should_prune(trial, values):
                trial.set_user_attr("pruned_after_folds", p + 1)
                trial.set_user_attr("fold_values", values)
                raise optuna.TrialPruned(f"pruned after {p + 1} folds")
        value = float(np.mean(values))
        trial.set_user_attr("fold_values", values)
        trial.set_user_attr("fold_sem", _sem(values))
        timing["trial_s"] = time.perf_counter() - t_start
        trial.set_user_attr("timing", timing)
        return value

    return objective


# ----------------------------------------------------------------------------- workers


def run_worker(study_name: str, storage: str, *, out_dir: "str | Path | None" = None,
               max_trials: int | None = None, threads: int | None = None,
               data: FoldData | None = None, log: Callable[[str], None] = print
               ) -> S.WorkerSummary:
    """Join a study created by dmlbench and run its trials until its budget is spent."""
    st = S.open_storage(storage)
    study = S.load_study(study_name, st)
    settings = S.study_settings(study)
    return work_on(study_name, st, settings, out_dir=out_dir, max_trials=max_trials,
                   threads=threads, data=data, log=log)


def work_on(study_name: str, st: S.Storage, settings: dict[str, Any], *,
            out_dir: "str | Path | None" = None, max_trials: int | None = None,
            threads: int | None = None, data: FoldData | None = None,
            log: Callable[[str], None] = print) -> S.WorkerSummary:
    ex, exp, budget = settings["execution"], settings["experiment"], settings["budget"]
    S.set_heartbeat(st, ex["heartbeat_interval"], ex["grace_period"])
    dists = {k: S.distribution(v, k) for k, v in exp["space"].items()}
    sampler = S.PerTrialSeededSampler(exp["sampler"], exp["seed"], dists,
                                      exp.get("grid_points", 3))
    study = S.load_study(study_name, st, sampler=sampler, pruner=S.make_pruner(exp["pruner"]))
    if data is None:
        data = FoldData(load_configured(settings["config"]), exp["num_folds"])
    out = Path(out_dir) if out_dir is not None else Path(ex["out_dir"])
    objective = make_objective(settings, data, out, study_name, threads=threads)
    n = budget["n_trials"]

    def logged(trial: optuna.Trial) -> float:
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            log(f"  trial {trial.number}: pruned after {trial.user_attrs.get('pruned_after_folds')}"
                " folds")
            raise
        except S.TrialSkipped:
            raise
        except S.TrialFailed as e:
            log(f"  trial {trial.number}: FAILED ({e})")
            raise
        vals = " ".join(f"{100 * v:.2f}" for v in trial.user_attrs["fold_values"])
        log(f"  trial {trial.number}: MAP@R {100 * value:.2f} (folds {vals}) "
            f"{_params_text(trial.params)}")
        return value

    return S.run_trials(study, logged, n_trials=n, max_failed=budget["max_failed"],
                        max_trials=max_trials, log=log)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def spawn_workers(study_name: str, storage: str, n: int, out_dir: "str | Path", *,
                  threads: int | None = None, quiet: bool = True) -> list[subprocess.Popen]:
    """Start `n` `dmlbench worker` processes on this machine for a study."""
    procs = []
    for _ in range(n):
        cmd = [sys.executable, "-m", "dmlbench.bench.cli", "worker", study_name, "--storage", storage,
               "--out", str(out_dir)]
        if threads:
            cmd += ["--threads", str(threads)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL if quiet else None,
                                      stderr=subprocess.DEVNULL if quiet else None))
    return procs


# ----------------------------------------------------------------------------- final evaluation


def _finished_record(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("status") in ("completed", "diverged") \
        else None


def final_evaluation(study: optuna.Study, settings: dict[str, Any], data: FoldData,
                     out_dir: "str | Path", *, storage_display: str = "",
                     log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Retrain the best trial's parameters R times on the folds; one record per reproduction."""
    exp, budget = settings["experiment"], settings["budget"]
    cfg = settings["config"]
    best = study.best_trial
    params = {**exp["fixed"], **best.params}
    root = Path(out_dir) / study.study_name / "final"

    def reproduce(r: int, rep_seed: int, rdir: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        record = R.RunRecord.start(fold_config(cfg, params, rep_seed),
                                   run_id=f"{study.study_name}--rep{r}",
                                   suite=settings["execution"].get("suite"))
        embs, per_fold, folds_info = [], [], []
        status, error = "completed", None
        train_s, images = 0.0, 0.0
        for p, (train, val) in enumerate(data.folds):
            fdir = rdir / f"fold-{p}"
            fcfg = fold_config(cfg, params, rep_seed * 1000 + p)
            res = fit(fcfg, train, val, run_dir=fdir, selection_set="val")
            if res.status != "completed" or res.best is None:
                status, error = "diverged", f"fold {p}: {res.error}"
                break
            train_s += res.timing["train_s"]
            images += res.images_per_s * res.timing["train_s"]
            # the fold's best-validation model, embedded exactly as the fit evaluates
            emb, lab = embed(res.load_best_model(), data.test, fcfg)
            m = compute_metrics(emb, lab, include=FINAL_METRICS, seed=rep_seed,
                                kmeans_init=cfg["eval"]["kmeans_init"])
            embs.append(l2_normalize(emb))
            per_fold.append(m)
            folds_info.append({"fold": p, "best_epoch": res.best["epoch"],
                               "val_map_at_r": res.best["metrics"][MAP_R],
                               "epochs_run": res.epochs_run, "test": m})
            res.remove_checkpoints(keep_best=True)
        if status == "completed":
            concat = compute_metrics(np.concatenate(embs, axis=1), lab.numpy(),
                                     include=FINAL_METRICS, seed=rep_seed,
                                     kmeans_init=cfg["eval"]["kmeans_init"])
            separated = {k: float(np.mean([m[k] for m in per_fold])) for k in FINAL_METRICS}
            sem = {k: _sem([m[k] for m in per_fold]) for k in FINAL_METRICS}
            mlrc = {"separated": {"metrics": separated, "sem": sem},
                    "concatenated": {"metrics": concat}}
            final = {"epoch": None, "metrics": concat}
            best_block = {**final, "selected_by": MAP_R, "selection_set": "val"}
        else:
            mlrc, final, best_block = {}, None, None
        mlrc.update({"study": study.study_name, "storage": storage_display,
                     "best_trial": best.number, "best_value": best.value,
                     "best_params": params, "folds": folds_info,
                     "num_test_classes": data.test.num_classes,
                     "num_test_images": len(data.test)})
        record.update(**{"status": status, "error": error, "final": final, "best": best_block,
                       "mlrc": mlrc, "wall_time_s": time.perf_counter() - t0,
                       "train_time_s": train_s, "images_per_s": images / max(train_s, 1e-9),
                       "determinism": determinism(record.config)})
        record.write(rdir / RECORD)
        record = record.to_dict()
        if status == "completed":
            c = mlrc["concatenated"]["metrics"]
            log(f"  reproduction {r} (seed {rep_seed}): concatenated P@1 "
                f"{100 * c['precision_at_1']:.2f} RP {100 * c['r_precision']:.2f} MAP@R "
                f"{100 * c[MAP_R]:.2f} ({record['wall_time_s']:.0f} s)")
        else:
            log(f"  reproduction {r} (seed {rep_seed}): diverged ({error})")
        return record

    def attempt(r: int, wait: bool, before: str) -> dict[str, Any] | None:
        """Reproduction r under its folder's lock: its record (done or made now), or None
        when another process holds it (without `wait`)."""
        rep_seed = exp["seed"] + 1 + r
        rdir = root / f"rep-{r}"
        try:
            with run_guard(rdir, wait=wait):
                old = _finished_record(rdir / RECORD)
                if old is not None and old.get("mlrc", {}).get("best_params") == json.loads(
                        json.dumps(params)):
                    log(f"  reproduction {r} (seed {rep_seed}): done {before}, skipped")
                    return old
                if old is not None:  # made for other best parameters
                    for child in rdir.iterdir():
                        if child.name != LOCK_FILE:
                            shutil.rmtree(child) if child.is_dir() else child.unlink()
                return reproduce(r, rep_seed, rdir)
        except RunHeld as e:
            log(f"  reproduction {r} (seed {rep_seed}): held by another process, skipped "
                f"({e.holder})")
            return None

    # reproductions another process holds are skipped, then waited for at the end (and made
    # here if that process died without finishing them)
    done = {r: attempt(r, False, "before") for r in range(budget["reproductions"])}
    for r in [r for r, rec in done.items() if rec is None]:
        log(f"  reproduction {r}: waiting for the other process to finish it")
        done[r] = attempt(r, True, "by another process")
    return [done[r] for r in range(budget["reproductions"])]


# ----------------------------------------------------------------------------- one experiment


def run_mlrc(cfg: dict[str, Any], opts: SearchOptions, out_dir: "str | Path", *,
             suite: str | None = None, dataset: DMLDataset | None = None,
             threads: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search (or resume the search), then the final evaluation; returns
    {"study", "storage", "summary", "records", "status", "message"}."""
    out_dir = Path(out_dir)
    name, settings = build_settings(cfg, opts, out_dir, suite)
    url = opts.storage or default_storage(out_dir)
    if opts.workers > 1 and S.parse_storage_url(url)[0] == "sqlite":
        raise UserError(f"{opts.workers} workers need a storage that several processes can "
                        "share: give e.g. --storage journal:///abs/path/studies.log or a "
                        "PostgreSQL URL (SQLite is for one process)")
    ds = dataset if dataset is not None else load_configured(cfg)
    check_mlrc_classes(ds.num_classes, opts.num_folds, f"dataset {ds.name!r}")
    check_output_dir(out_dir)   # trial folds and records go there: fail before training
    st = S.open_storage(url, heartbeat_interval=opts.heartbeat_interval,
                        grace_period=opts.grace_period)
    study = S.create_or_check_study(name, st, settings, checked=("experiment", "budget"))
    settings = S.study_settings(study)
    data = FoldData(ds, settings["experiment"]["num_folds"])
    n = settings["budget"]["n_trials"]
    log(f"study {name} ({st.display}): {n} trials, sampler {settings['experiment']['sampler']}")
    procs = spawn_workers(name, url, opts.workers - 1, out_dir, threads=threads) \
        if opts.workers > 1 else []
    try:
        summary = work_on(name, st, settings, out_dir=out_dir, threads=threads, data=data,
                          log=log)
    finally:
        for p in procs:
            p.wait()
    study = S.load_study(name, st)
    finished = summary.states.get("COMPLETE", 0) + summary.states.get("PRUNED", 0)
    result = {"study": name, "storage": st.display, "summary": summary, "records": [],
              "status": "completed", "message": summary.stopped}
    if finished < n:
        result["status"] = "incomplete"
        log(f"  search stopped before {n} trials: {summary.stopped}")
    if summary.states.get("COMPLETE", 0) == 0:
        result["status"] = "failed"
        result["message"] = f"no completed trial ({summary.stopped})"
        return result
    best = study.best_trial
    log(f"  best trial {best.number}: MAP@R {100 * best.value:.2f} ({_params_text(best.params)})")
    result["records"] = final_evaluation(study, settings, data, out_dir,
                                         storage_display=st.display, log=log)
    return result
