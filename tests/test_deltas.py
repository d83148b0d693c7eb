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


def test_ablations_compare_with_their_full_method_and_against_pairs():
    """NAME@what rows are also paired with NAME; `against` adds any other pair."""
    rows = []
    vals = {"a": [0.50, 0.52, 0.47], "a+x": [0.55, 0.56, 0.50], "a+x@no-y": [0.53, 0.57, 0.49],
            "a+z": [0.40, 0.41, 0.42]}
    for m, vs in vals.items():
        for s, v in enumerate(vs):
            rows.append({"method": m, "base_method": None if m == "a" else "a",
                         "dataset": "g", "seed": s, "precision_at_1": v})
    df = pd.DataFrame(rows)
    d = paired_deltas(df, ["precision_at_1"])
    got = {(r.method, r.base): round(r.delta, 10) for r in d.itertuples()}
    # a+x@no-y - a+x per seed: -0.02, +0.01, -0.01 -> mean -0.02/3
    assert got == {("a+x", "a"): 0.04, ("a+x@no-y", "a"): round(0.1 / 3, 10),
                   ("a+x@no-y", "a+x"): round(-0.02 / 3, 10), ("a+z", "a"): round(-0.26 / 3, 10)}
    d2 = paired_deltas(df, ["precision_at_1"], against={"a+z": "a+x"})
    assert ("a+z", "a+x") in {(r.method, r.base) for r in d2.itertuples()}
    assert round(float(d2[(d2.method == "a+z") & (d2.base == "a+x")].delta.iloc[0]), 10) == \
        round(-0.38 / 3, 10)
