"""Hyperparameter importance reports of an Optuna study: Markdown + PNG.

Per parameter: Optuna's fANOVA and PED-ANOVA importances (each normalised to sum to 1, as
`optuna.importance.get_param_importances` returns them), and the main-effect variance fraction
V_i / V of our own functional-ANOVA decomposition. Per pair of parameters: the interaction
fraction V_ij / V, which Optuna does not offer.

The decomposition (`fanova`) fits the same random forest as Optuna's fANOVA (scikit-learn,
64 trees, full depth, seeded) on the COMPLETE trials, and integrates each tree exactly: a tree is
a sum of leaf boxes, so its marginal over a set of parameters G, on the grid cut by the tree's
split points in G, is A_G diag(value * volume outside G) summed over leaves; V_G is the
variance of that marginal under the uniform measure of the search space, and the pure pair
interaction is V_ij = V_{i,j} - V_i - V_j. Fractions are averaged over trees with non-zero
variance. Log-scale parameters are decomposed on the log scale (the scale they are sampled on);
Optuna's fANOVA column uses its own convention (linear scale).

Also: a marginal performance curve per parameter (the parameter binned, mean and standard
deviation of the objective per bin, as in MemVir's Fig. 8) and the optimisation history.

Minimum number of trials: an importance estimate needs at least `min_trials(k)` =
max(10, 5 k) COMPLETE trials for k searched parameters (MIN_TRIALS, MIN_TRIALS_PER_PARAM).
Below it the report and the importance figure say that importance is "not meaningful" (the
numbers are still shown). Why: on a synthetic objective (x + y / 2 + noise, uniform on [0, 1],
12 repetitions), the forest's main-effect fraction of x was off by 0.21 on average at 5
trials and 0.10 at 10 with 2 parameters; with 4 parameters it needed 20 trials for 0.10 (0.22
at 10): about 5 trials per parameter, and never fewer than 10.

Figures are built with matplotlib's object API (no pyplot, no backend switch).
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from dmlbench.bench.records import atomic_write_text
from dmlbench.results import plots

__all__ = ["Decomposition", "fanova", "study_decomposition", "write_importance_report",
           "marginal_curve", "min_trials", "MIN_TRIALS", "MIN_TRIALS_PER_PARAM"]

MIN_TRIALS = 10
MIN_TRIALS_PER_PARAM = 5


def min_trials(n_params: int) -> int:
    """Completed trials below which importance estimates are marked "not meaningful"."""
    return max(MIN_TRIALS, MIN_TRIALS_PER_PARAM * n_params)


@dataclass
class Decomposition:
    """Variance fractions of a random-forest functional ANOVA (means and stds over trees)."""

    params: list[str]
    main: dict[str, float]
    main_std: dict[str, float]
    pairs: dict[tuple[str, str], float]
    pairs_std: dict[tuple[str, str], float]
    n_trials: int


# ----------------------------------------------------------------------------- decomposition


def _leaf_boxes(tree, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(leaf values (L,), lower (L, F), upper (L, F)) of a fitted sklearn tree_."""
    left, right = tree.children_left, tree.children_right
    feature, threshold = tree.feature, tree.threshold
    values, lows, highs = [], [], []
    stack = [(0, bounds[:, 0].copy(), bounds[:, 1].copy())]
    while stack:
        node, lo, hi = stack.pop()
        f = feature[node]
        if f < 0:
            values.append(float(tree.value[node].reshape(-1)[0]))
            lows.append(lo)
            highs.append(hi)
            continue
        t = threshold[node]
        lhi = hi.copy()
        lhi[f] = min(hi[f], t)
        rlo = lo.copy()
        rlo[f] = max(lo[f], t)
        stack.append((left[node], lo, lhi))
        stack.append((right[node], rlo, hi))
    return np.array(values), np.array(lows), np.array(highs)


def _column_cells(col: int, lows: np.ndarray, highs: np.ndarray, bounds: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(indicator (cells, L): cell inside leaf's interval, cell widths) of one raw column."""
    cuts = np.unique(np.concatenate([bounds[col], lows[:, col], highs[:, col]]))
    cuts = cuts[(cuts >= bounds[col, 0]) & (cuts <= bounds[col, 1])]
    mids = 0.5 * (cuts[1:] + cuts[:-1])
    widths = cuts[1:] - cuts[:-1]
    inside = (mids[:, None] >= lows[None, :, col]) & (mids[:, None] <= highs[None, :, col])
    return inside.astype(np.float64), widths


def _tree_variances(tree, bounds: np.ndarray, groups: list[list[int]]
                    ) -> tuple[float, list[float]]:
    """Total variance of a tree over the box `bounds`, and the variance of its marginal over
    each group of raw columns."""
    values, lows, highs = _leaf_boxes(tree, bounds)
    span = bounds[:, 1] - bounds[:, 0]
    span = np.where(span > 0, span, 1.0)
    frac = np.clip(highs - lows, 0.0, None) / span          # (L, F) share of each side
    vol = frac.prod(axis=1)
    mean = float(np.sum(vol * values) / np.sum(vol))
    total = float(np.sum(vol * (values - mean) ** 2) / np.sum(vol))
    out = []
    for cols in groups:
        others = np.ones(len(values))
        mask = np.ones(bounds.shape[0], dtype=bool)
        mask[cols] = False
        if mask.any():
            others = frac[:, mask].prod(axis=1)
        coef = values * others                                # (L,)
        tensor = coef
        weights = np.ones(())
        for c in cols:
            ind, widths = _column_cells(c, lows, highs, bounds)
            tensor = tensor[..., None, :] * ind               # (..., cells, L)
            weights = weights[..., None] * (widths / span[c])
        marginal = tensor.sum(axis=-1)
        # a cell inside several leaves cannot happen; weights sum to 1 over the grid
        w = weights / weights.sum()
        m = float(np.sum(w * marginal))
        out.append(float(np.sum(w * (marginal - m) ** 2)))
    return total, out


def fanova(X: np.ndarray, y: np.ndarray, bounds: np.ndarray, groups: list[list[int]],
           names: list[str], *, n_trees: int = 64, max_depth: int = 64, seed: int = 0
           ) -> Decomposition:
    """Main-effect and pairwise-interaction variance fractions of y ~ X (one group of raw
    columns per parameter) from a random forest fitted like Optuna's fANOVA."""
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(n_estimators=n_trees, max_depth=max_depth,
                                   min_samples_split=2, min_samples_leaf=1, random_state=seed)
    forest.fit(X, y)
    return decompose_forest(forest, bounds, groups, names, n_trials=len(y))


def decompose_forest(forest, bounds: np.ndarray, groups: list[list[int]], names: list[str], *,
                     n_trials: int) -> Decomposition:
    """`Decomposition` of an already fitted scikit-learn forest."""
    k = len(groups)
    pairs = list(itertools.combinations(range(k), 2))
    joint = [list(groups[i]) + list(groups[j]) for i, j in pairs]
    main_f: list[list[float]] = [[] for _ in range(k)]
    pair_f: list[list[float]] = [[] for _ in pairs]
    for est in forest.estimators_:
        total, vs = _tree_variances(est.tree_, bounds, list(groups) + joint)
        if total <= 0:
            continue
        single = vs[:k]
        for i in range(k):
            main_f[i].append(max(single[i], 0.0) / total)
        for n, (i, j) in enumerate(pairs):
            pure = vs[k + n] - single[i] - single[j]
            pair_f[n].append(max(pure, 0.0) / total)

    def stat(xs: list[float], fn) -> float:
        return float(fn(xs)) if xs else 0.0

    return Decomposition(
        params=list(names),
        main={names[i]: stat(main_f[i], np.mean) for i in range(k)},
        main_std={names[i]: stat(main_f[i], np.std) for i in range(k)},
        pairs={(names[i], names[j]): stat(pair_f[n], np.mean) for n, (i, j) in enumerate(pairs)},
        pairs_std={(names[i], names[j]): stat(pair_f[n], np.std)
                   for n, (i, j) in enumerate(pairs)},
        n_trials=n_trials)


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]


def searched_distributions(study: optuna.Study) -> dict[str, Any]:
    """Distributions of the parameters that vary (more than one possible value)."""
    dists: dict[str, Any] = {}
    for t in _complete(study):
        for k, d in t.distributions.items():
            dists.setdefault(k, d)
    return {k: d for k, d in sorted(dists.items()) if not d.single()}


def study_decomposition(study: optuna.Study, *, seed: int = 0, n_trees: int = 64,
                        log_scale: bool = True) -> Decomposition | None:
    """`fanova` over the study's COMPLETE trials (None with fewer than 2 or no varying
    parameter). `log_scale`: decompose log parameters on the log scale."""
    from dmlbench.bench.optuna_internals import SearchSpaceTransform

    dists = searched_distributions(study)
    trials = [t for t in _complete(study) if set(dists) <= set(t.params)]
    if len(trials) < 2 or not dists:
        return None
    trans = SearchSpaceTransform(dists, transform_log=log_scale, transform_step=False)
    X = np.array([trans.transform(t.params) for t in trials])
    y = np.array([t.value for t in trials], dtype=np.float64)
    groups = [list(map(int, cols)) for cols in trans.column_to_encoded_columns]
    return fanova(X, y, trans.bounds, groups, list(dists), n_trees=n_trees, seed=seed)


# ----------------------------------------------------------------------------- curves


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


# ----------------------------------------------------------------------------- report


def _optuna_importances(study: optuna.Study, evaluator) -> tuple[dict[str, float] | None, str]:
    try:
        return optuna.importance.get_param_importances(study, evaluator=evaluator), ""
    except Exception as e:  # too few trials, constant objective, ...
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def write_importance_report(study: optuna.Study, out_dir: "str | os.PathLike[str]", *,
                            seed: int = 0, n_trees: int = 64,
                            objective: str | None = None) -> dict[str, Path]:
    """Write importance.md, importance.png, marginals.png and history.png into `out_dir`;
    return their paths ("markdown", "importance", "marginals", "history").

    `objective`: the name of the study's objective in the text and on the axes (default: "val
    MAP@R (%, mean of K folds)" for dmlbench MLRC studies, values in percent; else
    "objective")."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "importance.md", "importance": out / "importance.png",
             "marginals": out / "marginals.png", "history": out / "history.png"}
    label, scale = plots.objective_label(study)
    if objective:
        label, scale = objective, 1.0
    trials = study.get_trials(deepcopy=False)
    done = _complete(study)
    states = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    dists = searched_distributions(study)
    needed = min_trials(len(dists))
    meaningful = len(done) >= needed
    lines = [f"# Hyperparameter importance: {study.study_name}", "",
             "Trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())) + "."]
    warning = ""
    if dists and not meaningful:
        warning = (f"Importance is not meaningful here: {len(done)} completed trial"
                   f"{'s' if len(done) != 1 else ''}, fewer than the {needed} needed for "
                   f"{len(dists)} searched parameter{'s' if len(dists) != 1 else ''} "
                   f"(at least {MIN_TRIALS}, and {MIN_TRIALS_PER_PARAM} per parameter). The "
                   "numbers below are shown for completeness only.")
        lines += ["", f"**Warning: {warning}**"]
    if done:
        best = max(done, key=lambda t: t.value) if _maximize(study) else min(
            done, key=lambda t: t.value)
        lines += ["", f"Best trial {best.number}: {label} {_value(best.value, scale)} with "
                  + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in best.params.items()) + "."]

    fan, fan_err = (None, "fewer than 2 completed trials")
    ped, ped_err = (None, "fewer than 2 completed trials")
    dec = None
    if len(done) >= 2 and dists:
        fan, fan_err = _optuna_importances(
            study, optuna.importance.FanovaImportanceEvaluator(seed=seed, n_trees=n_trees))
        ped, ped_err = _optuna_importances(study, optuna.importance.PedAnovaImportanceEvaluator())
        try:
            dec = study_decomposition(study, seed=seed, n_trees=n_trees)
        except Exception as e:  # a forest that cannot be fitted
            dec, fan_err = None, fan_err or f"{type(e).__name__}: {e}"

    flag = "" if meaningful else " (not meaningful)"
    lines += ["", "## Per parameter", "",
              "fANOVA and PED-ANOVA: Optuna's evaluators, normalised to sum to 1. "
              "Main effect: V_i / V of the functional ANOVA below (log parameters on the log "
              "scale), mean ± std over trees.", ""]
    if not dists:
        lines.append("No searched parameter.")
    else:
        lines += [f"| parameter | distribution | fANOVA{flag} | PED-ANOVA{flag} | "
                  f"main effect V_i/V{flag} |", "|:---|:---|---:|---:|---:|"]
        order = sorted(dists, key=lambda k: -(fan or {}).get(k, 0.0))
        for k in order:
            main = (f"{dec.main[k]:.3f} ± {dec.main_std[k]:.3f}" if dec else "n/a")
            lines.append(f"| {k} | {_dist_text(dists[k])} | {_fmt((fan or {}).get(k))} | "
                         f"{_fmt((ped or {}).get(k))} | {main} |")
        for name, err in (("fANOVA", fan_err), ("PED-ANOVA", ped_err)):
            if err:
                lines.append(f"\n{name}: n/a ({err}).")
    lines += ["", "## Pairwise interactions", "",
              "V_ij / V: the variance of the pure interaction of two parameters (the variance "
              "of their joint marginal minus both main effects) as a fraction of the total, "
              "from the same random forest as the main effects.", ""]
    if dec is None or len(dec.params) < 2:
        lines.append("n/a (needs 2 searched parameters and 2 completed trials).")
    else:
        lines += [f"| pair | V_ij/V{flag} |", "|:---|---:|"]
        for (a, b), v in sorted(dec.pairs.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {a} × {b} | {v:.3f} ± {dec.pairs_std[(a, b)]:.3f} |")
        lines.append(f"\nMain effects sum to {sum(dec.main.values()):.3f}, pairs to "
                     f"{sum(dec.pairs.values()):.3f}; the rest is higher-order interaction.")

    # figures
    plots.save_png(_plot_importance(dists, fan, ped, dec, warning=not meaningful and bool(dists),
                                    n_done=len(done), needed=needed), paths["importance"])
    fig, curves = _plot_marginals(dists, done, label, scale)
    plots.save_png(fig, paths["marginals"])
    plots.save_png(plots.optimisation_history(study, label, scale), paths["history"])
    lines += ["", f"![importance]({paths['importance'].name})", "",
              "## Marginal performance", "",
              f"{label} per bin of each parameter (mean ± std over the completed trials in "
              "the bin; all other parameters vary).", "",
              f"![marginals]({paths['marginals'].name})", ""]
    for k, rows in curves.items():
        if rows:
            best_bin = max(rows, key=lambda r: r["mean"])
            lines.append(f"- {k}: best bin {best_bin['label']} (mean "
                         f"{_value(best_bin['mean'], scale)} ± {_value(best_bin['std'], scale)}, "
                         f"{best_bin['n']} trials)")
    lines += ["", "## Optimisation history", "", f"![history]({paths['history'].name})", ""]
    atomic_write_text(paths["markdown"], "\n".join(lines))
    return paths


def _maximize(study: optuna.Study) -> bool:
    return study.direction != optuna.study.StudyDirection.MINIMIZE


def _value(x: float, scale: float) -> str:
    return f"{scale * x:.2f}" if scale != 1.0 else f"{x:.4f}"


def _dist_text(d) -> str:
    if isinstance(d, CategoricalDistribution):
        return "categorical " + ", ".join(map(str, d.choices))
    kind = "int" if isinstance(d, IntDistribution) else "float"
    return f"{kind}{' log' if getattr(d, 'log', False) else ''} [{d.low:.4g}, {d.high:.4g}]"


def _plot_importance(dists, fan, ped, dec, *, warning: bool = False, n_done: int = 0,
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


def _plot_marginals(dists, done: list[FrozenTrial], label: str, scale: float):
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
