"""Importing dmlbench, and running a fit, leave the process's global settings as they were."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

MODULES = ["dmlbench.bench.config", "dmlbench.bench.data", "dmlbench.bench.evaluate", "dmlbench.bench.models", "dmlbench.bench.records",
           "dmlbench.bench.suite", "dmlbench.bench.train", "dmlbench.bench.cli", "dmlbench.methods", "dmlbench", "dmlbench.protocols.conventional",
           "dmlbench.protocols.mlrc", "dmlbench.protocols.mlrc.storage", "dmlbench.protocols.mlrc.run", "dmlbench.protocols.splits", "dmlbench.results.tables",
           "dmlbench.results.importance", "dmlbench.results.html", "dmlbench.results.plots"]


def test_import_changes_no_global_state():
    code = textwrap.dedent(f"""
        import importlib, logging, os, sys, warnings
        import matplotlib, optuna, torch
        # third-party libraries may set their own filters on import: not ours to judge
        import faiss, pandas, pytorch_metric_learning.losses, scipy.special, sklearn.metrics
        import torchvision
        def snap():
            return (optuna.logging.get_verbosity(), len(warnings.filters),
                    torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                    matplotlib.get_backend(), len(logging.getLogger().handlers),
                    os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        before = snap()
        for m in {MODULES!r}:
            importlib.import_module(m)
        after = snap()
        assert before == after, (before, after)
        print("same")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "same", out.stderr[-2000:]


def test_fit_restores_threads_and_determinism_flags(tiny_glyphs, tiny_overrides):
    import torch

    from dmlbench.bench.config import load_config
    from dmlbench.bench.data.loading import Split
    from dmlbench.bench.train import fit

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    cfg = load_config(overrides=[*tiny_overrides, "train.epochs=1", "train.threads=1"])
    fit(cfg, Split.of_classes(tiny_glyphs, tiny_glyphs.train_classes),
        Split.of_classes(tiny_glyphs, tiny_glyphs.test_classes))
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
