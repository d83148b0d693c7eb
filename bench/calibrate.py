"""Measured throughput of a preset's trunk on this machine (`dmlbench calibrate`), kept in a
calibration file that `dmlbench suite NAME --plan` reads instead of its assumed figures.

Model figures, per (device, trunk, batch size, image size, AMP, torch version):
- `train_images_per_s`: forward (autocast as the fit's AMP policy) + the method's loss +
  backward + the configured optimizer's step, at train.batch_size, on synthetic images already
  on the device: the model's step alone, no data path;
- `embed_images_per_s`: an eval-mode forward (no grad) at eval.batch_size.
The trunk has random weights (nothing is downloaded). Warm-up steps are not timed; each timed
step ends with a device synchronisation.

Data figures, per (device, transforms preset, image size, torch version), seconds per image:
- `pil_cpu_s`: CPU-seconds of JPEG decode + the preset's train transform in one loader
  process (one torch thread), the cost a DataLoader worker pays per image;
- `cache_s`: wall seconds of the decoded-image cache's train crops + normalisation on the
  device (`dataset.cache=device`), the cost the training process pays per image;
both on synthetic JPEGs of CUB's sizes (`bench.data.synthetic.synthetic_cub`).

The file is JSON (`calibration_path()`), updated under a file lock and written atomically, so
concurrent processes may calibrate into it.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dmlbench.bench.errors import UserError
from dmlbench.bench.files import atomic_write_text, file_lock

log = logging.getLogger(__name__)

FILE_NAME = "calibration.json"
VERSION = 1
DEFAULT_ITERATIONS = 300      # timed training steps on a GPU
CPU_ITERATIONS = 5            # ... and on a CPU (a few seconds a step for a large trunk)


def calibration_path() -> Path:
    """`$DMLBENCH_CALIBRATION` if set, else `$DMLBENCH_CACHE/calibration.json`, else
    ~/.cache/dmlbench/calibration.json."""
    if os.environ.get("DMLBENCH_CALIBRATION"):
        return Path(os.environ["DMLBENCH_CALIBRATION"])
    base = os.environ.get("DMLBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "dmlbench")
    return Path(base) / FILE_NAME


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: "torch.device | str | None" = None) -> str:
    """The name the calibration file keys a device by: the GPU's name, or "cpu: MODEL"."""
    device = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {_cpu_model()}"


def model_key(device: str, trunk: str, batch_size: int, image_size: int, amp: bool,
              torch_version: str | None = None) -> str:
    """The calibration file's key of a model figure."""
    return json.dumps([device, trunk, int(batch_size), int(image_size), bool(amp),
                       torch_version or torch.__version__])


def data_key(device: str, transforms: str, image_size: int,
             torch_version: str | None = None) -> str:
    """The calibration file's key of a data-path figure."""
    return json.dumps([device, transforms, int(image_size), torch_version or torch.__version__])


def model_key_of(cfg: dict, device: str) -> str:
    """The key of a config's model figure on `device` (a device name)."""
    return model_key(device, cfg["model"]["trunk"], cfg["train"]["batch_size"],
                     cfg["dataset"]["image_size"], cfg["train"]["amp"])


def data_key_of(cfg: dict, device: str) -> str:
    return data_key(device, cfg["dataset"]["transforms"], cfg["dataset"]["image_size"])


# ----------------------------------------------------------------------------- the file

def load_calibration(path: "str | Path | None" = None) -> dict[str, dict]:
    """The calibration file's figures: {"model": {key: entry}, "data": {key: entry}}; empty
    sections if there is no file."""
    path = Path(path) if path is not None else calibration_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"model": {}, "data": {}}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the calibration file {path}: {e}; delete it and run "
                        "`dmlbench calibrate SUITE` again") from None
    return {"model": dict(data.get("model") or {}), "data": dict(data.get("data") or {})}


def store(model: dict[str, dict] | None = None, data: dict[str, dict] | None = None,
          path: "str | Path | None" = None) -> Path:
    """Add (or replace) entries in the calibration file, under its lock; the file's path."""
    path = Path(path) if path is not None else calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock"), wait=True):
        cur = load_calibration(path)
        cur["model"].update(model or {})
        cur["data"].update(data or {})
        atomic_write_text(path, json.dumps({"version": VERSION, **cur}, indent=1,
                                           sort_keys=True) + "\n")
    return path


# ----------------------------------------------------------------------------- measuring

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, iterations: int, warmup: int, device: torch.device) -> float:
    """Median wall seconds of one call of `fn` after `warmup` untimed calls."""
    import statistics

    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_functions(cfg: dict, device: torch.device, *, num_classes: int = 100,
                   in_channels: int = 3):
    """(train_on(x, y), embed_on(x)) of the config's model (random weights), method objective
    and optimizer on `device`, with the fit's AMP policy: one training step on a batch, one
    eval-mode embedding of a batch."""
    from dmlbench.bench.models import build_model
    from dmlbench.bench.train.build import amp_enabled, make_optimizer
    from dmlbench.methods.registry import build_objective

    mc = {**cfg["model"], "pretrained": False, "weights": None}
    torch.manual_seed(0)
    model = build_model(mc, in_channels).to(device)
    objective = build_objective(cfg["method"]["name"], num_classes, mc["embedding_size"],
                                cfg["method"]["params"]).to(device)
    opt = make_optimizer(cfg, model, objective)
    amp = amp_enabled(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    def train_on(x: torch.Tensor, y: torch.Tensor) -> None:
        model.train()
        objective.train()
        with torch.autocast(device.type, enabled=amp):
            emb = model(x)
        loss = objective(emb.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    @torch.no_grad()
    def embed_on(x: torch.Tensor) -> None:
        model.eval()
        with torch.autocast(device.type, enabled=amp):
            model.embed(x) if hasattr(model, "embed") else model(x)

    return train_on, embed_on


def batch_labels(cfg: dict, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Labels of one training batch: train.batch_size rows, m_per_class of each class."""
    from dmlbench.bench.train.build import m_per_class

    b = cfg["train"]["batch_size"]
    m = m_per_class(cfg)
    g = torch.Generator().manual_seed(seed)
    classes = torch.randperm(num_classes, generator=g)[: -(-b // m)]
    return classes.repeat_interleave(m)[:b]


def model_step(cfg: dict, device: torch.device, *, num_classes: int = 100,
               in_channels: int = 3):
    """(train step, embed step) closures of the config's model, method and optimizer on
    synthetic images on `device`; random trunk weights."""
    train_on, embed_on = step_functions(cfg, device, num_classes=num_classes,
                                        in_channels=in_channels)
    size, b = cfg["dataset"]["image_size"], cfg["train"]["batch_size"]
    x = torch.randn(b, in_channels, size, size, device=device)
    y = batch_labels(cfg, num_classes).to(device)
    xe = torch.randn(cfg["eval"]["batch_size"], in_channels, size, size, device=device)
    return (lambda: train_on(x, y)), (lambda: embed_on(xe))


def measure_model(cfg: dict, device: torch.device, *, iterations: int, warmup: int = 2,
                  num_classes: int = 100, in_channels: int = 3) -> dict[str, Any]:
    """Training and embedding images/s of the config's model on `device` (see module doc)."""
    train, embed = model_step(cfg, device, num_classes=num_classes, in_channels=in_channels)
    step_s = _timed(train, iterations, warmup, device)
    embed_s = _timed(embed, max(1, iterations // 4), max(1, warmup // 2), device)
    t = cfg["train"]
    return {"trunk": cfg["model"]["trunk"], "batch_size": t["batch_size"],
            "image_size": cfg["dataset"]["image_size"], "amp": bool(t["amp"]),
            "amp_used": device.type == "cuda" and bool(t["amp"]),
            "method": cfg["method"]["name"], "num_classes": num_classes,
            "eval_batch_size": cfg["eval"]["batch_size"], "iterations": iterations,
            "step_s": step_s, "train_images_per_s": t["batch_size"] / step_s,
            "embed_images_per_s": cfg["eval"]["batch_size"] / embed_s}


def measure_data(transforms: str, image_size: int, device: torch.device, *, images: int = 64,
                 batch_size: int = 32, trunk: str = "bninception") -> dict[str, Any]:
    """Per-image cost of the PIL path (CPU-s in one loader process) and of the cache path
    (wall s on `device`) for the transforms preset at `image_size` (see module doc)."""
    import numpy as np

    from dmlbench.bench.data.synthetic import scratch_dataset_cache, synthetic_cub
    from dmlbench.bench.data import DMLDataset
    from dmlbench.bench.data.loading import BatchPlan, ImageSource, Split
    from dmlbench.bench.models.transforms import make_transforms

    tr = make_transforms(transforms, trunk)
    batch_size = min(batch_size, images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with scratch_dataset_cache() as d:
            paths = synthetic_cub(d / "images", images)
            labels = np.arange(images) % 8
            ds = DMLDataset("calibration", labels, [str(c) for c in range(8)], np.arange(4),
                            np.arange(4, 8), paths=paths)
            split = Split(ds, np.arange(images))
            plan = BatchPlan(split.labels, batch_size, 1, max(1, images // batch_size), 0)
            pil = ImageSource(split, torch.device("cpu"), image_size=image_size,
                              transforms=tr)
            c0 = time.process_time()
            n = sum(len(x) for x, _ in pil.train_batches(
                plan, augment=True, generator=torch.Generator().manual_seed(0)))
            pil_cpu = (time.process_time() - c0) / n
            cache = ImageSource(split, device, image_size=image_size, transforms=tr,
                                cache="device")
            gen = torch.Generator().manual_seed(0)

            def crops() -> None:
                for x, _ in cache.train_batches(plan, augment=True, generator=gen):
                    x.sum()       # every batch is made before the clock stops

            cache_s = _timed(crops, 3, 1, device) / n
    finally:
        torch.set_num_threads(threads)
    return {"transforms": transforms, "image_size": image_size, "images": n,
            "pil_cpu_s": pil_cpu, "cache_s": cache_s}


def calibrate(cfg: dict, *, device: "str | torch.device | None" = None,
              iterations: int | None = None, num_classes: int = 100, in_channels: int = 3,
              data: bool = True, data_images: int = 64,
              path: "str | Path | None" = None) -> dict[str, Any]:
    """Measure the config's model (and, for an on-disk transforms preset, its data paths) on
    `device` (default: the GPU if any, else the CPU) and store the figures; returns
    {"device", "model": entry, "data": entry or None, "path"}."""
    dev = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} asks for CUDA, which this machine does not have; "
                        "use --device cpu")
    name = device_name(dev)
    n = iterations or (DEFAULT_ITERATIONS if dev.type == "cuda" else CPU_ITERATIONS)
    stamp = {"device": name, "torch": torch.__version__,
             "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    from dmlbench.bench.train.build import torch_settings

    with torch_settings(cfg["train"]["threads"], cfg["train"]["deterministic"]):
        model = {**measure_model(cfg, dev, iterations=n, warmup=max(1, min(20, n // 10)),
                                 num_classes=num_classes, in_channels=in_channels),
                 "threads": torch.get_num_threads(), **stamp}
    log.info("calibrated %s on %s: train %.1f img/s, embed %.1f img/s", model["trunk"], name,
             model["train_images_per_s"], model["embed_images_per_s"])
    entry = None
    if data and cfg["dataset"]["transforms"] != "default":
        entry = {**measure_data(cfg["dataset"]["transforms"], cfg["dataset"]["image_size"],
                                dev, images=data_images), **stamp}
    written = store({model_key_of(cfg, name): model},
                    {data_key_of(cfg, name): entry} if entry else None, path)
    return {"device": name, "model": model, "data": entry, "path": str(written)}
