"""DAS step cost relative to the multi-similarity miner + loss it feeds, and DAS memory.

Timed, at B=112 (56 classes x 2), d=512, C=11,318 (SOP), T=3, default CUB/CARS settings:
- DAS: one training-mode `das(embeddings, labels)` call (frequency update, masks, bank update,
  generation of the 336 extra rows), embeddings requiring grad;
- MS: the registry's `ms` defaults, `miner(emb_all, labels_all)` + `loss(...)` forward and
  `backward()` on the 448 rows DAS returned.
Both run interleaved in the same process; the ratio is the ratio of the medians. Measured with
one torch thread (the headline `ratio`, wall clock) and with the default thread count; CPU
time (thread_time) is shown beside wall time, since on a shared machine a descheduled
OpenMP worker stalls every parallel op of the many small ones DAS runs.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from dmlbench.methods.das import DAS
from dmlbench.methods.registry import get_method

SOP_CLASSES = 11318
SETTINGS = (("CUB", 100, 128), ("CUB", 100, 512), ("CARS", 98, 128), ("CARS", 98, 512),
            ("SOP", SOP_CLASSES, 128), ("SOP", SOP_CLASSES, 512))


def _memory_rows(bank_size: int = 10) -> list[dict]:
    rows = []
    for name, C, d in SETTINGS:
        rows.append({"dataset": name, "classes": C, "d": d, "bank_size": bank_size,
                     "bank_bytes": C * bank_size * d * 4,          # fp32
                     "frequency_bytes": C * d * 8,                 # int64 counts
                     "position_bytes": 2 * C * 8})                 # bank_pos + bank_fill
    return rows


def _measure(das: DAS, loss, miner, labels: torch.Tensor, feats: torch.Tensor,
             repeats: int) -> dict:
    """Interleaved repeats; wall (perf_counter) and CPU (thread_time) medians in ms."""

    def run_das():
        emb = feats.clone().requires_grad_(True)
        w, c = time.perf_counter(), time.thread_time()
        out, lab = das(emb, labels)
        return time.perf_counter() - w, time.thread_time() - c, out, lab

    def run_ms(out, lab):
        x = out.detach().requires_grad_(True)
        w, c = time.perf_counter(), time.thread_time()
        loss(x, lab, miner(x, lab)).backward()
        return time.perf_counter() - w, time.thread_time() - c

    for _ in range(3):                                     # warm-up
        *_, out, lab = run_das()
        run_ms(out, lab)
    rows = {"das_wall": [], "das_cpu": [], "ms_wall": [], "ms_cpu": []}
    for _ in range(repeats):
        dw, dc, out, lab = run_das()
        mw, mc = run_ms(out, lab)
        for key, value in zip(rows, (dw, dc, mw, mc)):
            rows[key].append(value)
    med = {k: 1e3 * statistics.median(v) for k, v in rows.items()}
    return {**{f"{k}_ms": v for k, v in med.items()},
            "ratio_wall": med["das_wall"] / med["ms_wall"],
            "ratio_cpu": med["das_cpu"] / med["ms_cpu"]}


def main(quick: bool = False) -> dict:
    torch.manual_seed(0)
    B, d, C, T = 112, 512, SOP_CLASSES, 3
    repeats = 11 if quick else 41
    das = DAS(C, d, num_produce=T).train()
    loss, miner = get_method("ms+miner").components(C, d, **get_method("ms+miner").defaults)
    # classes spread over the label range, 2 images each, as a 2-per-class sampler gives
    labels = torch.randperm(C)[: B // 2].repeat_interleave(2)
    feats = F.normalize(torch.randn(B, d), dim=1)
    default_threads = torch.get_num_threads()
    results = {}
    try:
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            results[threads] = _measure(das, loss, miner, labels, feats, repeats)
    finally:
        torch.set_num_threads(default_threads)
    print(f"   B={B} (56 classes x 2), d={d}, C={C}, T={T}; median of {repeats} interleaved "
          f"repeats; DAS = one training-mode das(embeddings, labels) call (448 rows out); "
          f"MS = registry `ms` miner + loss forward + backward on those 448 rows")
    print(f"   {'threads':>7s} {'DAS wall':>10s} {'MS wall':>10s} {'ratio':>7s}   "
          f"{'DAS cpu':>10s} {'MS cpu':>10s} {'ratio':>7s}   (target ratio <= 0.10)")
    for threads, r in results.items():
        print(f"   {threads:7d} {r['das_wall_ms']:8.2f}ms {r['ms_wall_ms']:8.2f}ms "
              f"{r['ratio_wall']:7.3f}   {r['das_cpu_ms']:8.2f}ms {r['ms_cpu_ms']:8.2f}ms "
              f"{r['ratio_cpu']:7.3f}")
    mem = _memory_rows()
    print(f"   {'dataset':8s} {'C':>6s} {'d':>4s} {'Z':>3s} {'bank MB':>9s} {'freq MB':>9s}")
    for r in mem:
        print(f"   {r['dataset']:8s} {r['classes']:6d} {r['d']:4d} {r['bank_size']:3d} "
              f"{r['bank_bytes'] / 1e6:9.2f} {r['frequency_bytes'] / 1e6:9.2f}")
    return {"batch": B, "embedding_size": d, "num_classes": C, "num_produce": T,
            "repeats": repeats, "timings_by_threads": results,
            "ratio": results[1]["ratio_wall"], "target_ratio": 0.10, "memory": mem}


if __name__ == "__main__":
    main()
