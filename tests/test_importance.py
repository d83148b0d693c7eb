"""Importance reports: the functional-ANOVA decomposition against a known objective and against
Optuna's fANOVA, marginal curves by hand, and the written report."""
from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from results.importance import (decompose_forest, marginal_curve, study_decomposition,
                                write_importance_report)


def _study(fn, dists, n, seed=0):
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize")
    trials = []
    for _ in range(n):
        p = {}
        for k, d in dists.items():
            if isinstance(d, CategoricalDistribution):
                p[k] = d.choices[int(rng.integers(len(d.choices)))]
            elif isinstance(d, IntDistribution):
                p[k] = int(rng.integers(d.low, d.high + 1))
            elif d.log:
                p[k] = float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
            else:
                p[k] = float(rng.uniform(d.low, d.high))
        trials.append(create_trial(params=p, distributions=dists, value=fn(p)))
    study.add_trials(trials)
    return study


def test_pairwise_interaction_of_a_known_objective():
    # f = x + y + 5 x z on [-1, 1]^3: V_x = V_y = 1/3, V_xz = 25/9, no other effect;
    # fractions x, y: 3/31 = 0.097, z: 0, xz: 25/31 = 0.806, xy = yz = 0
    dists = {k: FloatDistribution(-1.0, 1.0) for k in "xyz"}
    study = _study(lambda p: p["x"] + p["y"] + 5 * p["x"] * p["z"], dists, 300)
    dec = study_decomposition(study, seed=0, n_trees=32)
    assert dec.pairs[("x", "z")] > 0.45
    assert dec.pairs[("x", "y")] < 0.12 and dec.pairs[("y", "z")] < 0.12
    assert dec.pairs[("x", "z")] > 4 * max(dec.pairs[("x", "y")], dec.pairs[("y", "z")])
    assert dec.main["z"] < 0.1 and dec.main["y"] > dec.main["z"]
    # an additive objective has no interaction
    add = study_decomposition(_study(lambda p: p["x"] + 2 * p["y"], dists, 200, seed=1),
                              seed=0, n_trees=32)
    assert max(add.pairs.values()) < 0.1
    assert add.main["y"] > add.main["x"] > add.main["z"]
    assert sum(add.main.values()) > 0.7


def test_main_effects_equal_optunas_fanova_on_the_same_forest():
    from optuna._transform import _SearchSpaceTransform
    from optuna.importance._fanova._fanova import _Fanova

    dists = {"a": FloatDistribution(0.0, 2.0), "b": IntDistribution(1, 9),
             "c": CategoricalDistribution(["u", "v", "w"])}
    study = _study(lambda p: p["a"] ** 2 + 0.3 * p["b"] + (p["c"] == "v") * p["a"], dists, 80)
    trans = _SearchSpaceTransform(dists, transform_log=False, transform_step=False)
    X = np.array([trans.transform(t.params) for t in study.trials])
    y = np.array([t.value for t in study.trials])
    fa = _Fanova(n_trees=8, max_depth=64, min_samples_split=2, min_samples_leaf=1, seed=3)
    fa.fit(X, y, trans.bounds, trans.column_to_encoded_columns)
    groups = [list(map(int, c)) for c in trans.column_to_encoded_columns]
    dec = decompose_forest(fa._forest, trans.bounds, groups, list(dists), n_trials=len(y))
    for i, k in enumerate(dists):
        assert dec.main[k] == pytest.approx(fa.get_importance(i)[0], rel=1e-9, abs=1e-12)
    assert dec.pairs[("a", "c")] > dec.pairs[("b", "c")]


def test_marginal_curve_bins_by_hand():
    d = FloatDistribution(0.0, 1.0)
    xs = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    ys = [1.0, 2.0, 3.0, 10.0, 12.0, 14.0]
    rows = marginal_curve(xs, ys, d, n_bins=2)
    assert [r["n"] for r in rows] == [3, 3]
    assert rows[0]["mean"] == pytest.approx(2.0) and rows[0]["std"] == pytest.approx(1.0)
    assert rows[1]["mean"] == pytest.approx(12.0) and rows[1]["std"] == pytest.approx(2.0)
    cat = marginal_curve(["a", "b", "a"], [1.0, 5.0, 3.0], CategoricalDistribution(["a", "b"]))
    assert [(r["label"], r["mean"], r["n"]) for r in cat] == [("a", 2.0, 2), ("b", 5.0, 1)]
    # quantile bins on the log scale; at least 3 trials per bin
    log = marginal_curve([1e-5, 2e-5, 1e-4, 1e-2, 1e-1, 0.5], [0, 0, 0, 1, 1, 1],
                         FloatDistribution(1e-6, 1.0, log=True), n_bins=5)
    assert [r["mean"] for r in log] == [0.0, 1.0] and 1e-4 <= log[0]["hi"] <= 1e-2
    assert len(marginal_curve([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], d)) == 1


def test_report_files_and_sections(tmp_path):
    dists = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "m": FloatDistribution(0.0, 1.0),
             "k": IntDistribution(1, 4)}
    study = _study(lambda p: -abs(np.log10(p["lr"]) + 3) + p["m"] * p["k"], dists, 40)
    study.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"m": 0.5},
                                 distributions={"m": dists["m"]}))
    paths = write_importance_report(study, tmp_path / "rep", n_trees=16)
    md = paths["markdown"].read_text()
    for part in ("## Per parameter", "| lr | float log", "## Pairwise interactions", "| k × m |",
                 "## Marginal performance", "## Optimisation history", "40 complete",
                 "1 fail", "1 pruned", "![marginals](marginals.png)"):
        assert part in md, part
    for key in ("importance", "marginals", "history"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"


def test_report_with_too_few_trials(tmp_path):
    study = optuna.create_study(direction="maximize")
    paths = write_importance_report(study, tmp_path / "empty")
    assert "No searched parameter." in paths["markdown"].read_text()
    study.add_trial(create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                 value=1.0))
    md = write_importance_report(study, tmp_path / "one")["markdown"].read_text()
    assert "fANOVA: n/a (fewer than 2 completed trials)" in md
