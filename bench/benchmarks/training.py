"""Training throughput of the demo trunk, and the share of step time outside forward/backward."""
from __future__ import annotations

import tempfile

import torch


def main(quick: bool = False) -> dict:
    from dmlbench.bench.config import load_config
    from dmlbench.bench.data import load_dataset
    from dmlbench.bench.data.loading import Split
    from dmlbench.bench.train import fit

    threads = torch.get_num_threads()
    ds = load_dataset("glyphs")
    rows = {}
    for method in ("normsoftmax", "ms+miner"):
        cfg = load_config(overrides=[f"method.name={method}", "train.epochs=1" if quick
                                     else "train.epochs=2", "train.progress=false",
                                     "eval.metrics=[precision_at_1]"])
        with tempfile.TemporaryDirectory() as d:
            res = fit(cfg, Split.of_classes(ds, ds.train_classes),
                      Split.of_classes(ds, ds.test_classes), run_dir=d)
        share = res.timing["outside_forward_backward_share"]
        rows[method] = {"images_per_s": res.images_per_s, "outside_fb_share": share,
                        "train_s": res.timing["train_s"]}
        print(f"   {method:12s} {res.images_per_s:8.0f} img/s  outside forward/backward "
              f"{100 * share:5.1f}%  (train {res.timing['train_s']:.1f} s, "
              f"batch {cfg['train']['batch_size']}, {cfg['dataset']['image_size']}px, "
              f"{threads} threads)")
    return rows
