"""The search space and samplers of an MLRC search: a method's registry space with a suite's
overrides, Optuna distributions, per-trial seeded samplers and the pruner.

Sampling is reproducible per trial: the sampler (TPE, GP, random) is rebuilt before each trial
with a seed derived from the study seed and the trial number, so two workers never draw from
the same random stream, and the trials of a study do not depend on how many workers ran it
(up to what each trial's sampler saw finished). The grid sampler is seeded once: trial N takes
cell N of the grid shuffled by the study seed.
"""
from __future__ import annotations

import hashlib
from typing import Any

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from dmlbench.bench.errors import UserError
from dmlbench.methods import get_method, resolve_params

SAMPLERS = ("tpe", "gp", "random", "grid")
PRUNERS = ("none", "median")


# ----------------------------------------------------------------------------- search space


def distribution(spec: Any, name: str = "?") -> BaseDistribution:
    """An Optuna distribution from a registry search-space entry
    ("float"|"log"|"int", low, high) or ("categorical", [choices])."""
    if not isinstance(spec, (list, tuple)) or not spec:
        raise UserError(f"search space entry {name}={spec!r} must be [float|log|int, low, high] "
                        "or [categorical, [choices]]")
    kind = spec[0]
    try:
        if kind == "categorical":
            (choices,) = spec[1:]
            return CategoricalDistribution(list(choices))
        lo, hi = spec[1:]
        if kind == "float":
            return FloatDistribution(float(lo), float(hi))
        if kind == "log":
            return FloatDistribution(float(lo), float(hi), log=True)
        if kind == "int":
            if float(lo) != int(lo) or float(hi) != int(hi):
                raise ValueError("int bounds must be integers")
            return IntDistribution(int(lo), int(hi))
    except (TypeError, ValueError) as e:
        raise UserError(f"search space entry {name}={list(spec)!r} is invalid ({e}); use "
                        "[float|log|int, low, high] with low <= high (low > 0 for log) or "
                        "[categorical, [choices]]") from None
    raise UserError(f"search space entry {name}={list(spec)!r} has unknown kind {kind!r}; "
                    "valid kinds: float, log, int, categorical")


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask `trial` for parameter `name` from `dist` (a re-queued trial returns its value)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def grid_values(dist: BaseDistribution, points: int) -> list[Any]:
    """The grid of one parameter for GridSampler: categorical choices, or `points` values
    evenly spaced (log-spaced for log scales; distinct integers for ints)."""
    import numpy as np

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    lo, hi = dist.low, dist.high
    if points <= 1 or lo == hi:
        return [lo]
    vals = (np.geomspace(lo, hi, points) if getattr(dist, "log", False)
            else np.linspace(lo, hi, points))
    if isinstance(dist, IntDistribution):
        return sorted({int(round(v)) for v in vals})
    return [float(v) for v in vals]


# ----------------------------------------------------------------------------- samplers


def _seed_for(seed: int, number: int) -> int:
    h = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(h[:4], "little")


class PerTrialSeededSampler(BaseSampler):
    """Rebuilds the inner sampler before each trial, seeded by (study seed, trial number);
    the grid sampler is built once (its shuffled grid order comes from the study seed and trial
    N evaluates cell N, so workers never collide)."""

    def __init__(self, kind: str, seed: int, space: dict[str, BaseDistribution],
                 grid_points: int = 3) -> None:
        if kind not in SAMPLERS:
            raise UserError(f"unknown sampler {kind!r}; valid samplers: {', '.join(SAMPLERS)}")
        self.kind = kind
        self.seed = int(seed)
        self.space = space
        self.grid_points = grid_points
        self._inner = self._make(self.seed)

    def _make(self, seed: int) -> BaseSampler:
        s = optuna.samplers
        if self.kind == "tpe":
            return s.TPESampler(seed=seed)
        if self.kind == "gp":
            return s.GPSampler(seed=seed)
        if self.kind == "random":
            return s.RandomSampler(seed=seed)
        return s.GridSampler({k: grid_values(d, self.grid_points) for k, d in self.space.items()},
                             seed=seed)

    def grid_size(self) -> int | None:
        if self.kind != "grid":
            return None
        n = 1
        for d in self.space.values():
            n *= len(grid_values(d, self.grid_points))
        return n

    def before_trial(self, study, trial: FrozenTrial) -> None:
        if self.kind != "grid":  # the grid's order is fixed by the study seed; trial N takes cell N
            self._inner = self._make(_seed_for(self.seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_pruner(kind: str) -> optuna.pruners.BasePruner:
    """The pruner named `kind` (one of PRUNERS)."""
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    raise UserError(f"unknown pruner {kind!r}; valid pruners: {', '.join(PRUNERS)}")


# ----------------------------------------------------------------------------- a method's space


def search_space(method: str, fixed: dict[str, Any], overrides: dict[str, Any]
                 ) -> tuple[dict[str, list], dict[str, Any]]:
    """(space, fixed): the registry space of `method`, with `overrides` (param -> new range or
    a fixed value) applied and the `fixed` parameters taken out of it."""
    spec = get_method(method)
    space = {k: list(v) for k, v in spec.search_space.items()}
    fixed = dict(fixed)
    for name, value in (overrides or {}).items():
        if name not in spec.defaults:
            valid = ", ".join(sorted(spec.defaults)) or "(none)"
            raise UserError(f"search space override {name!r}: method {method!r} has no such "
                            f"parameter; its parameters are: {valid}")
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
            space[name] = list(value)
            fixed.pop(name, None)
        else:
            fixed[name] = value
    for name in fixed:
        space.pop(name, None)
    for name, spec_ in space.items():
        distribution(spec_, name)
    resolve_params(method, fixed)
    return space, fixed
