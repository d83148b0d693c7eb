"""The parts of a fit, built from a validated config: device, image sources, model, objective,
optimizer, schedule and batch plan. A caller may hand in its own model (any `nn.Module` that
maps images to embeddings), its own trunk, or its own objective instead."""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from dmlbench.bench import distributed
from dmlbench.bench.data.loading import BatchPlan, ImageSource, Split
from dmlbench.bench.errors import UserError
from dmlbench.bench.models import EmbeddingModel, build_model
from dmlbench.methods import build_objective, get_method
from dmlbench.methods.registry import Objective


def resolve_device(name: str) -> torch.device:
    """The torch device of `train.device` ("auto" picks CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA GPU is available; use train.device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_settings(threads: int | None, deterministic: bool) -> Iterator[None]:
    """Thread count and deterministic-algorithm flags for the duration of a fit; the caller's
    settings are restored afterwards."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_bench = torch.backends.cudnn.benchmark
    had_ws = "CUBLAS_WORKSPACE_CONFIG" in os.environ
    try:
        if threads:
            torch.set_num_threads(threads)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.benchmark = old_bench
        if not had_ws:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def transforms_for(cfg: dict):
    """The image transforms a config asks for (on-disk datasets only), or None for default."""
    preset = cfg["dataset"]["transforms"]
    if preset == "default":
        return None
    from dmlbench.bench.models.transforms import make_transforms

    return make_transforms(preset, cfg["model"]["trunk"])


def image_source(cfg: dict, split: Split, device: torch.device) -> ImageSource:
    """The images of a split as a fit reads them: the config's size, transforms and workers."""
    t = cfg["train"]
    return ImageSource(split, device, image_size=cfg["dataset"]["image_size"],
                       num_workers=t["num_workers"], transforms=transforms_for(cfg),
                       cache=cfg["dataset"].get("cache", "none"))


def amp_enabled(cfg: dict, device: torch.device) -> bool:
    """Mixed precision is used on CUDA only, when train.amp is set (training and embedding)."""
    return bool(cfg["train"]["amp"]) and device.type == "cuda"


def make_optimizer(cfg: dict, model: nn.Module, objective: Objective) -> torch.optim.Optimizer:
    """One optimizer with named parameter groups: trunk and embedder (or the whole model, for a
    model without those parts) at train.weight_decay, and the loss's own parameters (if any)
    at the method's `loss_lr` and `loss_weight_decay` (0 unless the method's recipe says
    otherwise)."""
    t = cfg["train"]
    wd = t["weight_decay"]
    trunk, embedder = getattr(model, "trunk", None), getattr(model, "embedder", None)
    if isinstance(trunk, nn.Module) and isinstance(embedder, nn.Module):
        groups = [
            {"name": "trunk", "params": [p for p in trunk.parameters() if p.requires_grad],
             "lr": t["lr"], "weight_decay": wd},
            {"name": "embedder", "params": [p for p in embedder.parameters() if p.requires_grad],
             "lr": t["embedder_lr"] or t["lr"], "weight_decay": wd},
        ]
    else:
        groups = [{"name": "model", "params": [p for p in model.parameters() if p.requires_grad],
                   "lr": t["lr"], "weight_decay": wd}]
    loss_params = objective.trainable_parameters()
    if loss_params:
        groups.append({"name": "loss", "params": loss_params,
                       "lr": objective.loss_lr or t["lr"],
                       "weight_decay": float(getattr(objective, "loss_weight_decay", 0.0) or 0.0)})
    name = t["optimizer"]
    if name == "adam":
        return torch.optim.Adam(groups, eps=t["eps"])
    if name == "adamw":
        return torch.optim.AdamW(groups, eps=t["eps"])
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, momentum=t["momentum"], eps=t["eps"])
    return torch.optim.SGD(groups, momentum=t["momentum"])


def param_groups_summary(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """What each parameter group had: name, lr, weight decay, parameter count."""
    return [{"name": g.get("name", str(i)), "lr": g["lr"], "weight_decay": g["weight_decay"],
             "num_parameters": int(sum(p.numel() for p in g["params"]))}
            for i, g in enumerate(optimizer.param_groups)]


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


def m_per_class(cfg: dict, objective: Objective | None = None) -> int:
    """Images per class in a training batch: train.m_per_class, else the method's default."""
    if cfg["train"]["m_per_class"]:
        return cfg["train"]["m_per_class"]
    if objective is not None and not objective.name:
        return 1
    return get_method(cfg["method"]["name"]).m_per_class


@dataclass
class Parts:
    """Everything a training loop needs, built once per fit."""

    cfg: dict
    device: torch.device
    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_source: ImageSource
    eval_source: ImageSource
    plan: BatchPlan
    iterations: int
    world: int = 1
    rank: int = 0


def build_parts(cfg: dict, train_split: Split, eval_split: Split, *,
                model: nn.Module | None = None, trunk: nn.Module | None = None,
                objective: Objective | nn.Module | None = None) -> Parts:
    """The parts of one fit of `cfg` (a validated config). `model` replaces the configured
    embedding model, `trunk` only its trunk (wrapped with the configured embedder), `objective`
    the configured method (a PML loss is wrapped in an `Objective`). A hand-made `cfg` is
    validated (missing keys take their defaults) as `load_config` would."""
    from dmlbench.bench.config import validate

    cfg = validate(cfg)
    t = cfg["train"]
    device = resolve_device(t["device"])
    device = distributed.init(device.type) or device
    world, rank = distributed.world_size(), distributed.rank()
    train_src = image_source(cfg, train_split, device)
    eval_src = image_source(cfg, eval_split, device)
    mc = cfg["model"]
    if model is None and trunk is not None:
        model = EmbeddingModel(trunk, mc["embedding_size"], normalize_train=mc["normalize_train"],
                               freeze_bn=mc["freeze_bn"], freeze_bn_affine=mc["freeze_bn_affine"])
    if model is None:
        model = build_model(mc, train_src.channels)
    model = model.to(device)
    if objective is None:
        objective = build_objective(cfg["method"]["name"], train_split.num_classes,
                                    mc["embedding_size"], cfg["method"]["params"])
    elif not isinstance(objective, Objective):
        objective = Objective(objective, name="")
    objective = objective.to(device)
    m = m_per_class(cfg, objective)
    if t["batch_size"] % m:  # the method's own m (a configured one is checked at load)
        raise UserError(f"method {cfg['method']['name']!r} samples m_per_class={m} images per "
                        f"class, which does not divide train.batch_size={t['batch_size']}; set "
                        "train.m_per_class or train.batch_size")
    if t["batch_size"] % (world * m):
        raise UserError(f"train.batch_size={t['batch_size']} must split into {world} processes "
                        f"of whole groups of m_per_class={m} images; use a multiple of "
                        f"{world * m}")
    iters = t["iterations_per_epoch"] or max(1, len(train_split) // t["batch_size"])
    plan = BatchPlan(train_split.labels, t["batch_size"], m, iters, cfg["run"]["seed"])
    optimizer = make_optimizer(cfg, model, objective)
    return Parts(cfg=cfg, device=device, model=model, objective=objective, optimizer=optimizer,
                 scheduler=make_scheduler(cfg, optimizer), train_source=train_src,
                 eval_source=eval_src, plan=plan, iterations=iters, world=world, rank=rank)


# An evaluation set with fewer classes makes retrieval nearly trivial (a random embedding's
# P@1 is about 1 / classes).
MIN_EVAL_CLASSES = 5


def data_warnings(cfg: dict, train_split: Split, eval_split: Split, *,
                  eval_name: str = "test set") -> list[str]:
    """One line for each way the data makes a fit of `cfg` behave other than one would assume
    (empty when there is none), said before training: classes of the evaluation set with a
    single image (never queries: excluded from P@1, R-Precision, MAP@R and Recall@K), training
    classes with fewer images than m_per_class (sampled with replacement), an evaluation set
    with fewer than MIN_EVAL_CLASSES classes, and eval.recall_ks that reach every other image
    of the evaluation set (Recall@K is then 100%)."""
    from dmlbench.bench.evaluate import metric_keys

    out = []
    counts = np.bincount(eval_split.labels, minlength=eval_split.num_classes)
    n = int(counts.sum())
    lone = int((counts == 1).sum())
    if lone:
        what = ("has a single image, which is never a query" if lone == 1 else
                f"have a single image; those {lone} images are never queries")
        out.append(f"{lone} of the {eval_split.num_classes} classes of the {eval_name} {what} "
                   f"(P@1, R-Precision, MAP@R and Recall@K average over the other {n - lone} "
                   "images; lone images stay in the gallery)")
    m = m_per_class(cfg)
    train_counts = np.bincount(train_split.labels, minlength=train_split.num_classes)
    short = train_counts[train_counts < m]
    if m > 1 and len(short):
        out.append(f"m_per_class={m} exceeds the images of {len(short)} of the "
                   f"{train_split.num_classes} training classes (fewest: {int(short.min())}): "
                   "the sampler (pytorch-metric-learning's MPerClassSampler) draws their "
                   "images with replacement, so a batch can hold one image several times")
    if 0 < eval_split.num_classes < MIN_EVAL_CLASSES:
        queries = counts[counts > 1]
        chance = float((queries * (queries - 1)).sum() / max(queries.sum(), 1) / max(n - 1, 1))
        out.append(f"the {eval_name} has only {eval_split.num_classes} classes (fewer than "
                   f"{MIN_EVAL_CLASSES}): a random embedding already scores P@1 of about "
                   f"{100 * chance:.0f}%, so its metrics tell methods apart poorly")
    ev = cfg["eval"]
    computed = ev["metrics"] if ev["metrics"] is not None else metric_keys(
        tuple(ev["recall_ks"]))
    full = [k for k in ev["recall_ks"] if f"recall_at_{k}" in computed and k >= n - 1]
    if full:
        ks = ", ".join(str(k) for k in full)
        out.append(f"eval.recall_ks has K={ks} but a query of the {n}-image {eval_name} has "
                   f"only {n - 1} other images: Recall@K for K >= {n - 1} retrieves them all "
                   "and is 100% for every query")
    return out
