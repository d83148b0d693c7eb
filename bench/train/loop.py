"""The training loop: `Trainer` runs the epochs of one fit over built `Parts` and calls its
callbacks; `fit` builds the parts from a config and runs a trainer with the standard
callbacks (divergence check, best tracking, early stopping, checkpoint, training log,
progress).

`fit` is protocol-agnostic: the caller gives a training split and an evaluation split and
says whether the evaluation split is a test set (conventional protocol) or a validation fold
(MLRC). With a run folder, each evaluation is checkpointed and a fit whose folder holds a
checkpoint of the same settings resumes from it and continues exactly as an uninterrupted fit
would (same seed, device and threads).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dmlbench.bench import distributed
from dmlbench.bench.config import validate
from dmlbench.bench.data.loading import Split
from dmlbench.bench.evaluate import compute_metrics
from dmlbench.bench.records import checkpoint_identity
from dmlbench.bench.train.build import (Parts, amp_enabled, build_parts, param_groups_summary,
                               seed_everything, torch_settings)
from dmlbench.bench.train.callbacks import (BEST_MODEL, BestTracker, Callback, Checkpointer, Diverged,
                                   DivergenceCheck, EarlyStopping, EvaluationHook, ProgressBar,
                                   TrainingLog, load_best_weights, remove_checkpoints,
                                   rng_state, set_rng_state)
from dmlbench.bench.train.embedding import embed
from dmlbench.bench.train.state import TrainState
from dmlbench.bench.train.trackers import make_trackers


@dataclass
class FitResult:
    """What a fit returns: its evaluations, the best and last one, timing, and access to the
    best model."""

    status: str                                 # "completed" | "diverged"
    evaluations: list[dict[str, Any]]
    best: dict[str, Any] | None
    final: dict[str, Any] | None
    epochs_run: int
    images_per_s: float
    timing: dict[str, float]
    error: str | None = None
    stopped_early: bool = False
    model: nn.Module | None = field(default=None, repr=False)   # with keep_model=True
    best_model_path: str | None = None
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None             # the epoch a checkpoint resumed, if any
    run_dir: Path | None = None
    _model: nn.Module | None = field(default=None, repr=False)
    _best_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def load_best_model(self) -> nn.Module:
        """The fit's model with the weights of its best evaluation, in eval mode."""
        if self._model is None or self.best is None:
            raise RuntimeError("this fit has no best model (it diverged before evaluating)")
        device = next(self._model.parameters()).device
        weights = self._best_weights if self._best_weights is not None else \
            load_best_weights(self.run_dir, device)
        self._model.load_state_dict(weights)
        return self._model.eval()

    def remove_checkpoints(self, keep_best: bool = False) -> None:
        """Delete the run folder's resume checkpoint (and the best weights unless
        `keep_best`)."""
        if self.run_dir is not None:
            remove_checkpoints(self.run_dir, keep_best=keep_best)


class Trainer:
    """Runs the epochs of one fit over `parts`, evaluating every train.eval_every epochs (and
    after the last), and calls `callbacks` (see bench.train.callbacks)."""

    def __init__(self, parts: Parts, callbacks: Sequence[Callback] = ()) -> None:
        self.parts = parts
        self.cfg = parts.cfg
        self.device = parts.device
        self.callbacks = list(callbacks)
        self.state = TrainState()
        self.model = parts.model
        self.net: nn.Module = parts.model
        if parts.world > 1:
            if self.device.type == "cuda" and not self.cfg["model"]["freeze_bn"]:
                # batch statistics over the global batch, as one process would compute them
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                parts.model = self.model
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.use_amp = amp_enabled(self.cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.aug_gen = torch.Generator().manual_seed(self.cfg["run"]["seed"] + 1)
        self.should_stop = False
        self.improved = False
        self.resumed_from: int | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (tensors and plain values only)."""
        p = self.parts
        return {
            "model": self.model.state_dict(), "objective": p.objective.state_dict(),
            "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
            "scaler": self.scaler.state_dict(), "plan": p.plan.state_dict(),
            "aug_gen": self.aug_gen.get_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda" else None,
            **rng_state(), "state": self.state.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        p = self.parts
        self.model.load_state_dict(saved["model"])
        p.objective.load_state_dict(saved["objective"])
        p.optimizer.load_state_dict(saved["optimizer"])
        if p.scheduler is not None:
            p.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        p.plan.load_state_dict(saved["plan"])
        self.aug_gen.set_state(saved["aug_gen"])
        if self.device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        set_rng_state(saved)
        self.state.load_state_dict(saved["state"])

    # ------------------------------------------------------------------ hooks
    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def lrs(self) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"]
                for i, g in enumerate(self.parts.optimizer.param_groups)}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        """Embed the evaluation split (the one embedding path) and compute its metrics."""
        t0 = time.perf_counter()
        ev, epoch = self.cfg["eval"], self.state.epoch
        entry: dict[str, Any] | str | None = None
        if distributed.is_main():  # one rank evaluates, the others wait for its result
            emb, lab = embed(self.model, self.parts.eval_source.split, self.cfg,
                             source=self.parts.eval_source)
            if not bool(torch.isfinite(emb).all()):
                entry = f"embeddings became NaN or infinite by the evaluation of epoch {epoch}"
            else:
                metrics = compute_metrics(emb, lab, include=ev["metrics"],
                                          recall_ks=tuple(ev["recall_ks"]),
                                          seed=self.cfg["run"]["seed"],
                                          kmeans_init=ev["kmeans_init"])
                entry = {"epoch": epoch, "iteration": epoch * self.parts.iterations,
                         "metrics": metrics}
        entry = distributed.broadcast_object(entry)
        self.state.eval_s += time.perf_counter() - t0
        if isinstance(entry, str):
            raise Diverged(entry)
        return entry

    # ------------------------------------------------------------------ training
    def _stats(self) -> dict[str, Any]:
        stats = getattr(self.parts.objective, "stats", None)
        return stats() if callable(stats) else {}

    def train_epoch(self) -> None:
        p, st, t = self.parts, self.state, self.cfg["train"]
        epoch, iters = st.epoch, p.iterations
        log_every = t.get("log_every") or 10
        part = (p.rank * (t["batch_size"] // p.world), (p.rank + 1) * (t["batch_size"] // p.world)
                ) if p.world > 1 else None
        self.model.train()
        p.objective.train()
        p.objective.set_epoch(epoch)
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        last_loss = torch.zeros((), device=self.device)
        t_epoch = time.perf_counter()
        images_at_start = st.images
        for it, (x, y) in enumerate(p.train_source.train_batches(
                p.plan, augment=t["augment"], generator=self.aug_gen, part=part)):
            t_fb = time.perf_counter()
            with torch.autocast(self.device.type, enabled=self.use_amp):
                emb = distributed.gather_rows(self.net(x))
            loss = p.objective(emb.float(), y)
            p.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            distributed.average_gradients(p.objective.trainable_parameters())
            if t["max_grad_norm"]:
                self.scaler.unscale_(p.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t["max_grad_norm"])
            self.scaler.step(p.optimizer)
            self.scaler.update()
            st.fb_s += time.perf_counter() - t_fb
            last_loss = loss.detach()
            bad |= ~torch.isfinite(last_loss)
            st.images += y.shape[0]
            if (it + 1) % log_every == 0 or it == iters - 1:
                elapsed = time.perf_counter() - t_epoch
                self._call("on_log", {
                    "epoch": epoch, "iteration": epoch * iters + it + 1,
                    "loss": float(last_loss), "non_finite": bool(bad), "lr": self.lrs(),
                    "images_per_s": (st.images - images_at_start) / max(elapsed, 1e-9),
                    "stats": self._stats()})
        st.train_s += time.perf_counter() - t_epoch

    def fit(self) -> tuple[str, str | None]:
        """Run the remaining epochs; (status, error)."""
        st, t = self.state, self.cfg["train"]
        status, error = "completed", None
        try:
            self._call("on_fit_start")
            while st.epoch < t["epochs"] and not st.stopped_early:
                self.train_epoch()
                if self.parts.scheduler is not None:
                    self.parts.scheduler.step()
                st.epoch += 1
                self._call("on_epoch_end")
                if st.epoch % t["eval_every"] == 0 or st.epoch == t["epochs"]:
                    entry = self.evaluate()
                    st.evaluations.append(entry)
                    self._call("on_evaluation", entry)
                    if self.should_stop:
                        break
        except Diverged as e:
            status, error = "diverged", str(e)
        finally:
            self._call("on_fit_end")
        return status, error


def fit(cfg: dict, train_split: Split, eval_split: Split, *, run_dir: "str | Path | None" = None,
        selection_set: str = "test", on_evaluation: Callable[[dict], None] | None = None,
        keep_model: bool = False, model: nn.Module | None = None,
        trunk: nn.Module | None = None, objective: nn.Module | None = None,
        callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train `cfg["method"]` (or the given `objective`) on `train_split`; evaluate on
    `eval_split` every train.eval_every epochs and after the last.

    `model` / `trunk` / `objective` replace the configured ones (see `build_parts`).
    `on_evaluation(entry)` is called after each evaluation (MLRC reports and prunes through
    it; it may raise to stop the fit). `callbacks` run after the standard ones. With
    `run_dir`, a checkpoint is written at each evaluation, the best weights go to
    `best_model.pt` and a JSON-lines training log to `train_log.jsonl`; an existing checkpoint
    of the same settings is resumed, one of other settings is refused. A hand-made `cfg` is
    validated (missing keys take their defaults) as `load_config` would.
    """
    cfg = validate(cfg)
    t = cfg["train"]
    with torch_settings(t["threads"], t["deterministic"]):
        seed_everything(cfg["run"]["seed"])
        parts = build_parts(cfg, train_split, eval_split, model=model, trunk=trunk,
                            objective=objective)
        run_path = Path(run_dir) if run_dir is not None else None
        tracker = BestTracker(selection_set, keep_weights=run_path is None)
        standard: list[Callback] = [DivergenceCheck(), tracker, EarlyStopping(t["patience"])]
        if run_path is not None:
            ident = checkpoint_identity(cfg)
            if model is not None or trunk is not None or objective is not None:
                ident["custom"] = [type(x).__name__ if x is not None else None
                                   for x in (model, trunk, objective)]
            standard += [Checkpointer(run_path, ident), TrainingLog(run_path)]
            standard += make_trackers(t.get("trackers") or [], run_path, cfg)
        label = f"{cfg['run']['name'] or cfg['method']['name']} s{cfg['run']['seed']}"
        standard.append(ProgressBar(label, show_bar=t["progress"]))
        if on_evaluation is not None:
            standard.append(EvaluationHook(on_evaluation))
        trainer = Trainer(parts, [*standard, *callbacks])
        status, error = trainer.fit()
    st = trainer.state
    timing = {"train_s": st.train_s, "forward_backward_s": st.fb_s, "eval_s": st.eval_s,
              "outside_forward_backward_share": (1 - st.fb_s / st.train_s)
              if st.train_s > 0 else math.nan}
    best_path = str(run_path / BEST_MODEL) if run_path is not None and st.best else None
    return FitResult(
        status=status, evaluations=st.evaluations, best=st.best,
        final=st.evaluations[-1] if st.evaluations else None, epochs_run=st.epoch,
        images_per_s=st.images / max(st.train_s, 1e-9), timing=timing, error=error,
        stopped_early=st.stopped_early, model=trainer.model if keep_model else None,
        best_model_path=best_path, param_groups=param_groups_summary(parts.optimizer),
        resumed_from=trainer.resumed_from, run_dir=run_path, _model=trainer.model,
        _best_weights=tracker.best_weights)
