"""Published numbers beside ours: which published rows apply to a table, the "published" and
"diff" columns, and one line saying why none matched."""
from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

from dmlbench.bench.errors import UserError
from dmlbench.results.comparison import ordered
from dmlbench.results.metric_names import VAL_MAP_R, metric_key

__all__ = ["published_metric", "published_rows", "add_published"]


def published_metric(metric: str, protocol: Any = None) -> str:
    """The table metric a published number compares with: its key, or for protocol
    "mlrc-validation" (MLRC's search value) `val_mean_average_precision_at_r`."""
    key = metric_key(str(metric))
    if protocol == "mlrc-validation" and key == "mean_average_precision_at_r":
        return VAL_MAP_R
    return key


def published_rows(published: pd.DataFrame, protocols: list[str] | None) -> pd.DataFrame:
    """Rows of `published` that apply to tables of `protocols` (all rows without a protocol
    column or without known table protocols); "P-validation" rows apply to protocol P."""
    if "protocol" not in published.columns or not protocols:
        return published
    proto = published["protocol"].astype(str).str.replace(r"-validation$", "", regex=True)
    return published[published["protocol"].isna() | proto.isin(protocols)]


def add_published(table: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """A copy of `table` with "published" and "diff" (mean - published) stats for the
    (method, dataset, metric) cells that `published` has and the table has too.

    `published`: columns method, dataset, metric (key or short name, e.g. "P@1"), value in
    percent, and optionally protocol: rows of another protocol than the table's are ignored,
    and "mlrc-validation" MAP@R rows are compared with the "val MAP@R" column (see
    `published_metric`). Names must match the records' exactly; other rows are ignored.
    """
    missing = {"method", "dataset", "metric", "value"} - set(published.columns)
    if missing:
        raise UserError(f"published numbers lack column(s) {', '.join(sorted(missing))}; "
                        "expected method, dataset, metric, value (percent)")
    every = published
    published = published_rows(published, table.attrs.get("protocols"))
    values: dict[tuple[str, str], dict[str, float]] = {}
    for row in published.to_dict("records"):
        key = (row["dataset"], published_metric(row["metric"], row.get("protocol")))
        if row["method"] in table.index and (*key, "mean") in table.columns:
            values.setdefault(key, {})[row["method"]] = float(row["value"]) / 100.0
    extra = {}
    for (d, m), by_method in values.items():
        pub = pd.Series(by_method, dtype=float).reindex(table.index)
        extra[(d, m, "published")] = pub
        extra[(d, m, "diff")] = table[(d, m, "mean")] - pub
    note = "" if extra else _unmatched_note(table, every, published)
    if not extra:
        out = table.copy()
        out.attrs.update(table.attrs, published_note=note)
        return out
    add = pd.DataFrame(extra, index=table.index)
    add.columns.names = table.columns.names
    out = pd.concat([table, add], axis=1)
    out.attrs.update(table.attrs, published_note="")
    return ordered(out)


def _names(values: Iterable[Any], limit: int = 6) -> str:
    names = [str(v) for v in dict.fromkeys(values) if isinstance(v, str) or pd.notna(v)]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"


def _unmatched_note(table: pd.DataFrame, every: pd.DataFrame, applicable: pd.DataFrame) -> str:
    """One line saying why none of the published numbers matches a cell of `table`."""
    name = str(every.attrs.get("name") or "").strip()
    if not name and "suite" in every.columns and every["suite"].nunique() == 1:
        name = str(every["suite"].iloc[0])
    what = f"the published numbers {name}" if name else "the published numbers"
    datasets = list(dict.fromkeys(table.columns.get_level_values("dataset")))
    protocols = table.attrs.get("protocols") or []
    if applicable.empty and "protocol" in every.columns:
        why = (f"they are for protocol {_names(every['protocol'])}, these runs for "
               f"{_names(protocols)}")
    else:
        why = (f"they name methods {_names(applicable['method'])} on datasets "
               f"{_names(applicable['dataset'])}; these runs are methods "
               f"{_names(table.index)} on datasets {_names(datasets)} "
               "(names must match exactly)")
    return f"{what} match none of these runs: {why}."
