"""GPU-hour estimates of a suite's runs and MLRC studies (`dmlbench suite NAME --plan`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass
class Estimate:
    """Images through training and evaluation, and the GPU hours they take (nan: unknown).
    `iterations` per epoch, `evaluations` per fit on `eval_set` images each, `fits` in all."""

    train_images: float
    eval_images: float
    gpu_hours: float
    iterations: float = math.nan
    evaluations: int = 0
    eval_set: float = math.nan
    fits: int = 1
    upper_bound: bool = False


def _rates(cfg: dict) -> tuple[float, float] | None:
    trunk = cfg["model"]["trunk"]
    if trunk in NEGLIGIBLE_TRUNKS:
        return math.inf, math.inf
    key = "timm" if trunk.startswith("timm:") else trunk
    if key not in THROUGHPUT:
        return None
    res, train, embed = THROUGHPUT[key]
    scale = (res / cfg["dataset"]["image_size"]) ** 2 * (1.0 if cfg["train"]["amp"] else 0.5)
    return train * scale, embed * scale


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


def _fit_images(cfg: dict, train_images: float | None, eval_images: float | None
                ) -> tuple[float, float, float, int]:
    """(images trained on, images embedded, iterations per epoch, evaluations) of one fit
    that runs all its epochs."""
    t = cfg["train"]
    iters = t["iterations_per_epoch"] or (max(1, int(train_images) // t["batch_size"])
                                          if train_images is not None else math.nan)
    evals = -(-t["epochs"] // t["eval_every"])  # every k epochs, and the last one
    return (t["epochs"] * iters * t["batch_size"],
            evals * eval_images if eval_images is not None else math.nan, iters, evals)


def _hours(cfg: dict, train_images: float, eval_images: float) -> float:
    rates = _rates(cfg)
    if rates is None:
        return math.nan
    if math.isinf(rates[0]):
        return 0.0
    return (train_images / rates[0] + eval_images / rates[1]) / 3600.0


def estimate_run(cfg: dict, *, measure: bool = False) -> Estimate:
    """GPU hours of one conventional run (all epochs: conventional runs do not stop early
    unless train.patience is set)."""
    sizes = dataset_sizes(cfg, measure=measure) or {}
    train, ev, iters, evals = _fit_images(cfg, sizes.get("train"), sizes.get("test"))
    return Estimate(train, ev, _hours(cfg, train, ev), iters, evals,
                    sizes.get("test", math.nan), upper_bound=cfg["train"]["patience"] is not None)


def estimate_study(ps: PlannedStudy, *, measure: bool = False) -> Estimate:
    """Upper bound of the GPU hours of one MLRC study: (n_trials + reproductions) x folds fits
    that all run to train.epochs (early stopping usually ends them far earlier), plus the
    reproductions' test embeddings."""
    cfg, folds = ps.cfg, ps.opts.num_folds
    n_trials = ps.budget.get("n_trials", ps.opts.n_trials)
    reps = ps.budget.get("reproductions", ps.opts.reproductions)
    sizes = dataset_sizes(cfg, measure=measure) or {}
    fold_train = (sizes["trainval"] - sizes["val"]) if sizes else None
    train, ev, iters, evals = _fit_images(cfg, fold_train, sizes.get("val"))
    fits = (n_trials + reps) * folds
    test = reps * folds * sizes.get("test_mlrc", math.nan)
    return Estimate(fits * train, fits * ev + test, _hours(cfg, fits * train, fits * ev + test),
                    iters, evals, sizes.get("val", math.nan), fits=fits, upper_bound=True)


def throughput_note() -> str:
    """One line stating the throughputs the estimates assume."""
    rates = ", ".join(f"{k} {r}px train {t:.0f} / embed {e:.0f} img/s"
                      for k, (r, t, e) in THROUGHPUT.items())
    return (f"Assumed: one A100-class GPU with AMP ({rates}; timm models like resnet50; "
            f"{', '.join(NEGLIGIBLE_TRUNKS)} ~0; rates scale with pixel count, halved without "
            "AMP; data loading keeps up; kNN/k-means time not counted).")
