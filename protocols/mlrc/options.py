"""The options of an MLRC search and final evaluation (`SearchOptions`), as a suite's `search:`
block or the `dmlbench mlrc` command line give them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dmlbench.bench.errors import UserError
from dmlbench.protocols import study as S


@dataclass
class SearchOptions:
    """How the search and the final evaluation run; see the suite docstring for the YAML keys."""

    n_trials: int = 50
    sampler: str = "tpe"
    seed: int | None = None            # default: config run.seed
    pruner: str = "none"
    grid_points: int = 3
    num_folds: int = 4
    reproductions: int = 3
    max_failed: int | None = None      # default: n_trials
    space: dict[str, Any] = field(default_factory=dict)  # param -> [kind, lo, hi] | value
    storage: str | None = None         # default: sqlite file OUT/studies.db
    study: str | None = None           # default: derived name
    workers: int = 1                   # processes on this machine (extra ones via subprocess)
    heartbeat_interval: int = 10
    grace_period: int = 40

    KEYS = ("n_trials", "sampler", "seed", "pruner", "grid_points", "num_folds", "reproductions",
            "max_failed", "space", "storage", "study", "workers", "heartbeat_interval",
            "grace_period")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "search") -> "SearchOptions":
        d = dict(d or {})
        unknown = set(d) - set(cls.KEYS)
        if unknown:
            raise UserError(f"unknown {where} key(s) {sorted(unknown)}; valid keys: "
                            f"{', '.join(cls.KEYS)}")
        opts = cls(**d)
        opts.check(where)
        return opts

    def check(self, where: str = "search") -> None:
        def bad(key: str, allowed: str) -> UserError:
            return UserError(f"invalid {where}.{key}={getattr(self, key)!r}; allowed: {allowed}")

        for key in ("n_trials", "reproductions", "workers", "heartbeat_interval", "grace_period",
                    "grid_points"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(key, "an integer >= 1")
        if self.num_folds != 4 and (not isinstance(self.num_folds, int) or self.num_folds < 2):
            raise bad("num_folds", "an integer >= 2 (MLRC uses 4)")
        if self.sampler not in S.SAMPLERS:
            raise bad("sampler", ", ".join(S.SAMPLERS))
        if self.pruner not in S.PRUNERS:
            raise bad("pruner", ", ".join(S.PRUNERS))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or self.seed < 0):
            raise bad("seed", "an integer >= 0")
        if self.max_failed is not None and (not isinstance(self.max_failed, int)
                                            or self.max_failed < 1):
            raise bad("max_failed", "an integer >= 1")
        if not isinstance(self.space, dict):
            raise bad("space", "a mapping param: [kind, low, high] | [categorical, [..]] | value")
        if self.grace_period <= self.heartbeat_interval:
            raise bad("grace_period", f"more seconds than heartbeat_interval="
                                      f"{self.heartbeat_interval}")
