"""Metric names of the tables: short headers (P@1, RP, MAP@R, R@K, NMI, F1), their inverse,
and the default columns and their order."""
from __future__ import annotations

import re
from typing import Iterable

__all__ = ["HEADLINE_METRICS", "VAL_MAP_R", "short_name", "metric_key", "metric_rank",
           "default_metrics"]

HEADLINE_METRICS: tuple[str, ...] = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
VAL_MAP_R = "val_mean_average_precision_at_r"
_SHORT = {"precision_at_1": "P@1", "r_precision": "RP", "mean_average_precision_at_r": "MAP@R",
          "nmi": "NMI", "f1": "F1", VAL_MAP_R: "val MAP@R"}
_RECALL = re.compile(r"recall_at_(\d+)$")


def short_name(metric: str) -> str:
    """Header name of a metric key: P@1, RP, MAP@R, R@K, NMI, F1; other keys unchanged."""
    m = _RECALL.match(metric)
    return f"R@{m.group(1)}" if m else _SHORT.get(metric, metric)


def metric_key(name: str) -> str:
    """Inverse of `short_name` (a metric key passes through)."""
    m = re.fullmatch(r"R@(\d+)", name)
    if m:
        return f"recall_at_{m.group(1)}"
    return {v: k for k, v in _SHORT.items()}.get(name, name)


def metric_rank(metric: str) -> tuple[int, int]:
    """Sort key of a metric: headline metrics, recall@K by K, NMI and F1, val MAP@R, others."""
    if metric in HEADLINE_METRICS:
        return (0, HEADLINE_METRICS.index(metric))
    m = _RECALL.match(metric)
    if m:
        return (1, int(m.group(1)))
    if metric in ("nmi", "f1"):
        return (2, ("nmi", "f1").index(metric))
    if metric == VAL_MAP_R:
        return (3, 0)
    return (4, 0)


def default_metrics(available: Iterable[str]) -> list[str]:
    """precision_at_1, r_precision, mean_average_precision_at_r, recall_at_K (by K), nmi, f1:
    those of them in `available`, in that order."""
    return sorted((m for m in dict.fromkeys(available) if metric_rank(m)[0] < 3), key=metric_rank)
