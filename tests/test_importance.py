"""Importance reports: the functional-ANOVA decomposition against a known objective and against
Optuna's fANOVA, marginal curves by hand, and the written report."""
from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from dmlbench.results.importance import (decompose_forest, marginal_curve, study_decomposition,
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


# ----------------------------------------------------------------------------- figures


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _mlrc_like(study, folds=4):
    """Mark `study` as a dmlbench MLRC study (the settings the protocol stores with it)."""
    study.set_user_attr("dmlbench", {"experiment": {"protocol": "mlrc", "num_folds": folds},
                                     "config": {"train": {"epochs": 3}}})
    return study


def test_minimum_trials_rule():
    from dmlbench.results.importance import MIN_TRIALS, min_trials

    assert MIN_TRIALS == 10
    assert [min_trials(k) for k in (0, 1, 2, 3, 4, 10)] == [10, 10, 10, 15, 20, 50]


def test_too_few_trials_marked_not_meaningful(tmp_path):
    dists = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "m": FloatDistribution(0.0, 1.0)}
    few = _mlrc_like(_study(lambda p: p["m"] + np.log10(p["lr"]), dists, 3))
    paths = write_importance_report(few, tmp_path / "few", n_trees=8)
    md = paths["markdown"].read_text()
    assert ("**Warning: Importance is not meaningful here: 3 completed trials, fewer than the 10 "
            "needed for 2 searched parameters") in md
    assert "| fANOVA (not meaningful) | PED-ANOVA (not meaningful) |" in md
    # the metric, not "objective": MAP@R in percent
    assert "Best trial" in md and "val MAP@R (%, mean of 4 folds)" in md
    best = max(t.value for t in few.trials)
    assert f"val MAP@R (%, mean of 4 folds) {100 * best:.2f} with" in md
    enough = _study(lambda p: p["m"] + np.log10(p["lr"]), dists, 10)
    md = write_importance_report(enough, tmp_path / "ok", n_trees=8)["markdown"].read_text()
    assert "not meaningful" not in md and "Warning" not in md
    assert "Best trial" in md and "objective" in md  # a plain Optuna study has no metric name


def test_importance_figure_legend_clear_of_bars_no_gap_and_warning():
    from matplotlib.text import Text
    from dmlbench.results.importance_plots import plot_importance as _plot_importance

    dists = {k: FloatDistribution(0.0, 1.0) for k in ("loss_lr", "margin", "scale")}
    vals = {"loss_lr": 0.9, "margin": 0.05, "scale": 0.05}
    dec = study_decomposition(_study(lambda p: p["loss_lr"] + 0.1 * p["margin"], dists, 40),
                              n_trees=8)
    for warning in (False, True):
        fig = _plot_importance(dists, vals, vals, dec, warning=warning, n_done=3, needed=15)
        r = _drawn(fig)
        bars_ax, matrix_ax = fig.axes[0], fig.axes[1]
        legend = bars_ax.get_legend().get_window_extent(r)
        bars = [p.get_window_extent(r) for p in bars_ax.patches]
        assert len(bars) == 9 and not any(legend.overlaps(b) for b in bars)
        # no wide empty band between the panels (less than half an inch, labels included)
        gap = matrix_ax.get_tightbbox(r).x0 - bars_ax.get_tightbbox(r).x1
        assert gap < 0.5 * fig.dpi, gap / fig.dpi
        title = fig._suptitle.get_text() if fig._suptitle else ""
        assert ("NOT MEANINGFUL: 3 completed trials < 15 needed" in title) == warning
        cells = [t.get_text() for t in matrix_ax.texts if isinstance(t, Text)]
        assert f"{dec.main['loss_lr']:.2f}" in cells


def test_history_has_integer_ticks_and_metric_label():
    from dmlbench.results.plots import optimisation_history

    dists = {"x": FloatDistribution(0.0, 1.0)}
    study = _mlrc_like(_study(lambda p: p["x"], dists, 4))
    study.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    fig = optimisation_history(study)
    _drawn(fig)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks == [0, 1, 2, 3, 4]
    assert ax.get_ylabel() == "val MAP@R (%, mean of 4 folds)"
    # values in percent, best so far a running maximum
    pts = ax.collections[0].get_offsets()
    assert np.allclose(pts[:, 1], [100 * t.value for t in study.trials[:4]])
    best_line = ax.lines[0].get_ydata()
    assert np.allclose(best_line, np.maximum.accumulate([100 * t.value for t in study.trials[:4]]))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "best so far", "completed trial", "fail"]


def test_marginals_axis_says_the_metric(tmp_path):
    from dmlbench.results.importance_plots import plot_marginals as _plot_marginals

    dists = {"x": FloatDistribution(0.0, 1.0), "k": IntDistribution(1, 4)}
    study = _study(lambda p: p["x"] * p["k"], dists, 12)
    fig, curves = _plot_marginals(dists, study.trials, "val MAP@R (%)", 100.0)
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["val MAP@R (%)"] * 2
    # curves are kept in the objective's own units; the axes in percent
    k_rows = curves["k"]
    for row in k_rows:
        ys = [t.value for t in study.trials if t.params["k"] == row["center"]]
        assert row["mean"] == pytest.approx(np.mean(ys))
    assert max(fig.axes[0].collections[0].get_offsets()[:, 1]) == pytest.approx(
        100 * max(t.value for t in study.trials))


def test_fold_validation_curves_from_intermediate_values():
    from dmlbench.results.plots import fold_curves, fold_validation_curves

    dists = {"x": FloatDistribution(0.0, 1.0)}
    plain = _mlrc_like(_study(lambda p: p["x"], dists, 3))
    assert fold_curves(plain) == {} and fold_validation_curves(plain) is None
    study = _mlrc_like(optuna.create_study(direction="maximize"), folds=2)
    # 2 folds x up to 3 epochs: step = fold * 3 + epoch; fold 1 of trial 0 stopped early
    steps = [{1: 0.1, 2: 0.2, 3: 0.3, 4: 0.15, 5: 0.25},
             {1: 0.2, 2: 0.4, 3: 0.5, 4: 0.3, 5: 0.45, 6: 0.5}]
    for x, iv in zip((0.3, 0.6), steps):
        study.add_trial(create_trial(params={"x": x}, distributions=dists, value=x,
                                     intermediate_values=iv))
    curves = fold_curves(study)
    assert curves == {0: {0: [(1, 0.1), (2, 0.2), (3, 0.3)], 1: [(1, 0.15), (2, 0.25)]},
                      1: {0: [(1, 0.2), (2, 0.4), (3, 0.5)], 1: [(1, 0.3), (2, 0.45), (3, 0.5)]}}
    fig = fold_validation_curves(study)
    assert [ax.get_title() for ax in fig.axes] == ["fold 0", "fold 1"]
    for ax, want in zip(fig.axes, ([20, 40, 50], [30, 45, 50])):
        best = [l for l in ax.lines if l.get_label() == "best trial (1)"]
        assert len(best) == 1 and len(ax.lines) == 2
        assert list(best[0].get_xdata()) == [1, 2, 3]
        assert np.allclose(best[0].get_ydata(), want)
    # a fold's curve may come as a user attribute instead
    study.add_trial(create_trial(params={"x": 0.1}, distributions=dists, value=0.1,
                                 user_attrs={"fold_0": {"value": 0.2, "curve": [[1, 0.2]]}}))
    assert fold_curves(study)[2] == {0: [(1, 0.2)]}
    # with a pruner, steps 0..folds-1 are the running mean over folds, not a curve
    pruned = optuna.create_study(direction="maximize")
    pruned.set_user_attr("dmlbench", {"experiment": {"protocol": "mlrc", "num_folds": 4,
                                                     "pruner": "median"},
                                      "config": {"train": {"epochs": 3}}})
    pruned.add_trial(create_trial(params={"x": 0.1}, distributions=dists, value=0.1,
                                  intermediate_values={0: 0.1, 1: 0.12, 2: 0.11, 3: 0.1}))
    assert fold_curves(pruned) == {} and fold_validation_curves(pruned) is None


def test_no_pyplot_and_no_backend_change_on_import_or_use(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = ("import matplotlib, sys; before = matplotlib.rcParams._get_backend_or_none(); "
            "import dmlbench.results.importance, dmlbench.results.plots, dmlbench.results.html; import optuna; "
            "from optuna.trial import create_trial; "
            "from optuna.distributions import FloatDistribution as F; "
            "s = optuna.create_study(); "
            "s.add_trials([create_trial(params={'x': i / 5}, distributions={'x': F(0, 1)}, "
            "value=i) for i in range(5)]); "
            f"dmlbench.results.importance.write_importance_report(s, {str(tmp_path)!r}, n_trees=4); "
            "print('matplotlib.pyplot' in sys.modules, "
            "matplotlib.rcParams._get_backend_or_none() == before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
    assert (tmp_path / "importance.png").read_bytes()[:4] == b"\x89PNG"
