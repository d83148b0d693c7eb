"""The comparison table: runs (`results.runs.load_runs`) -> mean and spread (std or t-based
95% CI) per method, dataset and metric, with deltas of "+method" rows to their base."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats as _stats

from dmlbench.bench.errors import UserError
from dmlbench.results.metric_names import default_metrics, metric_key
from dmlbench.results.runs import ID_COLUMNS

__all__ = ["comparison_table", "ordered"]

# Order of the per-(dataset, metric) numbers in a comparison table's columns.
_STATS = ("mean", "std", "ci95", "n", "delta", "published", "diff")


def _row_order(methods: list[str], base: dict[str, str]) -> list[str]:
    """Each base followed by its variants (recursively); otherwise first-seen order."""
    children: dict[str, list[str]] = {}
    for m in methods:
        if m in base:
            children.setdefault(base[m], []).append(m)
    out: list[str] = []

    def visit(m: str) -> None:
        if m not in out:
            out.append(m)
            for c in children.get(m, []):
                visit(c)

    for m in methods:
        if m not in base:
            visit(m)
    for m in methods:  # only members of a base cycle are left
        visit(m)
    return out


def _ranked(names: list[str], order: "Iterable[str] | None") -> list[str]:
    """`names` with those in `order` first, in that order; the others keep their order."""
    if not order:
        return list(names)
    order = list(order)
    pos = {n: i for i, n in enumerate(order)}
    return sorted(names, key=lambda n: (pos.get(n, len(order)), names.index(n)))


def comparison_table(df: pd.DataFrame, metrics: list[str] | None = None, *,
                     ci: bool = False, order: "Iterable[str] | None" = None,
                     datasets: "Iterable[str] | None" = None) -> pd.DataFrame:
    """Rows: methods; columns: MultiIndex (dataset, metric, stat), stat in
    ("mean", "std" | "ci95", "n", "delta"); values as fractions, "n" the number of seeds.

    "delta" is the row's mean minus its base method's mean, where the base is in the table;
    a row named "NAME@TAG" (suite runs with a `name`, e.g. "ms+das@bninception") has the base
    "BASE@TAG" when that row exists.
    Rows: the methods named in `order` first, in that order, then the others in `df`'s order
    (`load_runs`: the suite's declared order, see the module docstring); each base method is
    followed by its variants. Column groups: `datasets` first, then `df.attrs["datasets"]`.
    `table.attrs`: "base" ({method: base} for those deltas), "which" (from `df.attrs`),
    "protocols".
    """
    if df.empty:
        raise UserError("no completed runs to tabulate")
    protocols = list(dict.fromkeys(df["protocol"].dropna()))
    if len(protocols) > 1:
        raise UserError(f"the runs mix protocols ({', '.join(map(str, protocols))}); "
                        "tabulate each protocol's runs on their own (separate runs folders)")
    available = [c for c in df.columns if c not in ID_COLUMNS and df[c].notna().any()]
    if metrics is None:
        metrics = default_metrics(available)
    else:
        metrics = [metric_key(m) for m in metrics]
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise UserError(f"no values for metric(s) {', '.join(unknown)} in these runs; "
                            f"available: {', '.join(available) or 'none'}")
    if not metrics:
        raise UserError(f"none of the usual metrics in these runs; pass metrics= from: "
                        f"{', '.join(available) or 'none'}")

    first_seen = _ranked(list(dict.fromkeys(df["method"])), order)
    declared = (df.dropna(subset=["base_method"])
                .groupby("method", sort=False)["base_method"].first())
    base = {}
    for m, b in declared.items():
        tagged = f"{b}@{m.rsplit('@', 1)[1]}" if "@" in m else None  # "ms+das@x" -> "ms@x"
        b = tagged if tagged in first_seen else b
        if b in first_seen and b != m:
            base[m] = b
    methods = _row_order(first_seen, base)
    present = list(dict.fromkeys(df["dataset"]))
    known = [d for d in df.attrs.get("datasets") or [] if d in present]
    datasets = _ranked(known + [d for d in present if d not in known], datasets)
    spread = "ci95" if ci else "std"

    grouped = df.groupby(["method", "dataset"], sort=False)[metrics]
    mean, std, n = grouped.mean(), grouped.std(ddof=1), grouped.count()
    if ci:
        with np.errstate(invalid="ignore", divide="ignore"):
            nn = n.to_numpy(dtype=float)
            half = _stats.t.ppf(0.975, nn - 1) * std.to_numpy(dtype=float) / np.sqrt(nn)
        std = pd.DataFrame(np.where(nn > 1, half, np.nan), index=std.index, columns=std.columns)
    parts = {"mean": mean, spread: std, "n": n.astype(float)}

    pairs = [(d, m) for d in datasets for m in metrics]
    table = pd.DataFrame(
        {(d, m, stat): frame.unstack("dataset")[(m, d)].reindex(methods)
         for d, m in pairs for stat, frame in parts.items()}, index=methods)
    table.columns.names = ["dataset", "metric", "stat"]
    table.index.name = "method"
    means = table.loc[:, [(d, m, "mean") for d, m in pairs]].to_numpy()
    delta = np.full_like(means, np.nan)
    for variant, b in base.items():
        delta[methods.index(variant)] = means[methods.index(variant)] - means[methods.index(b)]
    deltas = pd.DataFrame(delta, index=table.index,
                          columns=pd.MultiIndex.from_tuples([(d, m, "delta") for d, m in pairs],
                                                            names=table.columns.names))
    table = pd.concat([table, deltas], axis=1)
    n_cols = [(d, m, "n") for d, m in pairs]
    table[n_cols] = table[n_cols].fillna(0.0)
    table = ordered(table)
    table.attrs.update(base=base, which=df.attrs.get("which"), protocols=protocols)
    return table


def ordered(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its columns by dataset, metric and stat (mean, spread, n, delta, published,
    diff)."""
    datasets = list(dict.fromkeys(table.columns.get_level_values("dataset")))
    metrics = list(dict.fromkeys(table.columns.get_level_values("metric")))
    cols = sorted(table.columns, key=lambda c: (datasets.index(c[0]), metrics.index(c[1]),
                                                _STATS.index(c[2])))
    return table[cols]
