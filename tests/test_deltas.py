"""Paired deltas with t-based CIs, checked by hand."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from dmlbench.results.deltas import deltas_markdown, paired_deltas


def test_paired_deltas_by_hand():
    rows = []
    base = [0.50, 0.52, 0.47]
    var = [0.55, 0.56, 0.50]           # differences 0.05, 0.04, 0.03
    for s, (b, v) in enumerate(zip(base, var)):
        rows.append({"method": "a", "base_method": None, "dataset": "g", "seed": s,
                     "precision_at_1": b})
        rows.append({"method": "a+x", "base_method": "a", "dataset": "g", "seed": s,
                     "precision_at_1": v})
    rows.append({"method": "a+x", "base_method": "a", "dataset": "g", "seed": 9,
                 "precision_at_1": 0.9})   # no base run with seed 9: not paired
    d = paired_deltas(pd.DataFrame(rows), ["precision_at_1"])
    assert len(d) == 1
    r = d.iloc[0]
    assert r["n"] == 3 and r["delta"] == pytest.approx(0.04)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)     # t(0.975, 2) * sd / sqrt(n)
    assert r["ci_low"] == pytest.approx(0.04 - half) and r["ci_high"] == pytest.approx(0.04 + half)
    assert "| g | a+x | a | precision_at_1 | 3 | +4.00 |" in deltas_markdown(d)
