"""Our functional-ANOVA decomposition of an Optuna study: main-effect and pairwise-interaction
variance fractions of a random forest fitted like Optuna's fANOVA, each tree integrated exactly
(the method is described in `results.importance`)."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["Decomposition", "fanova", "decompose_forest", "complete_trials",
           "searched_distributions", "study_decomposition"]


@dataclass
class Decomposition:
    """Variance fractions of a random-forest functional ANOVA (means and stds over trees)."""

    params: list[str]
    main: dict[str, float]
    main_std: dict[str, float]
    pairs: dict[tuple[str, str], float]
    pairs_std: dict[tuple[str, str], float]
    n_trials: int


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


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The COMPLETE trials with a finite value."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]


def searched_distributions(study: optuna.Study) -> dict[str, Any]:
    """Distributions of the parameters that vary (more than one possible value)."""
    dists: dict[str, Any] = {}
    for t in complete_trials(study):
        for k, d in t.distributions.items():
            dists.setdefault(k, d)
    return {k: d for k, d in sorted(dists.items()) if not d.single()}


def study_decomposition(study: optuna.Study, *, seed: int = 0, n_trees: int = 64,
                        log_scale: bool = True) -> Decomposition | None:
    """`fanova` over the study's COMPLETE trials (None with fewer than 2 or no varying
    parameter). `log_scale`: decompose log parameters on the log scale."""
    from dmlbench.bench.optuna_internals import SearchSpaceTransform

    dists = searched_distributions(study)
    trials = [t for t in complete_trials(study) if set(dists) <= set(t.params)]
    if len(trials) < 2 or not dists:
        return None
    trans = SearchSpaceTransform(dists, transform_log=log_scale, transform_step=False)
    X = np.array([trans.transform(t.params) for t in trials])
    y = np.array([t.value for t in trials], dtype=np.float64)
    groups = [list(map(int, cols)) for cols in trans.column_to_encoded_columns]
    return fanova(X, y, trans.bounds, groups, list(dists), n_trees=n_trees, seed=seed)
