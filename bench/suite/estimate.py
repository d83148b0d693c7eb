"""GPU-hour estimates of a suite's runs and MLRC studies (`dmlbench suite NAME --plan`): from
the figures `dmlbench calibrate` measured on this device where the calibration file has them
(bench.calibrate), else from the assumed ones below; for the model alone, the PIL data path and
the decoded-image cache path; MLRC studies as a range from the patience rule's earliest stop
to every fit's last epoch."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from dmlbench.bench.errors import UserError
from dmlbench.bench.suite.schema import PlannedStudy

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


# Assumed data-path costs, seconds per image, where no calibration has them: the PIL path's
# CPU-seconds per image in one loader process (JPEG decode + the mlrc train transform, CUB-size
# JPEGs: 146 images per CPU-second in BENCHMARKS.md, "Data pipeline"), and the decoded-image
# cache's device-side crops on a GPU (not measured: assumed 20,000 images/s).
PIL_CPU_S = 1 / 146
CACHE_DEVICE_S = 1 / 20000


@dataclass
class Rates:
    """The model's images/s (training step, embedding), the data paths' seconds per image
    (0 for in-memory datasets), the loader processes of the PIL path, and which are measured."""

    train: float
    embed: float
    pil_s: float = 0.0
    cache_s: float = 0.0
    workers: int = 0
    measured: bool = False
    data_measured: bool = False
    in_memory: bool = False


@dataclass
class Estimate:
    """Images through training and evaluation, and the GPU hours they take (nan: unknown).
    `iterations` per epoch, `evaluations` per fit on `eval_set` images each, `fits` in all.
    `gpu_hours` is the model alone (data loading keeping up) with every fit to its last epoch;
    `hours` the (min, max) of each data path ("model", "pil", "cache"): min with every fit
    stopped at the earliest epoch train.patience allows, max with every fit to its last."""

    train_images: float
    eval_images: float
    gpu_hours: float
    iterations: float = math.nan
    evaluations: int = 0
    eval_set: float = math.nan
    fits: int = 1
    upper_bound: bool = False
    hours: dict = field(default_factory=dict)
    measured: bool = False
    data_measured: bool = False
    stop_epochs: tuple = ()
    in_memory: bool = False


def earliest_stop(epochs: int, eval_every: int, patience: int | None) -> int:
    """The first epoch at which the patience rule can end a fit: the best evaluation is the
    first (epoch eval_every), and the fit stops at the first evaluation more than `patience`
    epochs after it (or at its last epoch)."""
    if patience is None:
        return epochs
    first = min(eval_every, epochs)
    return min(epochs, (first + patience) // eval_every * eval_every + eval_every)


def _assumed_rates(cfg: dict) -> tuple[float, float] | None:
    trunk = cfg["model"]["trunk"]
    if trunk in NEGLIGIBLE_TRUNKS:
        return math.inf, math.inf
    key = "timm" if trunk.startswith("timm:") else trunk
    if key not in THROUGHPUT:
        return None
    res, train, embed = THROUGHPUT[key]
    scale = (res / cfg["dataset"]["image_size"]) ** 2 * (1.0 if cfg["train"]["amp"] else 0.5)
    return train * scale, embed * scale


def rates(cfg: dict, calibration: dict | None = None, device: str | None = None
          ) -> Rates | None:
    """The config's rates: the calibration's figures for `device` (a device name, see
    bench.calibrate) where it has them, else the assumed ones; None if neither knows the
    trunk."""
    from dmlbench.bench import calibrate as K

    cal = calibration or {"model": {}, "data": {}}
    m = cal["model"].get(K.model_key_of(cfg, device)) if device else None
    if m is not None:
        train, embed, measured = m["train_images_per_s"], m["embed_images_per_s"], True
    else:
        assumed = _assumed_rates(cfg)
        if assumed is None:
            return None
        (train, embed), measured = assumed, False
    in_memory = cfg["dataset"]["transforms"] == "default" and cfg["dataset"]["name"] == "glyphs"
    d = cal["data"].get(K.data_key_of(cfg, device)) if device and not in_memory else None
    pil, cache = ((0.0, 0.0) if in_memory else (d["pil_cpu_s"], d["cache_s"]) if d
                  else (PIL_CPU_S, CACHE_DEVICE_S))
    return Rates(train, embed, pil, cache, cfg["train"]["num_workers"], measured, d is not None,
                 in_memory)


def path_rate(model_rate: float, data_s: float, workers: int, path: str) -> float:
    """Images/s of the model fed by a data path: "model" (data keeping up); "pil" (loader
    processes beside the model: the slower of the two, or one after the other without
    workers); "cache" (crops on the device, one after the other with the step)."""
    if path == "model" or data_s == 0:
        return model_rate
    if path == "pil" and workers > 0:
        return min(model_rate, workers / data_s)
    return 1.0 / (1.0 / model_rate + data_s)


def _path_hours(r: Rates | None, train_images: float, eval_images: float) -> dict:
    if r is None:
        return {p: math.nan for p in ("model", "pil", "cache")}
    if math.isinf(r.train) and math.isinf(r.embed):
        return {p: 0.0 for p in ("model", "pil", "cache")}
    out = {}
    for p in ("model", "pil", "cache"):
        data_s = r.pil_s if p == "pil" else r.cache_s
        out[p] = (train_images / path_rate(r.train, data_s, r.workers, p)
                  + eval_images / path_rate(r.embed, data_s, r.workers, p)) / 3600.0
    return out


def _ranges(lo: dict, hi: dict) -> dict:
    return {p: (lo[p], hi[p]) for p in hi}


def dataset_sizes(cfg: dict, *, measure: bool = False) -> dict[str, float] | None:
    """Image counts of the config's dataset: "train"/"test" (conventional split), "trainval",
    "val" (one MLRC validation fold), "test_mlrc"; from the published counts of CUB/CARS196/SOP
    (the MLRC ones approximated from the class counts) unless `measure` is set, else from the
    loaded dataset. None if the dataset cannot be loaded."""
    import numpy as np

    from dmlbench.bench.data import load_configured
    from dmlbench.bench.data.real import DATASET_INFO
    from dmlbench.protocols.splits import mlrc_folds

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


def _fit_images(cfg: dict, train_images: float | None, eval_images: float | None,
                epochs: int | None = None) -> tuple[float, float, float, int]:
    """(images trained on, images embedded, iterations per epoch, evaluations) of one fit
    that runs `epochs` epochs (default: all of train.epochs)."""
    t = cfg["train"]
    epochs = epochs or t["epochs"]
    iters = t["iterations_per_epoch"] or (max(1, int(train_images) // t["batch_size"])
                                          if train_images is not None else math.nan)
    evals = -(-epochs // t["eval_every"])  # every k epochs, and the last one
    return (epochs * iters * t["batch_size"],
            evals * eval_images if eval_images is not None else math.nan, iters, evals)


def _stop(cfg: dict) -> int:
    t = cfg["train"]
    return earliest_stop(t["epochs"], t["eval_every"], t["patience"])


def estimate_run(cfg: dict, *, measure: bool = False, calibration: dict | None = None,
                 device: str | None = None) -> Estimate:
    """GPU hours of one conventional run (all epochs: conventional runs do not stop early
    unless train.patience is set); measured rates from `calibration` for `device` where it
    has them."""
    sizes = dataset_sizes(cfg, measure=measure) or {}
    r = rates(cfg, calibration, device)
    train, ev, iters, evals = _fit_images(cfg, sizes.get("train"), sizes.get("test"))
    lo_train, lo_ev, _, _ = _fit_images(cfg, sizes.get("train"), sizes.get("test"), _stop(cfg))
    hi = _path_hours(r, train, ev)
    return Estimate(train, ev, hi["model"], iters, evals, sizes.get("test", math.nan),
                    upper_bound=cfg["train"]["patience"] is not None,
                    hours=_ranges(_path_hours(r, lo_train, lo_ev), hi),
                    measured=bool(r and r.measured), data_measured=bool(r and r.data_measured),
                    stop_epochs=(_stop(cfg), cfg["train"]["epochs"]),
                    in_memory=bool(r and r.in_memory))


def estimate_study(ps: PlannedStudy, *, measure: bool = False, calibration: dict | None = None,
                   device: str | None = None) -> Estimate:
    """GPU hours of one MLRC study: (n_trials + reproductions) x folds fits, plus the
    reproductions' test embeddings. `gpu_hours`: the upper bound, every fit to train.epochs;
    `hours`: (min, max) per data path, min with every fit stopped at the earliest epoch the
    patience rule allows."""
    cfg, folds = ps.cfg, ps.opts.num_folds
    n_trials = ps.budget.get("n_trials", ps.opts.n_trials)
    reps = ps.budget.get("reproductions", ps.opts.reproductions)
    sizes = dataset_sizes(cfg, measure=measure) or {}
    r = rates(cfg, calibration, device)
    fold_train = (sizes["trainval"] - sizes["val"]) if sizes else None
    fits = (n_trials + reps) * folds
    test = reps * folds * sizes.get("test_mlrc", math.nan)
    out = {}
    for key, epochs in (("max", None), ("min", _stop(cfg))):
        train, ev, iters, evals = _fit_images(cfg, fold_train, sizes.get("val"), epochs)
        out[key] = (fits * train, fits * ev + test, iters, evals)
    train, ev, iters, evals = out["max"]
    hi = _path_hours(r, train, ev)
    lo = _path_hours(r, out["min"][0], out["min"][1])
    return Estimate(train, ev, hi["model"], iters, evals, sizes.get("val", math.nan),
                    fits=fits, upper_bound=True, hours=_ranges(lo, hi),
                    measured=bool(r and r.measured), data_measured=bool(r and r.data_measured),
                    stop_epochs=(_stop(cfg), cfg["train"]["epochs"]),
                    in_memory=bool(r and r.in_memory))


def throughput_note() -> str:
    """One line stating the throughputs the estimates assume."""
    rates_ = ", ".join(f"{k} {r}px train {t:.0f} / embed {e:.0f} img/s"
                       for k, (r, t, e) in THROUGHPUT.items())
    return (f"Assumed: one A100-class GPU with AMP ({rates_}; timm models like resnet50; "
            f"{', '.join(NEGLIGIBLE_TRUNKS)} ~0; rates scale with pixel count, halved without "
            "AMP; kNN/k-means time not counted); data paths: PIL "
            f"{1 / PIL_CPU_S:.0f} images per CPU-second per loader process "
            f"(train.num_workers of them beside the GPU), cache crops on the GPU "
            f"{1 / CACHE_DEVICE_S:,.0f} img/s after the step (one-time decode not counted).")
