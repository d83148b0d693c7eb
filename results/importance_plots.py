"""The figures of the importance report (importance bars and interaction matrix, marginal
performance per parameter) and the binned marginal curves they draw; matplotlib's object API
(no pyplot, no backend switch)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial

from dmlbench.results import plots

__all__ = ["marginal_curve", "plot_importance", "plot_marginals"]


def marginal_curve(values: list[Any], objective: list[float], dist, n_bins: int = 8
                   ) -> list[dict[str, Any]]:
    """Bins of one parameter with the mean, std and count of the objective in each: one bin per
    choice (categorical) or distinct value (integers with few values), else quantile bins
    (on the log scale for log parameters)."""
    v = list(values)
    y = np.asarray(objective, dtype=np.float64)
    rows = []
    few = isinstance(dist, IntDistribution) and len(set(v)) <= n_bins
    if isinstance(dist, CategoricalDistribution) or few:
        keys = list(dist.choices) if isinstance(dist, CategoricalDistribution) else sorted(set(v))
        for key in keys:
            sel = np.array([x == key for x in v])
            if sel.any():
                rows.append({"label": str(key), "center": key, "lo": key, "hi": key,
                             "n": int(sel.sum()), "mean": float(y[sel].mean()),
                             "std": float(y[sel].std(ddof=1)) if sel.sum() > 1 else 0.0})
        return rows
    x = np.asarray(v, dtype=np.float64)
    log = bool(getattr(dist, "log", False))
    t = np.log10(x) if log else x
    bins = max(1, min(n_bins, len(x) // 3))
    edges = np.unique(np.quantile(t, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([t.min(), t.max() + 1e-12])
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    for b in range(len(edges) - 1):
        sel = idx == b
        if not sel.any():
            continue
        lo, hi = edges[b], edges[b + 1]
        conv = (lambda z: 10 ** z) if log else (lambda z: z)
        rows.append({"label": f"{conv(lo):.3g}-{conv(hi):.3g}", "center": float(conv(t[sel].mean())),
                     "lo": float(conv(lo)), "hi": float(conv(hi)), "n": int(sel.sum()),
                     "mean": float(y[sel].mean()),
                     "std": float(y[sel].std(ddof=1)) if sel.sum() > 1 else 0.0})
    return rows


def plot_importance(dists, fan, ped, dec, *, warning: bool = False, n_done: int = 0,
                     needed: int = 0):
    """Bars of the per-parameter importances and the V_ij/V matrix, side by side."""
    from matplotlib.figure import Figure

    names = list(dists)
    k = len(names)
    pairs = dec is not None and k >= 2
    height = max(2.6, 0.55 * k + 1.6) + (0.4 if warning else 0.0)
    # the matrix panel about as wide as it is high (plus labels and colour bar): no gap
    matrix_w = (height - 1.0) + 1.8 if pairs else 0.0
    fig = Figure(figsize=(5.2 + matrix_w, height), layout="constrained")
    axes = fig.subplots(1, 2 if pairs else 1, squeeze=False,
                        width_ratios=[5.2, matrix_w] if pairs else None)[0]
    ax = axes[0]
    series = [(label, vals) for label, vals in (("fANOVA", fan), ("PED-ANOVA", ped),
                                                ("main effect V_i/V", dec.main if dec else None))
              if vals]
    if names and series:
        y = np.arange(k)
        h = 0.8 / len(series)
        for i, (label, vals) in enumerate(series):
            ax.barh(y + (i - (len(series) - 1) / 2) * h, [vals.get(n, 0.0) for n in names], h,
                    label=label, color=f"C{i}", alpha=0.45 if warning else 1.0,
                    hatch="//" if warning else None)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xlim(0, max(1.0, max(max(v.values(), default=0) for _, v in series)))
        # above the axes, outside: never over the bars
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series),
                  fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel("per-parameter importance (fraction of variance)")
    if pairs:
        ax = axes[1]
        m = np.zeros((k, k))
        for (a, b), v in dec.pairs.items():
            i, j = names.index(a), names.index(b)
            m[i, j] = m[j, i] = v
        for i, n in enumerate(names):
            m[i, i] = dec.main.get(n, 0.0)
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=max(1e-9, float(m.max())),
                       aspect="auto")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] < 0.6 * m.max() else "black")
        ax.set_xticks(range(k), names, rotation=30, ha="right")
        ax.set_yticks(range(k), names)
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title("V_ij/V (diagonal: V_i/V)", fontsize=10)
    if warning:
        fig.suptitle(f"NOT MEANINGFUL: {n_done} completed trials < {needed} needed",
                     color="C3", fontsize=11, fontweight="bold")
    return fig


def plot_marginals(dists, done: list[FrozenTrial], label: str, scale: float):
    """Per parameter: the trials and the mean ± std of the objective per bin; and the curves
    ({parameter: bins}, in the objective's own units)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    names = list(dists)
    cols = min(3, max(1, len(names)))
    rows_n = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows_n), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False)
    curves: dict[str, list] = {}
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    if not names:
        axes[0, 0].set_title("no searched parameter")
    for ax, k in zip(axes.flat, names):
        pts = [(t.params[k], scale * t.value) for t in done if k in t.params]
        if not pts:
            ax.set_title(f"{k}: no data")
            continue
        xs, ys = zip(*pts)
        rows = marginal_curve(list(xs), list(ys), dists[k])
        curves[k] = [{**r, "mean": r["mean"] / scale, "std": r["std"] / scale} for r in rows]
        d = dists[k]
        if isinstance(d, CategoricalDistribution):
            pos = np.arange(len(rows))
            ax.errorbar(pos, [r["mean"] for r in rows], yerr=[r["std"] for r in rows],
                        fmt="o-", capsize=3, label="mean ± std per bin")
            ax.set_xticks(pos, [r["label"] for r in rows], rotation=30)
        else:
            c = np.array([r["center"] for r in rows], dtype=float)
            mu = np.array([r["mean"] for r in rows])
            sd = np.array([r["std"] for r in rows])
            ax.scatter(xs, ys, s=10, alpha=0.5, color="gray", label="trials")
            ax.plot(c, mu, "o-", label="mean ± std per bin")
            ax.fill_between(c, mu - sd, mu + sd, alpha=0.25)
            if getattr(d, "log", False):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            if isinstance(d, IntDistribution):
                ax.xaxis.set_major_locator(plots.MaxNLocator(integer=True))
        ax.set_title(k, fontsize=10)
        ax.set_xlabel(k)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if names and axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=7)
    return fig, curves
