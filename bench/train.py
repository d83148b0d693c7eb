"""The training loop: one fit of one method on one training split, evaluated every k epochs.

`fit` is protocol-agnostic: the caller gives a training split and an evaluation split and
says whether the evaluation split is a test set (conventional protocol) or a validation fold
(MLRC). Each evaluation is checkpointed; a fit whose run folder holds a checkpoint resumes
from it and continues exactly as an uninterrupted fit would (same seed, CPU).
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench import distributed
from bench.data.loading import BatchPlan, ImageSource, Split
from bench.errors import UserError
from bench.evaluate import compute_metrics
from bench.models import EmbeddingModel, build_model
from methods import build_objective, get_method
from methods.registry import Objective

CHECKPOINT = "checkpoint.pt"
BEST_MODEL = "best_model.pt"


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    status: str                                 # "completed" | "diverged"
    evaluations: list[dict[str, Any]]
    best: dict[str, Any] | None
    final: dict[str, Any] | None
    epochs_run: int
    images_per_s: float
    timing: dict[str, float]
    error: str | None = None
    stopped_early: bool = False
    model: EmbeddingModel | None = field(default=None, repr=False)
    best_model_path: str | None = None


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; make CPU kernels deterministic where PyTorch allows."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA GPU is available; use train.device=cpu")
    return torch.device(name)


def make_optimizer(cfg: dict, model: EmbeddingModel, objective: Objective) -> torch.optim.Optimizer:
    """One optimizer, three parameter groups: trunk, embedder, loss (if it has parameters)."""
    t = cfg["train"]
    groups = [
        {"name": "trunk", "params": [p for p in model.trunk.parameters() if p.requires_grad],
         "lr": t["lr"]},
        {"name": "embedder", "params": list(model.embedder.parameters()),
         "lr": t["embedder_lr"] or t["lr"]},
    ]
    loss_params = objective.trainable_parameters()
    if loss_params:
        groups.append({"name": "loss", "params": loss_params, "lr": objective.loss_lr or t["lr"]})
    wd = t["weight_decay"]
    name = t["optimizer"]
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=wd, eps=t["eps"])
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=wd, eps=t["eps"])
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, weight_decay=wd, momentum=t["momentum"], eps=t["eps"])
    return torch.optim.SGD(groups, weight_decay=wd, momentum=t["momentum"])


def make_scheduler(cfg: dict, optimizer: torch.optim.Optimizer):
    """Per-epoch lr schedule, or None."""
    t = cfg["train"]
    if t["schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, t["step_size"], t["gamma"])
    if t["schedule"] == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, t["milestones"], t["gamma"])
    if t["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, t["epochs"])
    return None


@torch.no_grad()
def embed_split(model: EmbeddingModel, source: ImageSource, batch_size: int,
                amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised embeddings and labels of every image of the source, in order."""
    was_training = model.training
    model.eval()
    embs, labels = [], []
    dev = source.device
    with torch.autocast(dev.type, enabled=amp and dev.type == "cuda"):
        for x, y in source.eval_batches(batch_size):
            embs.append(model.embed(x).float().cpu())
            labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(embs), torch.cat(labels)


def transforms_for(cfg: dict):
    """The image transforms a config asks for (on-disk datasets only), or None for default."""
    preset = cfg["dataset"]["transforms"]
    if preset == "default":
        return None
    from bench.models.transforms import make_transforms

    return make_transforms(preset, cfg["model"]["trunk"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _better(a: float, b: float | None) -> bool:
    return b is None or a > b


def fit(cfg: dict, train_split: Split, eval_split: Split, *, run_dir: "str | Path | None" = None,
        selection_set: str = "test", on_evaluation: Callable[[dict], None] | None = None,
        keep_model: bool = False) -> FitResult:
    """Train `cfg["method"]` on `train_split`; evaluate on `eval_split` every k epochs.

    `on_evaluation(entry)` is called after each evaluation (MLRC uses it for pruning; it may
    raise to stop the fit). With `run_dir`, a checkpoint is written at each evaluation and
    the best model's weights go to `best_model.pt`; an existing checkpoint is resumed.
    """
    t, ev = cfg["train"], cfg["eval"]
    seed = cfg["run"]["seed"]
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    seed_everything(seed, t["deterministic"])
    device = resolve_device(t["device"])
    device = distributed.init(device.type) or device
    world, rank = distributed.world_size(), distributed.rank()
    size = cfg["dataset"]["image_size"]
    tf = transforms_for(cfg)
    train_src = ImageSource(train_split, device, image_size=size, num_workers=t["num_workers"],
                            transforms=tf)
    eval_src = ImageSource(eval_split, device, image_size=size, num_workers=t["num_workers"],
                           transforms=tf)

    spec = get_method(cfg["method"]["name"])
    model = build_model(cfg["model"], train_src.channels).to(device)
    objective = build_objective(spec.name, train_split.num_classes, cfg["model"]["embedding_size"],
                                cfg["method"]["params"]).to(device)
    m = t["m_per_class"] or spec.m_per_class
    if t["batch_size"] % m:
        raise UserError(f"method {spec.name!r} samples m_per_class={m} images per class, which "
                        f"does not divide train.batch_size={t['batch_size']}; set "
                        "train.m_per_class or train.batch_size")
    if t["batch_size"] % (world * m):
        raise UserError(f"train.batch_size={t['batch_size']} must split into {world} processes "
                        f"of whole groups of m_per_class={m} images; use a multiple of "
                        f"{world * m}")
    local = t["batch_size"] // world
    part = (rank * local, (rank + 1) * local) if world > 1 else None
    iters = t["iterations_per_epoch"] or max(1, len(train_split) // t["batch_size"])
    plan = BatchPlan(train_split.labels, t["batch_size"], m, iters, seed)
    optimizer = make_optimizer(cfg, model, objective)
    net = model
    if world > 1:
        if device.type == "cuda" and not cfg["model"]["freeze_bn"]:
            # batch statistics over the global batch, as one process would compute them
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    scheduler = make_scheduler(cfg, optimizer)
    use_amp = t["amp"] and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    select_by = t["select_by"]

    state: dict[str, Any] = {"epoch": 0, "evaluations": [], "best": None, "since_best": 0,
                             "images": 0, "train_s": 0.0, "fb_s": 0.0, "eval_s": 0.0}
    run_path = Path(run_dir) if run_dir is not None else None
    ckpt = run_path / CHECKPOINT if run_path is not None else None
    if ckpt is not None and ckpt.exists():
        try:
            saved = torch.load(ckpt, map_location=device, weights_only=False)
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"checkpoint {ckpt} is unreadable ({type(e).__name__}); delete it "
                            "to start the run afresh") from None
        model.load_state_dict(saved["model"])
        objective.load_state_dict(saved["objective"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        plan.load_state_dict(saved["plan"])
        aug_gen.set_state(saved["aug_gen"])
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        np.random.set_state(saved["numpy_rng"])
        random.setstate(saved["python_rng"])
        state = saved["state"]

    def evaluate(epoch: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        entry = None
        if distributed.is_main():  # one rank evaluates, the others wait for its result
            emb, lab = embed_split(model, eval_src, ev["batch_size"], use_amp)
            metrics = compute_metrics(emb, lab, include=ev["metrics"],
                                      recall_ks=tuple(ev["recall_ks"]), seed=seed)
            entry = {"epoch": epoch, "iteration": epoch * iters, "metrics": metrics}
        entry = distributed.broadcast_object(entry)
        state["eval_s"] += time.perf_counter() - t0
        return entry

    def checkpoint(best_improved: bool) -> None:
        if run_path is None or not distributed.is_main():
            return
        run_path.mkdir(parents=True, exist_ok=True)
        if best_improved:
            _atomic_torch_save(model.state_dict(), run_path / BEST_MODEL)
        _atomic_torch_save({
            "model": model.state_dict(), "objective": objective.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(), "plan": plan.state_dict(),
            "aug_gen": aug_gen.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
            "state": state}, ckpt)

    status, error, stopped_early = "completed", None, False
    bar = None
    if t["progress"] and distributed.is_main():
        from tqdm import tqdm
        bar = tqdm(total=t["epochs"] * iters, initial=state["epoch"] * iters, leave=False,
                   desc=f"{spec.name} s{seed}", unit="it", dynamic_ncols=True,
                   disable=None)  # None: no bar when stderr is not a terminal
    try:
        while state["epoch"] < t["epochs"]:
            epoch = state["epoch"]
            model.train()
            objective.train()
            objective.set_epoch(epoch)
            bad = torch.zeros((), dtype=torch.bool, device=device)
            last_loss = torch.zeros((), device=device)
            t_epoch = time.perf_counter()
            for it, (x, y) in enumerate(train_src.train_batches(plan, augment=t["augment"],
                                                                generator=aug_gen, part=part)):
                t_fb = time.perf_counter()
                with torch.autocast(device.type, enabled=use_amp):
                    emb = distributed.gather_rows(net(x))
                loss = objective(emb.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                distributed.average_gradients(objective.trainable_parameters())
                if t["max_grad_norm"]:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t["max_grad_norm"])
                scaler.step(optimizer)
                scaler.update()
                state["fb_s"] += time.perf_counter() - t_fb
                last_loss = loss.detach()
                bad |= ~torch.isfinite(last_loss)
                state["images"] += y.shape[0]
                if it % 10 == 9 or it == iters - 1:
                    if bool(bad):
                        raise Diverged(f"loss became {float(last_loss)} at epoch {epoch}, "
                                       f"iteration {it}")
                    if bar is not None:
                        done = state["train_s"] + time.perf_counter() - t_epoch
                        bar.set_postfix(loss=f"{float(last_loss):.4f}",
                                        img_s=f"{state['images'] / max(done, 1e-9):.0f}")
                        bar.update(10 if it % 10 == 9 else it % 10 + 1)
            state["train_s"] += time.perf_counter() - t_epoch
            if scheduler is not None:
                scheduler.step()
            state["epoch"] = epoch + 1
            is_last = state["epoch"] == t["epochs"]
            if state["epoch"] % t["eval_every"] == 0 or is_last:
                entry = evaluate(state["epoch"])
                if select_by not in entry["metrics"]:
                    raise UserError(f"train.select_by={select_by!r} is not a computed metric; "
                                    f"choose one of: {', '.join(entry['metrics'])}")
                state["evaluations"].append(entry)
                value = entry["metrics"][select_by]
                improved = _better(value, None if state["best"] is None
                                   else state["best"]["metrics"][select_by])
                if improved:
                    state["best"] = {**entry, "selected_by": select_by,
                                     "selection_set": selection_set}
                state["since_best"] = state["epoch"] - state["best"]["epoch"]
                checkpoint(improved)
                if on_evaluation is not None:
                    on_evaluation(entry)
                if t["patience"] is not None and state["since_best"] > t["patience"]:
                    stopped_early = True
                    break
    except Diverged as e:
        status, error = "diverged", str(e)
    finally:
        if bar is not None:
            bar.close()
    timing = {"train_s": state["train_s"], "forward_backward_s": state["fb_s"],
              "eval_s": state["eval_s"],
              "outside_forward_backward_share": (1 - state["fb_s"] / state["train_s"])
              if state["train_s"] > 0 else math.nan}
    best_path = str(run_path / BEST_MODEL) if run_path is not None and state["best"] else None
    return FitResult(
        status=status, evaluations=state["evaluations"], best=state["best"],
        final=state["evaluations"][-1] if state["evaluations"] else None,
        epochs_run=state["epoch"], images_per_s=state["images"] / max(state["train_s"], 1e-9),
        timing=timing, error=error, stopped_early=stopped_early,
        model=model if keep_model else None, best_model_path=best_path)
