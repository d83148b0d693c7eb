"""Callbacks of the training loop (`bench.train.loop.Trainer`).

A callback implements any of the hooks below; each receives the trainer, whose `parts`
(model, objective, optimizer, sources, ...), `state` (a `TrainState`) and `cfg` it may read.
Hooks run in the order the callbacks were given. A hook may set `trainer.should_stop = True`
to end the fit after the current epoch, or raise `Diverged` to end it as diverged; any other
exception propagates to the caller of `fit`.

    on_fit_start(trainer)              after the parts are built (a checkpoint may be loaded)
    on_log(trainer, info)              every train.log_every iterations and at an epoch's end:
                                       info = {"epoch", "iteration", "loss", "non_finite",
                                       "lr": {group: lr}, "images_per_s", "stats": {...}}
    on_epoch_end(trainer)              after an epoch's steps and the lr schedule step
    on_evaluation(trainer, entry)      after an evaluation; entry = {"epoch", "iteration",
                                       "metrics"}; `trainer.improved` says if it is the best
    on_fit_end(trainer)                once, also after divergence
"""
from __future__ import annotations

import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dmlbench.bench import distributed
from dmlbench.bench.errors import UserError
from dmlbench.bench.records import atomic_write_bytes, atomic_write_text, describe_difference

log = logging.getLogger("dmlbench.train")

CHECKPOINT = "checkpoint.pt"
BEST_MODEL = "best_model.pt"
TRAIN_LOG = "train_log.jsonl"


class Diverged(RuntimeError):
    """The loss or the embeddings became NaN or infinite."""


class Callback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, trainer) -> None: ...
    def on_log(self, trainer, info: dict[str, Any]) -> None: ...
    def on_epoch_end(self, trainer) -> None: ...
    def on_evaluation(self, trainer, entry: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer) -> None: ...


class DivergenceCheck(Callback):
    """Ends the fit as diverged when a logged loss was not finite."""

    def on_log(self, trainer, info: dict[str, Any]) -> None:
        if info["non_finite"]:
            raise Diverged(f"loss became {info['loss']} at epoch {info['epoch']}, iteration "
                           f"{info['iteration'] - info['epoch'] * trainer.parts.iterations}")


class BestTracker(Callback):
    """Keeps the best evaluation by train.select_by (and, without a run folder, a copy of the
    best weights in memory)."""

    def __init__(self, selection_set: str, keep_weights: bool) -> None:
        self.selection_set = selection_set
        self.keep_weights = keep_weights
        self.best_weights: dict[str, torch.Tensor] | None = None

    def on_evaluation(self, trainer, entry: dict[str, Any]) -> None:
        st, key = trainer.state, trainer.cfg["train"]["select_by"]
        value = entry["metrics"][key]
        trainer.improved = st.best is None or value > st.best["metrics"][key]
        if trainer.improved:
            st.best = {**entry, "selected_by": key, "selection_set": self.selection_set}
            if self.keep_weights:
                self.best_weights = {k: v.detach().to("cpu", copy=True)
                                     for k, v in trainer.model.state_dict().items()}
        st.since_best = st.epoch - st.best["epoch"]


class EarlyStopping(Callback):
    """Stops when the best evaluation is more than train.patience epochs old."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience

    def on_evaluation(self, trainer, entry: dict[str, Any]) -> None:
        if self.patience is not None and trainer.state.since_best > self.patience:
            trainer.state.stopped_early = True
            trainer.should_stop = True


def _numpy_state_to_plain(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
            float(cached))


def _numpy_state_from_plain(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached)


class Checkpointer(Callback):
    """Writes `checkpoint.pt` (everything to resume exactly) at each evaluation and the best
    weights to `best_model.pt`; resumes from an existing checkpoint whose settings match."""

    def __init__(self, run_dir: Path, identity: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.identity = identity

    @property
    def path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def on_fit_start(self, trainer) -> None:
        if not self.path.exists():
            return
        try:
            saved = torch.load(self.path, map_location=trainer.device, weights_only=True)
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"checkpoint {self.path} is unreadable ({type(e).__name__}); delete "
                            "it to start the run afresh") from None
        old = saved.get("identity")
        if old != self.identity:
            diff = describe_difference(old or {}, self.identity)
            raise UserError(f"checkpoint {self.path} was written by a run with other settings "
                            f"({diff}); use another output folder, or delete {self.run_dir} to "
                            "start afresh")
        trainer.load_state_dict(saved)
        trainer.resumed_from = trainer.state.epoch
        log.info("resuming %s from its checkpoint at epoch %d", self.run_dir,
                 trainer.state.epoch)

    def on_evaluation(self, trainer, entry: dict[str, Any]) -> None:
        if not distributed.is_main():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if trainer.improved:
            atomic_write_bytes(self.run_dir / BEST_MODEL, _torch_bytes(trainer.model.state_dict()))
        atomic_write_bytes(self.path, _torch_bytes({**trainer.state_dict(),
                                                    "identity": self.identity}))


def _torch_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def remove_checkpoints(run_dir: "str | Path", keep_best: bool = False) -> None:
    """Delete a fit's resume checkpoint (and its best weights unless `keep_best`)."""
    for name in (CHECKPOINT,) + (() if keep_best else (BEST_MODEL,)):
        try:
            (Path(run_dir) / name).unlink()
        except FileNotFoundError:
            pass


def load_best_weights(run_dir: "str | Path", device: torch.device) -> dict[str, torch.Tensor]:
    return torch.load(Path(run_dir) / BEST_MODEL, map_location=device, weights_only=True)


class TrainingLog(Callback):
    """A JSON-lines log of every `on_log` record (loss, lrs, images/s, method signals) and
    every evaluation, in `train_log.jsonl`; a resumed fit drops lines past its checkpoint and
    appends, so the log never holds an iteration twice."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / TRAIN_LOG
        self.file = None

    def on_fit_start(self, trainer) -> None:
        if not distributed.is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        done = trainer.state.epoch * trainer.parts.iterations
        if self.path.exists():
            keep = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is unknown
                if rec.get("iteration", 0) <= done and not (
                        rec.get("kind") == "eval" and rec.get("epoch", 0) > trainer.state.epoch):
                    keep.append(line)
            atomic_write_text(self.path, "".join(k + "\n" for k in keep))
        self.file = open(self.path, "a", encoding="utf-8")

    def _write(self, rec: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(rec, default=float) + "\n")

    def on_log(self, trainer, info: dict[str, Any]) -> None:
        self._write({"kind": "train", **info})

    def on_evaluation(self, trainer, entry: dict[str, Any]) -> None:
        self._write({"kind": "eval", **entry})
        if self.file is not None:
            self.file.flush()

    def on_fit_end(self, trainer) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class ProgressBar(Callback):
    """A tqdm bar on a terminal; elsewhere one log line per evaluation."""

    def __init__(self, label: str, show_bar: bool = True) -> None:
        self.label = label
        self.show_bar = show_bar
        self.bar = None
        self.t0 = time.perf_counter()

    def on_fit_start(self, trainer) -> None:
        if not distributed.is_main():
            return
        iters = trainer.parts.iterations
        if self.show_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=trainer.cfg["train"]["epochs"] * iters,
                            initial=trainer.state.epoch * iters, leave=False, desc=self.label,
                            unit="it", dynamic_ncols=True)

    def on_log(self, trainer, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{info['loss']:.4f}", img_s=f"{info['images_per_s']:.0f}")
            self.bar.update(info["iteration"] - self.bar.n)

    def on_evaluation(self, trainer, entry: dict[str, Any]) -> None:
        if self.bar is None and distributed.is_main():
            m = entry["metrics"]
            shown = ", ".join(f"{k} {100 * v:.2f}" for k, v in list(m.items())[:3])
            log.info("%s epoch %d/%d: %s (%.0f s)", self.label, entry["epoch"],
                     trainer.cfg["train"]["epochs"], shown, time.perf_counter() - self.t0)

    def on_fit_end(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EvaluationHook(Callback):
    """Calls `fn(entry)` after each evaluation (MLRC reports and prunes through it)."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_evaluation(self, trainer, entry: dict[str, Any]) -> None:
        self.fn(entry)


def rng_state() -> dict[str, Any]:
    """Every global RNG, as tensors and plain values (loadable with weights_only=True)."""
    return {"torch_rng": torch.get_rng_state(), "numpy_rng": _numpy_state_to_plain(
        np.random.get_state()), "python_rng": random.getstate()}


def set_rng_state(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch_rng"])
    np.random.set_state(_numpy_state_from_plain(saved["numpy_rng"]))
    random.setstate(saved["python_rng"])


__all__ = ["Callback", "BestTracker", "Checkpointer", "DivergenceCheck", "Diverged",
           "EarlyStopping", "EvaluationHook", "ProgressBar", "TrainingLog", "remove_checkpoints",
           "load_best_weights", "CHECKPOINT", "BEST_MODEL", "TRAIN_LOG"]
