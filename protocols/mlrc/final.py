"""The final evaluation of an MLRC study: the best trial's parameters retrained R times, each
reproduction's fold models evaluated on the test set, separated and as an ensemble.

Reproduction r (r = 0..R-1, seed `seed + 1 + r`) retrains the folds with the best parameters
(fold seed `rep_seed * 1000 + p`, same early stopping on the val classes), keeps each fold's
best-validation weights, embeds the test set (compared to itself) and writes
`OUT/STUDY/final/rep-r/record.json` (protocol "mlrc"): `mlrc.separated` (mean and SEM over the
fold models), `mlrc.concatenated` (fold embeddings L2-normalised, concatenated, L2-normalised
again) with P@1, RP, MAP@R, NMI and F1, plus the study, best trial and parameters.

Each finished fold's test embeddings and figures are kept in `rep-r/fold-p/test-embeddings.npz`
(written atomically; a fold is fitted under its folder's lock): the folds of a reproduction may
be fitted by other processes first (fold work items, see `items`), and a reproduction retried
after its worker died fits only the folds not finished. Each
reproduction runs under its folder's lock: a finished record for the same parameters is
kept, one another process holds is waited for at the end (and made here if that process died).
When the study's best parameters changed since a reproduction was made, its record is
removed and each fold folder is emptied only under that fold's own lock, just before it is
refitted (`fold-key.json` names the parameters a fold folder is for): a process still
fitting a fold of the old parameters is never pulled from under.
Progress lines go to `log` when given, else to this module's logger at INFO.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

from dmlbench.bench import records as R
from dmlbench.bench.evaluate import compute_metrics, l2_normalize
from dmlbench.bench.files import atomic_write_text
from dmlbench.bench.records import LOCK_FILE, RunHeld
from dmlbench.bench.train import embed, fit
from dmlbench.protocols.conventional import determinism, run_guard
from dmlbench.protocols.mlrc.objective import MAP_R, FoldData, fold_config, sem

logger = logging.getLogger(__name__)
FINAL_METRICS = ["precision_at_1", "r_precision", MAP_R, "nmi", "f1"]
RECORD = "record.json"
FOLD_FILE = "test-embeddings.npz"
FOLD_KEY = "fold-key.json"  # the parameters and seed a fold folder's files were made for


def finished_record(path: Path) -> dict[str, Any] | None:
    """The record at `path` if it is a finished one (completed or diverged), else None."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("status") in ("completed", "diverged") \
        else None


@dataclass
class FoldModels:
    """One reproduction's fold fits: per fold the test metrics and normalised embeddings."""

    embeddings: list[np.ndarray] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    folds: list[dict[str, Any]] = field(default_factory=list)
    labels: Any = None
    status: str = "completed"
    error: str | None = None
    train_s: float = 0.0
    images: float = 0.0


def train_fold_models(cfg: dict, params: dict[str, Any], data: FoldData, rep_seed: int,
                      rdir: Path) -> FoldModels:
    """Fit every fold with `params` (fold seed rep_seed * 1000 + p) and evaluate each fold's
    best-validation model on the test set; stops at the first diverged fold."""
    out = FoldModels()
    for p in range(len(data.folds)):
        error = train_fold(cfg, params, data, rep_seed, rdir, p, out)
        if error is not None:
            out.status, out.error = "diverged", f"fold {p}: {error}"
            break
    return out


def train_fold(cfg: dict, params: dict[str, Any], data: FoldData, rep_seed: int, rdir: Path,
               p: int, out: FoldModels) -> str | None:
    """Fold p of a reproduction, added to `out`: the one saved in `rdir/fold-p` for the same
    parameters and seed (a fold item, or a worker killed later, made it), else fitted now
    under the fold folder's lock (waiting for another process fitting it) and saved; the
    fit's error when it diverged, else None."""
    key = json.dumps({"params": params, "seed": rep_seed}, sort_keys=True, default=str)
    fdir = rdir / f"fold-{p}"
    if _load_fold(fdir / FOLD_FILE, key, out):
        return None
    with run_guard(fdir, wait=True):
        if _load_fold(fdir / FOLD_FILE, key, out):   # made while we waited
            return None
        _claim_fold(fdir, key)
        train, val = data.folds[p]
        fcfg = fold_config(cfg, params, rep_seed * 1000 + p)
        res = fit(fcfg, train, val, run_dir=fdir, selection_set="val")
        if res.status != "completed" or res.best is None:
            return str(res.error)
        # the fold's best-validation model, embedded exactly as the fit evaluates
        emb, labels = embed(res.load_best_model(), data.test, fcfg)
        m = compute_metrics(emb, labels, include=FINAL_METRICS, seed=rep_seed,
                            kmeans_init=cfg["eval"]["kmeans_init"])
        fold = {"fold": p, "best_epoch": res.best["epoch"],
                "val_map_at_r": res.best["metrics"][MAP_R], "epochs_run": res.epochs_run,
                "test": m}
        _save_fold(fdir / FOLD_FILE, key, l2_normalize(emb), labels, fold,
                   res.timing["train_s"], res.images_per_s * res.timing["train_s"])
        res.remove_checkpoints(keep_best=True)
    if not _load_fold(fdir / FOLD_FILE, key, out):
        raise RuntimeError(f"fold {p} of {rdir} was saved but cannot be read back")
    return None


def _claim_fold(fdir: Path, key: str) -> None:
    """Make fold folder `fdir` this fit's (the caller holds its lock): kept as it is when it
    was started for the same parameters and seed (its checkpoint resumes), else emptied of
    another parameter set's files (the study's best trial changed since), then marked."""
    marker = fdir / FOLD_KEY
    try:
        if marker.read_text(encoding="utf-8") == key:
            return
    except OSError:
        pass
    for child in fdir.iterdir():
        if child.name != LOCK_FILE:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    atomic_write_text(marker, key)


def _save_fold(path: Path, key: str, emb: np.ndarray, labels: Any, fold: dict[str, Any],
               train_s: float, images: float) -> None:
    """A finished fold's test embeddings and figures, written atomically, so a retry of the
    reproduction (its worker killed) starts from the next fold."""
    meta = json.dumps({"key": key, "fold": fold, "train_s": train_s, "images": images})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, embeddings=emb, labels=np.asarray(labels), meta=np.array(meta))
    os.replace(tmp, path)


def _load_fold(path: Path, key: str, out: FoldModels) -> bool:
    """Add the fold saved at `path` to `out` if it was made for the same parameters and seed."""
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != key:
                return False
            emb, labels = z["embeddings"], z["labels"]
    except (OSError, ValueError, KeyError):
        return False
    import torch

    out.embeddings.append(emb)
    out.labels = torch.from_numpy(labels)
    out.metrics.append(meta["fold"]["test"])
    out.folds.append(meta["fold"])
    out.train_s += meta["train_s"]
    out.images += meta["images"]
    return True


def ensemble_metrics(models: FoldModels, seed: int, kmeans_init: Any) -> dict[str, Any]:
    """`separated` (mean and SEM over the fold models) and `concatenated` (the fold embeddings
    concatenated) test metrics."""
    concat = compute_metrics(np.concatenate(models.embeddings, axis=1), models.labels.numpy(),
                             include=FINAL_METRICS, seed=seed, kmeans_init=kmeans_init)
    per_fold = models.metrics
    separated = {k: float(np.mean([m[k] for m in per_fold])) for k in FINAL_METRICS}
    sems = {k: sem([m[k] for m in per_fold]) for k in FINAL_METRICS}
    return {"separated": {"metrics": separated, "sem": sems},
            "concatenated": {"metrics": concat}}


@dataclass
class FinalEvaluation:
    """The final evaluation of one study: its best parameters retrained `reproductions` times,
    reproduction r in `root/rep-r` (see the module docstring)."""

    study_name: str
    settings: dict[str, Any]
    best_trial: int
    best_value: float
    params: dict[str, Any]
    data: FoldData
    root: Path
    storage_display: str = ""
    log: Callable[[str], None] = logger.info

    @classmethod
    def of(cls, study: optuna.Study, settings: dict[str, Any], data: FoldData,
           out_dir: "str | Path", *, storage_display: str = "",
           log: Callable[[str], None] | None = None) -> "FinalEvaluation":
        """The final evaluation of `study`'s best trial, under OUT/STUDY/final."""
        best = study.best_trial
        return cls(study.study_name, settings, best.number, best.value,
                   {**settings["experiment"]["fixed"], **best.params}, data,
                   Path(out_dir) / study.study_name / "final", storage_display,
                   log or logger.info)

    @property
    def reproductions(self) -> int:
        return int(self.settings["budget"]["reproductions"])

    def seed(self, r: int) -> int:
        """The seed of reproduction r."""
        return int(self.settings["experiment"]["seed"]) + 1 + r

    def folder(self, r: int) -> Path:
        return self.root / f"rep-{r}"

    def run(self) -> list[dict[str, Any]]:
        """Every reproduction's record; those another process holds are skipped, then waited
        for at the end (and made here if that process died without finishing them)."""
        done = {r: self.attempt(r, wait=False, before="before")
                for r in range(self.reproductions)}
        for r in [r for r, rec in done.items() if rec is None]:
            self.log(f"  reproduction {r}: waiting for the other process to finish it")
            done[r] = self.attempt(r, wait=True, before="by another process")
        return [done[r] for r in range(self.reproductions)]

    def attempt(self, r: int, *, wait: bool, before: str = "before") -> dict[str, Any] | None:
        """Reproduction r under its folder's lock: its record (done or made now), or None
        when another process holds it (without `wait`)."""
        rdir, rep_seed = self.folder(r), self.seed(r)
        try:
            with run_guard(rdir, wait=wait):
                old = finished_record(rdir / RECORD)
                if old is not None and old.get("mlrc", {}).get("best_params") == json.loads(
                        json.dumps(self.params)):
                    self.log(f"  reproduction {r} (seed {rep_seed}): done {before}, skipped")
                    return old
                if old is not None:  # made for other best parameters: no longer this study's
                    (rdir / RECORD).unlink()  # (its folds are replaced, each under its lock)
                return self.reproduce(r)
        except RunHeld as e:
            self.log(f"  reproduction {r} (seed {rep_seed}): held by another process, skipped "
                     f"({e.holder})")
            return None

    def fold(self, r: int, p: int) -> float:
        """Fit fold p of reproduction r now unless it is saved (a fold work item); its test
        MAP@R, 0 when it diverged (the reproduction then records the divergence)."""
        models = FoldModels()
        error = train_fold(self.settings["config"], self.params, self.data, self.seed(r),
                           self.folder(r), p, models)
        return 0.0 if error is not None else float(models.metrics[0][MAP_R])

    def reproduce(self, r: int) -> dict[str, Any]:
        """Train and evaluate reproduction r now and write its record (the caller holds its
        folder's lock)."""
        t0 = time.perf_counter()
        rdir, rep_seed, cfg = self.folder(r), self.seed(r), self.settings["config"]
        record = R.RunRecord.start(fold_config(cfg, self.params, rep_seed),
                                   run_id=f"{self.study_name}--rep{r}",
                                   suite=self.settings["execution"].get("suite"))
        models = train_fold_models(cfg, self.params, self.data, rep_seed, rdir)
        mlrc, final, best_block = {}, None, None
        if models.status == "completed":
            mlrc = ensemble_metrics(models, rep_seed, cfg["eval"]["kmeans_init"])
            final = {"epoch": None, "metrics": mlrc["concatenated"]["metrics"]}
            best_block = {**final, "selected_by": MAP_R, "selection_set": "val"}
        mlrc.update({"study": self.study_name, "storage": self.storage_display,
                     "best_trial": self.best_trial, "best_value": self.best_value,
                     "best_params": self.params, "folds": models.folds,
                     "num_test_classes": self.data.test.num_classes,
                     "num_test_images": len(self.data.test)})
        record.update(**{"status": models.status, "error": models.error, "final": final,
                         "best": best_block, "mlrc": mlrc,
                         "wall_time_s": time.perf_counter() - t0, "train_time_s": models.train_s,
                         "images_per_s": models.images / max(models.train_s, 1e-9),
                         "determinism": determinism(record.config)})
        record.write(rdir / RECORD)
        record = record.to_dict()
        self._say_done(r, record, models.error)
        return record

    def _say_done(self, r: int, record: dict[str, Any], error: str | None) -> None:
        rep_seed = self.seed(r)
        if record["status"] == "completed":
            c = record["mlrc"]["concatenated"]["metrics"]
            self.log(f"  reproduction {r} (seed {rep_seed}): concatenated P@1 "
                     f"{100 * c['precision_at_1']:.2f} RP {100 * c['r_precision']:.2f} MAP@R "
                     f"{100 * c[MAP_R]:.2f} ({record['wall_time_s']:.0f} s)")
        else:
            self.log(f"  reproduction {r} (seed {rep_seed}): diverged ({error})")


def final_evaluation(study: optuna.Study, settings: dict[str, Any], data: FoldData,
                     out_dir: "str | Path", *, storage_display: str = "",
                     log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Retrain the best trial's parameters R times on the folds, as work items that any worker
    on the storage may take (`items`); one record per reproduction."""
    from dmlbench.protocols.mlrc.items import run_final_items

    fe = FinalEvaluation.of(study, settings, data, out_dir, storage_display=storage_display,
                            log=log)
    return run_final_items(fe, study, log=fe.log)
