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

from bench.records import atomic_write_text

__all__ = ["Decomposition", "fanova", "study_decomposition", "write_importance_report",
           "marginal_curve"]


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
    from optuna._transform import _SearchSpaceTransform

    dists = searched_distributions(study)
    trials = [t for t in _complete(study) if set(dists) <= set(t.params)]
    if len(trials) < 2 or not dists:
        return None
    trans = _SearchSpaceTransform(dists, transform_log=log_scale, transform_step=False)
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
                            seed: int = 0, n_trees: int = 64) -> dict[str, Path]:
    """Write importance.md, importance.png, marginals.png and history.png into `out_dir`;
    return their paths ("markdown", "importance", "marginals", "history")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "importance.md", "importance": out / "importance.png",
             "marginals": out / "marginals.png", "history": out / "history.png"}
    trials = study.get_trials(deepcopy=False)
    done = _complete(study)
    states = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    dists = searched_distributions(study)
    lines = [f"# Hyperparameter importance: {study.study_name}", "",
             "Trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())) + "."]
    if done:
        best = max(done, key=lambda t: t.value)
        lines += ["", f"Best trial {best.number}: objective {best.value:.4f} with " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
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

    lines += ["", "## Per parameter", "",
              "fANOVA and PED-ANOVA: Optuna's evaluators, normalised to sum to 1. "
              "Main effect: V_i / V of the functional ANOVA below (log parameters on the log "
              "scale), mean ± std over trees.", ""]
    if not dists:
        lines.append("No searched parameter.")
    else:
        lines += ["| parameter | distribution | fANOVA | PED-ANOVA | main effect V_i/V |",
                  "|:---|:---|---:|---:|---:|"]
        order = sorted(dists, key=lambda k: -(fan or {}).get(k, 0.0))
        for k in order:
            main = (f"{dec.main[k]:.3f} ± {dec.main_std[k]:.3f}" if dec else "n/a")
            lines.append(f"| {k} | {_dist_text(dists[k])} | {_fmt((fan or {}).get(k))} | "
                         f"{_fmt((ped or {}).get(k))} | {main} |")
        for label, err in (("fANOVA", fan_err), ("PED-ANOVA", ped_err)):
            if err:
                lines.append(f"\n{label}: n/a ({err}).")
    lines += ["", "## Pairwise interactions", "",
              "V_ij / V: the variance of the pure interaction of two parameters (the variance "
              "of their joint marginal minus both main effects) as a fraction of the total, "
              "from the same random forest as the main effects.", ""]
    if dec is None or len(dec.params) < 2:
        lines.append("n/a (needs 2 searched parameters and 2 completed trials).")
    else:
        lines += ["| pair | V_ij/V |", "|:---|---:|"]
        for (a, b), v in sorted(dec.pairs.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {a} × {b} | {v:.3f} ± {dec.pairs_std[(a, b)]:.3f} |")
        lines.append(f"\nMain effects sum to {sum(dec.main.values()):.3f}, pairs to "
                     f"{sum(dec.pairs.values()):.3f}; the rest is higher-order interaction.")

    # figures
    _plot_importance(plt, paths["importance"], dists, fan, ped, dec)
    curves = _plot_marginals(plt, paths["marginals"], dists, done)
    _plot_history(plt, paths["history"], trials)
    lines += ["", "## Marginal performance", "",
              "Objective per bin of each parameter (mean ± std over the completed trials in "
              "the bin; all other parameters vary).", "", f"![marginals]({paths['marginals'].name})"]
    for k, rows in curves.items():
        if rows:
            best_bin = max(rows, key=lambda r: r["mean"])
            lines.append(f"- {k}: best bin {best_bin['label']} (mean {best_bin['mean']:.4f} ± "
                         f"{best_bin['std']:.4f}, {best_bin['n']} trials)")
    lines += ["", f"![importance]({paths['importance'].name})", "",
              "## Optimisation history", "", f"![history]({paths['history'].name})", ""]
    atomic_write_text(paths["markdown"], "\n".join(lines))
    return paths


def _dist_text(d) -> str:
    if isinstance(d, CategoricalDistribution):
        return "categorical " + ", ".join(map(str, d.choices))
    kind = "int" if isinstance(d, IntDistribution) else "float"
    return f"{kind}{' log' if getattr(d, 'log', False) else ''} [{d.low:.4g}, {d.high:.4g}]"


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)


def _plot_importance(plt, path: Path, dists, fan, ped, dec) -> None:
    names = list(dists)
    fig, axes = plt.subplots(1, 2, figsize=(11, max(2.5, 0.4 * len(names) + 1.5)))
    ax = axes[0]
    if names:
        y = np.arange(len(names))
        h = 0.27
        for i, (label, vals) in enumerate((("fANOVA", fan), ("PED-ANOVA", ped),
                                           ("main effect V_i/V", dec.main if dec else None))):
            if vals:
                ax.barh(y + (i - 1) * h, [vals.get(n, 0.0) for n in names], h, label=label)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax.set_title("per-parameter importance")
    ax = axes[1]
    if dec is not None and len(names) >= 2:
        m = np.zeros((len(names), len(names)))
        for (a, b), v in dec.pairs.items():
            i, j = names.index(a), names.index(b)
            m[i, j] = m[j, i] = v
        for i, n in enumerate(names):
            m[i, i] = dec.main.get(n, 0.0)
        im = ax.imshow(m, cmap="viridis", vmin=0)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title("V_ij/V (diagonal: V_i/V)")
    else:
        ax.axis("off")
        ax.set_title("pairwise: n/a")
    _save(fig, path)
    plt.close(fig)


def _plot_marginals(plt, path: Path, dists, done: list[FrozenTrial]) -> dict[str, list]:
    from matplotlib.ticker import NullFormatter

    names = list(dists)
    cols = min(3, max(1, len(names)))
    rows_n = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False,
                             layout="constrained")
    curves: dict[str, list] = {}
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    if not names:
        axes[0, 0].set_title("no searched parameter")
    for ax, k in zip(axes.flat, names):
        pts = [(t.params[k], t.value) for t in done if k in t.params]
        if not pts:
            ax.set_title(f"{k}: no data")
            continue
        xs, ys = zip(*pts)
        rows = marginal_curve(list(xs), list(ys), dists[k])
        curves[k] = rows
        d = dists[k]
        if isinstance(d, CategoricalDistribution):
            pos = np.arange(len(rows))
            ax.errorbar(pos, [r["mean"] for r in rows], yerr=[r["std"] for r in rows],
                        fmt="o-", capsize=3)
            ax.set_xticks(pos, [r["label"] for r in rows], rotation=30)
        else:
            c = np.array([r["center"] for r in rows], dtype=float)
            mu = np.array([r["mean"] for r in rows])
            sd = np.array([r["std"] for r in rows])
            ax.scatter(xs, ys, s=8, alpha=0.35, color="gray")
            ax.plot(c, mu, "o-")
            ax.fill_between(c, mu - sd, mu + sd, alpha=0.25)
            if getattr(d, "log", False):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(k)
        ax.set_ylabel("objective")
    _save(fig, path)
    plt.close(fig)
    return curves


def _plot_history(plt, path: Path, trials: list[FrozenTrial]) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    done = [(t.number, t.value) for t in trials
            if t.state == TrialState.COMPLETE and t.value is not None]
    if done:
        n, v = zip(*done)
        ax.scatter(n, v, s=14, label="completed")
        ax.step(n, np.maximum.accumulate(v), where="post", color="C1", label="best so far")
    for state, marker, color in ((TrialState.PRUNED, "v", "C2"), (TrialState.FAIL, "x", "C3")):
        xs = [t.number for t in trials if t.state == state]
        if xs:
            lo = min(v) if done else 0.0
            ax.scatter(xs, [lo] * len(xs), marker=marker, color=color, label=state.name.lower())
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title("optimisation history")
    _save(fig, path)
    plt.close(fig)
