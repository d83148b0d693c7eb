"""Paired deltas of "+method" rows to their base (and of ablations "NAME@what" to NAME), with
t-based 95% confidence intervals.

A variant and its base trained with the same seeds on the same dataset form pairs; the delta
of a metric is the mean of the per-seed differences, its CI the Student-t interval of that
mean (n - 1 degrees of freedom). Pairing removes the seed-to-seed variance that both rows
share, so the interval is the one to read for "does the method help".
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def comparison_pairs(df: pd.DataFrame,
                     against: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(dataset, variant, base) pairs of `df`: each "+method" row against its base method; each
    named variant "NAME@what" (an ablation) also against the row NAME; and each `against`
    entry (variant -> base) given by the caller. Pairs whose base has no rows are left out."""
    pairs = []
    for dataset, part in df.groupby("dataset", sort=False):
        methods = list(dict.fromkeys(part["method"]))
        for method in methods:
            base = part.loc[part["method"] == method, "base_method"].dropna()
            bases = [base.iloc[0]] if not base.empty else []
            if "@" in method:
                bases.append(method.split("@", 1)[0])
            if against and method in against:
                bases.append(against[method])
            for b in dict.fromkeys(bases):
                if b in methods and b != method:
                    pairs.append((dataset, method, b))
    return pairs


def paired_deltas(df: pd.DataFrame, metrics: list[str],
                  against: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (dataset, variant, base, metric) of `comparison_pairs` in `df` (rows of
    `load_runs`): columns dataset, method, base, metric, n, delta, ci_low, ci_high
    (fractions)."""
    rows = []
    for dataset, method, b in comparison_pairs(df, against):
        part = df[df["dataset"] == dataset]
        mine = part[part["method"] == method].groupby("seed")[metrics].mean()
        ref = part[part["method"] == b].groupby("seed")[metrics].mean()
        seeds = mine.index.intersection(ref.index)
        for metric in metrics:
            d = (mine.loc[seeds, metric] - ref.loc[seeds, metric]).to_numpy(dtype=float)
            n = len(d)
            mean = float(d.mean()) if n else math.nan
            half = (float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
                    if n > 1 else math.nan)
            rows.append({"dataset": dataset, "method": method, "base": b, "metric": metric,
                         "n": n, "delta": mean, "ci_low": mean - half, "ci_high": mean + half})
    return pd.DataFrame(rows, columns=["dataset", "method", "base", "metric", "n", "delta",
                                       "ci_low", "ci_high"])


def deltas_markdown(deltas: pd.DataFrame) -> str:
    """A Markdown table of `paired_deltas` in percentage points."""
    lines = ["| dataset | method | base | metric | n | delta (pp) | 95% CI (pp) |",
             "|---|---|---|---|---|---|---|"]
    for r in deltas.itertuples():
        ci = ("n/a" if not np.isfinite(r.ci_low)
              else f"[{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]")
        lines.append(f"| {r.dataset} | {r.method} | {r.base} | {r.metric} | {r.n} | "
                     f"{100 * r.delta:+.2f} | {ci} |")
    return "\n".join(lines) + "\n"
