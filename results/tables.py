"""Comparison tables: a folder of run records -> mean and spread per method, dataset and metric.

Units: `load_runs` and `comparison_table` keep metric values as the records hold them, fractions
in [0, 1]; every formatted output (Markdown, LaTeX, CSV) is in percent. `add_published` takes
percent, as papers print them.

Spread over seeds: the sample standard deviation (ddof=1), or with `ci=True` the half-width of a
t-based 95% confidence interval, t.ppf(0.975, n-1) * std / sqrt(n). Both are undefined for a
single seed and show as "n/a".

Which numbers a record contributes: `record[which]["metrics"]` (which = "best" or "final"),
except MLRC records (protocol "mlrc") that carry `record["mlrc"]["concatenated"]`: these
contribute the concatenated-embedding test metrics whatever `which` asks, since that is the
number the MLRC protocol reports (a `{"metrics": {...}}` block or a plain metrics dict).

MLRC records also contribute `val_mean_average_precision_at_r` ("val MAP@R"): the best search
value of their study (mean over the folds of each fold's best validation MAP@R), the number
MLRC itself reports for its search. It is not a default column; published numbers of protocol
"mlrc-validation" are compared with it.

Only records with status "completed" enter the table; diverged and failed ones (unless a
completed record of the same method, dataset, protocol, seed and suite supersedes them) are
kept in `df.attrs["skipped"]` and listed in a note under the Markdown table.

Row order never depends on when a run was recorded (a resumed suite's table equals an
uninterrupted one's): an explicit `order` (method names; `datasets` for the column groups)
comes first; then records that carry `suite_position` ({"dataset": i, "run": j}: the dataset's
index in the suite's datasets and the run entry's index in the suite's `runs`) sort by those
indices; the rest by name. Each base method is followed by its "+method" variants.

This module is the pipeline (`build_table`, `write_tables`) and re-exports its parts:
`results.metric_names` (short names, default columns), `results.runs` (records -> DataFrame),
`results.comparison` (the table), `results.published` (published numbers beside ours) and
`results.formats` (Markdown, LaTeX, CSV).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Literal

import pandas as pd

from dmlbench.bench.records import atomic_write_text
from dmlbench.results.comparison import comparison_table
from dmlbench.results.formats import FORMATS, escape_latex, format_table
from dmlbench.results.metric_names import (HEADLINE_METRICS, VAL_MAP_R, default_metrics,
                                           metric_rank, short_name)
from dmlbench.results.published import add_published, published_metric, published_rows
from dmlbench.results.runs import ID_COLUMNS, load_runs, skipped_summary

__all__ = ["ID_COLUMNS", "load_runs", "default_metrics", "comparison_table", "add_published",
           "published_metric", "build_table", "format_table", "write_tables", "skipped_summary",
           "short_name", "escape_latex"]
__all__ += ["FORMATS", "HEADLINE_METRICS", "VAL_MAP_R"]  # kept importable from here

log = logging.getLogger(__name__)


def build_table(df: pd.DataFrame, *, metrics: list[str] | None = None, ci: bool = False,
                published: pd.DataFrame | None = None, order: "Iterable[str] | None" = None,
                datasets: "Iterable[str] | None" = None) -> pd.DataFrame:
    """`comparison_table` of `df` (rows of one protocol), with the `published` numbers where
    given (`add_published`; without `metrics`, the default columns plus any other metric the
    published numbers compare with). `table.attrs["published_note"]`: one line when the
    published numbers match none of the runs, else ""."""
    if metrics is None and published is not None:
        available = [c for c in df.columns if c not in ID_COLUMNS and df[c].notna().any()]
        rows = published_rows(published, list(dict.fromkeys(df["protocol"].dropna())))
        wanted = {published_metric(r["metric"], r.get("protocol"))
                  for r in rows.to_dict("records")} if "metric" in rows.columns else set()
        metrics = default_metrics(available) + sorted(
            (m for m in available if m in wanted and metric_rank(m)[0] >= 3), key=metric_rank)
    table = comparison_table(df, metrics, ci=ci, order=order, datasets=datasets)
    if published is not None:
        table = add_published(table, published)
    return table


def write_tables(runs_dir: "str | os.PathLike[str]",
                 out_dir: "str | os.PathLike[str] | None" = None, *,
                 which: Literal["best", "final"] = "best", ci: bool = False,
                 metrics: list[str] | None = None,
                 published: pd.DataFrame | None = None,
                 order: "Iterable[str] | None" = None) -> dict[str, Path]:
    """Write table.csv, table.md and table.tex for the runs under `runs_dir` into `out_dir`
    (default: `runs_dir`), with `metrics` (default: `default_metrics`) and, if given, the
    `published` numbers (see `add_published`); return their paths by format name
    ("csv", "markdown", "latex"). `order`: method names, rows in that order (see
    `comparison_table`).

    Runs left out (diverged/failed) are listed in a note under the Markdown table, and that
    one-line note is logged as a warning. Published numbers that match none of the runs: a note under the
    Markdown table, and a warning logged.
    """
    df = load_runs(runs_dir, which=which)
    table = build_table(df, metrics=metrics, ci=ci, published=published, order=order)
    note = skipped_summary(df.attrs.get("skipped", []))
    pub_note = table.attrs.get("published_note", "")
    if pub_note:
        log.warning("%s", pub_note[0].upper() + pub_note[1:])
    out = Path(out_dir) if out_dir is not None else Path(runs_dir)
    paths = {"csv": out / "table.csv", "markdown": out / "table.md", "latex": out / "table.tex"}
    for fmt, path in paths.items():
        text = format_table(table, fmt)
        if fmt == "markdown":
            text += "".join(f"\nNote: {n[0].upper() + n[1:]}\n" for n in (note, pub_note) if n)
        atomic_write_text(path, text)
    if note:
        log.warning("%s", note[0].upper() + note[1:])
    return paths
