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

This module writes the report; the decomposition is in `results.fanova`, the figures and
marginal curves in `results.importance_plots`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial

from dmlbench.bench.records import atomic_write_text
from dmlbench.results import plots
from dmlbench.results.fanova import (Decomposition, complete_trials, decompose_forest, fanova,
                                     searched_distributions, study_decomposition)
from dmlbench.results.importance_plots import marginal_curve, plot_importance, plot_marginals

__all__ = ["Decomposition", "fanova", "study_decomposition", "write_importance_report",
           "marginal_curve", "min_trials", "MIN_TRIALS", "MIN_TRIALS_PER_PARAM"]
__all__ += ["decompose_forest", "searched_distributions"]  # kept importable from here

MIN_TRIALS = 10
MIN_TRIALS_PER_PARAM = 5


def min_trials(n_params: int) -> int:
    """Completed trials below which importance estimates are marked "not meaningful"."""
    return max(MIN_TRIALS, MIN_TRIALS_PER_PARAM * n_params)


def _optuna_importances(study: optuna.Study, evaluator) -> tuple[dict[str, float] | None, str]:
    try:
        return optuna.importance.get_param_importances(study, evaluator=evaluator), ""
    except Exception as e:  # too few trials, constant objective, ...
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _trial_lines(study: optuna.Study, done: list[FrozenTrial], dists: dict[str, Any],
                 needed: int, label: str, scale: float) -> list[str]:
    """Title, trial counts by state, the "not meaningful" warning, the best trial."""
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    lines = [f"# Hyperparameter importance: {study.study_name}", "",
             "Trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())) + "."]
    if dists and len(done) < needed:
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
    return lines


def _estimates(study: optuna.Study, done: list[FrozenTrial], dists: dict[str, Any], seed: int,
               n_trees: int) -> tuple[dict | None, str, dict | None, str, Decomposition | None]:
    """(fANOVA importances, why not, PED-ANOVA importances, why not, our decomposition)."""
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
    return fan, fan_err, ped, ped_err, dec


def _parameter_lines(dists: dict[str, Any], fan: dict | None, fan_err: str, ped: dict | None,
                     ped_err: str, dec: Decomposition | None, flag: str) -> list[str]:
    """The "Per parameter" section."""
    lines = ["", "## Per parameter", "",
             "fANOVA and PED-ANOVA: Optuna's evaluators, normalised to sum to 1. "
             "Main effect: V_i / V of the functional ANOVA below (log parameters on the log "
             "scale), mean ± std over trees.", ""]
    if not dists:
        lines.append("No searched parameter.")
        return lines
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
    return lines


def _pair_lines(dec: Decomposition | None, flag: str) -> list[str]:
    """The "Pairwise interactions" section."""
    lines = ["", "## Pairwise interactions", "",
             "V_ij / V: the variance of the pure interaction of two parameters (the variance "
             "of their joint marginal minus both main effects) as a fraction of the total, "
             "from the same random forest as the main effects.", ""]
    if dec is None or len(dec.params) < 2:
        lines.append("n/a (needs 2 searched parameters and 2 completed trials).")
        return lines
    lines += [f"| pair | V_ij/V{flag} |", "|:---|---:|"]
    for (a, b), v in sorted(dec.pairs.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {a} × {b} | {v:.3f} ± {dec.pairs_std[(a, b)]:.3f} |")
    lines.append(f"\nMain effects sum to {sum(dec.main.values()):.3f}, pairs to "
                 f"{sum(dec.pairs.values()):.3f}; the rest is higher-order interaction.")
    return lines


def _marginal_lines(curves: dict[str, list], paths: dict[str, Path], label: str,
                    scale: float) -> list[str]:
    """The figure links, the "Marginal performance" section and the history section."""
    lines = ["", f"![importance]({paths['importance'].name})", "",
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
    return lines


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
    done = complete_trials(study)
    dists = searched_distributions(study)
    needed = min_trials(len(dists))
    meaningful = len(done) >= needed
    lines = _trial_lines(study, done, dists, needed, label, scale)
    fan, fan_err, ped, ped_err, dec = _estimates(study, done, dists, seed, n_trees)
    flag = "" if meaningful else " (not meaningful)"
    lines += _parameter_lines(dists, fan, fan_err, ped, ped_err, dec, flag)
    lines += _pair_lines(dec, flag)
    plots.save_png(plot_importance(dists, fan, ped, dec, warning=not meaningful and bool(dists),
                                   n_done=len(done), needed=needed), paths["importance"])
    fig, curves = plot_marginals(dists, done, label, scale)
    plots.save_png(fig, paths["marginals"])
    plots.save_png(plots.optimisation_history(study, label, scale), paths["history"])
    lines += _marginal_lines(curves, paths, label, scale)
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
