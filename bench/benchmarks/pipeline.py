"""Images/s of the training data pipeline alone (no model), issue 12 item 3: the PIL path
(DataLoader, JPEG decode + torchvision transforms) against the decoded-image cache
(`dataset.cache`), side by side in one process.

Data: synthetic JPEGs of CUB's size distribution (4 in 5 landscape 500 x 300-500 px, 1 in 5
portrait 300-500 x 500 px; smooth colour fields plus texture noise, quality 90, ~60 kB each),
the "mlrc" preset (Resize(256) -> RandomResizedCrop(227, scale (0.16, 1)) -> flip) with
BN-Inception's normalisation, batches of 32 on the CPU. Rows: PIL with num_workers 0 and 2;
the cache in host memory and on the "device" (here CPU tensors; its crops are torch's uint8
antialiased resize, one image at a time); and, for reference, the CUDA code path (the whole
batch as two matrix products) run on the CPU. Every row runs with one torch thread.

Per CPU core: wall images/s divided by the cores the row keeps busy (workers, else 1), and,
independent of other load on the machine, images per CPU-second (the process's and its
workers' CPU time). Timing starts at the first batch (worker start-up excluded). The one-time
decode into the cache is timed separately.

Fidelity (`fidelity`): the cache path against the PIL path on other synthetic images, in grey
levels: train crops at the same boxes and flips, eval crops, and a random-weight small CNN's
eval embeddings.
"""
from __future__ import annotations

import os
import resource
import time

import numpy as np
import torch

from dmlbench.bench.data.synthetic import scratch_dataset_cache, synthetic_cub

BATCH = 32


def _cpu_s() -> float:
    return time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime \
        + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime


def _measure(source, plan, cores: int) -> dict:
    """One pass over the plan; wall and CPU time from the first batch on."""
    gen = torch.Generator().manual_seed(0)
    it = source.train_batches(plan, augment=True, generator=gen)
    next(it)
    t0, c0 = time.perf_counter(), _cpu_s()
    n = 0
    for x, _ in it:
        n += len(x)
    del it  # ends the DataLoader's workers: their CPU time is then counted
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"images_per_s": n / wall, "cores": cores, "images_per_s_per_core": n / wall / cores,
            "images_per_cpu_s": n / cpu, "images": n}


def main(quick: bool = False) -> dict:
    from dmlbench.bench.data import DMLDataset
    from dmlbench.bench.data.cache import DecodedCache
    from dmlbench.bench.data.loading import BatchPlan, ImageSource, Split
    from dmlbench.bench.models.transforms import make_transforms

    n = 160 if quick else 480
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with scratch_dataset_cache() as d:
            paths = synthetic_cub(d / "images", n)
            kb = np.mean([os.path.getsize(p) for p in paths]) / 1e3
            labels = np.arange(n) % 20
            ds = DMLDataset("cub-like", labels, [str(c) for c in range(20)], np.arange(10),
                            np.arange(10, 20), paths=paths)
            split = Split(ds, np.arange(n))
            tr = make_transforms("mlrc", "bninception")
            plan = BatchPlan(split.labels, BATCH, 1, n // BATCH, 0)
            cpu = torch.device("cpu")
            t0 = time.perf_counter()
            cache = DecodedCache.open_or_build(ds, tr.resize_side(227))
            decode_s = time.perf_counter() - t0
            print(f"   {n} synthetic CUB-size JPEGs (mean {kb:.0f} kB), mlrc preset (227 crop), "
                  f"batch {BATCH}, 1 torch thread; decoded once into the cache in "
                  f"{decode_s:.1f} s ({n / decode_s:.0f} img/s, {cache.nbytes / n / 1e3:.0f} kB "
                  "an image)")
            sources = {
                "pil_workers_0": (lambda: ImageSource(split, cpu, image_size=227,
                                                      num_workers=0, transforms=tr), 1),
                "pil_workers_2": (lambda: ImageSource(split, cpu, image_size=227,
                                                      num_workers=2, transforms=tr), 2),
                "cache_host": (lambda: ImageSource(split, cpu, image_size=227, transforms=tr,
                                                   cache="host"), 1),
                "cache_device_cpu": (lambda: ImageSource(split, cpu, image_size=227,
                                                         transforms=tr, cache="device"), 1),
                "cache_batched_cpu": (lambda: _batched(ImageSource(
                    split, cpu, image_size=227, transforms=tr, cache="device")), 1),
            }
            built = {k: (make(), cores) for k, (make, cores) in sources.items()}
            rows: dict[str, dict] = {}
            for _ in range(1 if quick else 2):  # interleaved repeats; the best of each kept
                for name, (src, cores) in built.items():
                    r = _measure(src, plan, cores)
                    if name not in rows or r["images_per_s"] > rows[name]["images_per_s"]:
                        rows[name] = r
    finally:
        torch.set_num_threads(threads)
    best_pil = max(rows["pil_workers_0"]["images_per_s_per_core"],
                   rows["pil_workers_2"]["images_per_s_per_core"])
    best_pil_cpu = max(rows["pil_workers_0"]["images_per_cpu_s"],
                       rows["pil_workers_2"]["images_per_cpu_s"])
    for name, r in rows.items():
        r["ratio_per_core_vs_best_pil"] = r["images_per_s_per_core"] / best_pil
        r["ratio_per_cpu_s_vs_best_pil"] = r["images_per_cpu_s"] / best_pil_cpu
        print(f"   {name:18s} {r['images_per_s']:7.0f} img/s on {r['cores']} core(s): "
              f"{r['images_per_s_per_core']:7.0f} img/s per core "
              f"(x{r['ratio_per_core_vs_best_pil']:.1f}), {r['images_per_cpu_s']:7.0f} img per "
              f"CPU-s (x{r['ratio_per_cpu_s_vs_best_pil']:.1f})")
    fid = fidelity(quick)
    return {"images": n, "batch": BATCH, "decode_s": decode_s, "rows": rows, "fidelity": fid}


def fidelity(quick: bool = False) -> dict:
    """The cache path against the PIL path on the same synthetic images, in grey levels
    (0-255): train crops at the same boxes and flips ("mlrc": both resamplers; "conventional":
    the PIL crop of the original at the box the cache scales), eval crops, and the eval
    embeddings of a random-weight small CNN (width 32, 64-d, L2-normalised)."""
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import functional as TF

    from dmlbench.bench.config import load_config
    from dmlbench.bench.data import DMLDataset
    from dmlbench.bench.data.cache import TRIES, sample_crop_boxes
    from dmlbench.bench.data.loading import ImageSource, Split
    from dmlbench.bench.models import build_model
    from dmlbench.bench.models.transforms import make_transforms

    n = 16 if quick else 48
    out: dict[str, dict] = {}
    with scratch_dataset_cache() as d:
        paths = synthetic_cub(d / "images", n, seed=1)
        ds = DMLDataset("cub-like", np.arange(n) % 4, list("abcd"), np.arange(2),
                        np.arange(2, 4), paths=paths)
        split, cpu = Split(ds, np.arange(n)), torch.device("cpu")
        pos = np.arange(n)
        for preset, size in (("mlrc", 227), ("conventional", 224)):
            tr = make_transforms(preset, "bninception")
            src = ImageSource(split, cpu, image_size=size, transforms=tr, cache="device")
            ci = src.cached
            u = torch.rand((n, 2 * TRIES + 3), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64).numpy()
            boxes, flips = ci.train_boxes(n, torch.Generator().manual_seed(0), pos)
            pil_boxes = boxes if preset == "mlrc" else sample_crop_boxes(
                ci.orig, u[:, :-1], ci.spec.scale, ci.spec.ratio)
            ref = []
            for p, (t, l_, h, w), f in zip(paths, pil_boxes.tolist(), flips):
                im = Image.open(p).convert("RGB")
                if preset == "mlrc":
                    im = T.Resize(ci.spec.resize)(im)
                im = TF.resized_crop(im, t, l_, h, w, [size, size])
                ref.append(torch.from_numpy(np.array(TF.hflip(im) if f else im)))
            want = torch.stack(ref).permute(0, 3, 1, 2).int()
            for resampler in ("loop", "batched") if preset == "mlrc" else ("loop",):
                ci.resampler = resampler
                diff = (ci.crops(pos, boxes, flips).int() - want).abs().float()
                out[f"{preset}_train_{resampler}"] = {
                    "max": float(diff.max()), "mean": float(diff.mean()),
                    "share_differing": float((diff > 0).float().mean())}
            ci.resampler = "loop"
            pil = ImageSource(split, cpu, image_size=size, transforms=tr)
            (a, _), = pil.eval_batches(n)
            (b, _), = src.eval_batches(n)
            torch.manual_seed(0)
            model = build_model(load_config(overrides=["model.width=32"])["model"],
                                3).eval()
            ea, eb = model.embed(a), model.embed(b)
            out[f"{preset}_eval"] = {"pixels_max": float((a - b).abs().max()),
                                     "embedding_max": float((ea - eb).abs().max()),
                                     "embedding_mean": float((ea - eb).abs().mean())}
    print(f"   fidelity against the PIL path, {n} images (grey levels 0-255):")
    for k, v in out.items():
        print(f"   {k:24s} " + ", ".join(f"{a} {b:.4g}" for a, b in v.items()))
    return out


def _batched(source):
    """The CUDA code path (whole-batch matrix products) on the CPU, for reference."""
    source.cached.resampler = "batched"
    return source
