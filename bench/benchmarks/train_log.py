"""Cost of the training log: fits with the log every 10 iterations (the default) against fits
with train.log_every huge (one line per epoch), side by side; and the time spent building and
writing the log lines (loop's `on_log` path: lrs, `Objective.stats()`, every callback's
`on_log`) measured directly, as a share of step time. Also DAS's per-step host copy of its
bank fill (the one piece of the log's bookkeeping inside the step)."""
from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import contextmanager

METHODS = {"normsoftmax": [],
           "memvir+normsoftmax": ["method.params.warmup_epochs=0", "method.params.num_steps=5",
                                  "method.params.step_gap=5"],
           "ms+das": []}
HUGE = 1 << 20


@contextmanager
def _timed(cls, name: str, acc: dict, key: str, only_hook: str | None = None,
           clock=time.perf_counter):
    """Accumulate the time (`clock`) of `cls.name` calls into acc[key] (and count them)."""
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        if only_hook is not None and args[0] != only_hook:
            return original(self, *args, **kwargs)
        t0 = clock()
        try:
            return original(self, *args, **kwargs)
        finally:
            acc[key] += clock() - t0
            acc[key + "_n"] += 1

    setattr(cls, name, wrapper)
    try:
        yield
    finally:
        setattr(cls, name, original)


def _fit(cfg, tr, te) -> tuple[float, dict]:
    from dmlbench.bench.train import fit
    from dmlbench.bench.train.loop import Trainer
    from dmlbench.methods.das import DAS

    acc = {k: 0.0 for k in ("on_log", "on_log_n", "stats", "stats_n", "lrs", "lrs_n",
                            "das_copy", "das_copy_n", "epoch_cpu", "epoch_cpu_n")}
    with _timed(Trainer, "_call", acc, "on_log", only_hook="on_log"), \
            _timed(Trainer, "train_epoch", acc, "epoch_cpu", clock=time.process_time), \
            _timed(Trainer, "_stats", acc, "stats"), _timed(Trainer, "lrs", acc, "lrs"), \
            _timed(DAS, "_copy_fill_to_host", acc, "das_copy"), \
            tempfile.TemporaryDirectory() as d:
        res = fit(cfg, tr, te, run_dir=d)
    return res.timing["train_s"], acc


def main(quick: bool = False) -> dict:
    from dmlbench.bench.config import load_config
    from dmlbench.bench.data import load_dataset
    from dmlbench.bench.data.loading import Split

    ds = load_dataset("glyphs", num_classes=100)
    tr, te = Split.of_classes(ds, ds.train_classes), Split.of_classes(ds, ds.test_classes)
    iters, repeats = (30, 1) if quick else (60, 3)
    base = ["dataset.options={num_classes: 100}", "model.width=16", "model.embedding_size=64",
            "train.batch_size=64", "train.epochs=1", f"train.iterations_per_epoch={iters}",
            "train.progress=false", "train.threads=1", "eval.metrics=[precision_at_1]",
            "eval.recall_ks=[1]"]
    rows = {}
    for method, params in METHODS.items():
        step = {10: [], HUGE: []}
        cpu = {10: [], HUGE: []}
        direct = []
        for r in range(repeats):
            order = (10, HUGE) if r % 2 == 0 else (HUGE, 10)   # interleaved
            for every in order:
                cfg = load_config(overrides=[*base, f"method.name={method}", *params,
                                             f"train.log_every={every}"])
                train_s, acc = _fit(cfg, tr, te)
                step[every].append(train_s / iters)
                cpu[every].append(acc["epoch_cpu"] / iters)
                if every == 10:
                    direct.append(acc)
        med = {k: statistics.median(v) for k, v in step.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        lines = statistics.median(a["on_log_n"] for a in direct)
        # the on_log path: the callbacks' hooks + lrs() + stats() (both run before the hooks)
        per_line = statistics.median((a["on_log"] + a["stats"] + a["lrs"]) / a["on_log_n"]
                                     for a in direct)
        das_copy = statistics.median(a["das_copy"] / max(a["das_copy_n"], 1) for a in direct)
        share = per_line * lines / (med[10] * iters)
        rows[method] = {"step_s_log_every_10": med[10], "step_s_log_every_huge": med[HUGE],
                        "end_to_end_ratio": med[10] / med[HUGE],
                        "cpu_step_s_log_every_10": med_cpu[10],
                        "cpu_step_s_log_every_huge": med_cpu[HUGE],
                        "cpu_ratio": med_cpu[10] / med_cpu[HUGE], "lines": lines,
                        "per_line_s": per_line, "log_share_of_step_time": share,
                        "das_copy_per_step_s": das_copy if method.endswith("das") else None}
        extra = (f", DAS fill copy {1e6 * das_copy:.1f} us/step "
                 f"({100 * das_copy / med[10]:.3f}%)" if method.endswith("das") else "")
        print(f"   {method:20s} step {1e3 * med[10]:6.1f} ms wall / {1e3 * med_cpu[10]:6.1f} ms "
              f"CPU (log every 10) vs {1e3 * med[HUGE]:6.1f} / {1e3 * med_cpu[HUGE]:6.1f} ms "
              f"(every {HUGE}): x{med[10] / med[HUGE]:.3f} wall, "
              f"x{med_cpu[10] / med_cpu[HUGE]:.3f} CPU; {lines:.0f} lines x "
              f"{1e6 * per_line:.0f} us = {100 * share:.3f}% of step time{extra}")
    print(f"   ({iters} iterations x {repeats} interleaved repeats, batch 64, 32 px, "
          "1 torch thread)")
    return rows
