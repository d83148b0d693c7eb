"""`make gpu-check` (bench/benchmarks/gpu_check.py): its CPU fallback runs unattended in one
process and writes every figure item 7 asks for, as consistent numbers."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_makefile_target():
    text = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split()
    assert "gpu-check" in phony
    rule = re.search(r"^gpu-check: (.*)\n\t(.*)$", text, re.M)
    assert rule.group(1).split() == ["$(STAMP)"]
    assert rule.group(2) == "$(PY) -m dmlbench.bench.benchmarks.gpu_check --out runs/gpu-check"


def _finite_pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback runs without CUDA")
def test_cpu_fallback_writes_sane_figures(tmp_path):
    out = tmp_path / "runs" / "gpu-check"
    env = {**os.environ, "DMLBENCH_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "dmlbench.bench.benchmarks.gpu_check", "--out",
                        str(out)], capture_output=True, text=True, env=env, timeout=300,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "no CUDA: CPU fallback" in p.stdout
    f = json.loads(out.with_suffix(".json").read_text())
    md = out.with_suffix(".md").read_text()
    assert f["mode"] == "no CUDA: CPU fallback" and not f["cuda"] and "CPU fallback" in md
    s = f["settings"]
    # training: both batch sizes x both paths; images/s = batch / step time
    assert set(f["training"]) == {f"{p}_b{b}" for p in ("pil", "cache") for b in s["batches"]}
    for key, r in f["training"].items():
        assert "error" not in r, r
        assert r["batch"] == int(key.split("_b")[1]) and r["steps"] == s["iterations"]
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["step_ms"] / 1e3))
        assert 0 <= r["outside_forward_backward_share"] < 1
        assert r["forward_backward_ms"] == pytest.approx(
            r["step_ms"] * (1 - r["outside_forward_backward_share"]))
        assert key in md
    # MemVir: CARS and SOP, ring on the device and on the host, ring full (k = N)
    step = f["training"][f"cache_b{s['batches'][-1]}"]["forward_backward_ms"]
    assert f["memvir"]["bninception_forward_backward_ms"] == step
    for name in ("cars", "sop"):
        for ring in ("ring_device", "ring_host"):
            r = f["memvir"][name][ring]
            assert _finite_pos(r["wrapper_ms"]) and _finite_pos(r["plain_ms"])
            assert r["overhead_ms"] == pytest.approx(r["wrapper_ms"] - r["plain_ms"])
            assert r["overhead_vs_step"] == pytest.approx(r["overhead_ms"] / step)
            assert r["virtual_steps"] == s["memvir"]["N"]
    d = f["das"]
    assert d["ratio"] == pytest.approx(d["das_ms"] / d["ms_ms"]) and _finite_pos(d["ratio"])
    e = f["evaluator"]
    assert e["rows"] == s["evaluator_rows"] and e["max_abs_diff"] <= 1e-6
    assert e["ratio"] == pytest.approx(e["pml_s"] / e["ours_s"])
    assert all(0 <= v <= 1 for v in e["metrics"].values())
    assert e["knn_device"] == "cpu" and e["knn_over_gemm"] == pytest.approx(
        e["knn_s"] / e["gemm_floor_s"]) and _finite_pos(e["knn_s"])
    assert "Exact kNN on cpu" in md
    assert _finite_pos(f["wall_s"]) and f["wall_s"] < 300
