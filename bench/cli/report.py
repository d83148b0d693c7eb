"""`dmlbench report`: tables (and optionally paired deltas and the HTML report) of a folder of
run records."""
from __future__ import annotations

import argparse
from pathlib import Path

from dmlbench.bench.cli.common import print_table
from dmlbench.bench.errors import UserError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("report", help="turn a folder of run records into tables",
                         description="Read every run record under RUNS_DIR and write "
                         "table.md, table.csv and table.tex (rows: methods; columns: dataset x "
                         "metric; mean +- std over seeds; deltas of '+method' rows to their base).")
    rep.add_argument("runs_dir", metavar="RUNS_DIR")
    rep.add_argument("--which", choices=("best", "final"), default="best",
                     help="the best evaluation (chosen on the test set, as papers do) or the last")
    rep.add_argument("--ci", action="store_true",
                     help="t-based 95%% confidence intervals instead of standard deviations")
    rep.add_argument("--out", help="where to write the tables (default: RUNS_DIR)")
    rep.add_argument("--published", metavar="NAME|CSV",
                     help="show published numbers beside the measured ones, with the difference: "
                     "a name of the shipped published numbers (the preset suites' names: "
                     "memvir-table2, memvir-table4, das-table2, mlrc) or a CSV file with columns "
                     "method, dataset, metric, value (percent)[, protocol]")
    rep.add_argument("--deltas", action="store_true",
                     help="also print each '+method' row's paired delta to its base (same "
                     "seeds) with a t-based 95%% CI, in percentage points; an ablation row "
                     "NAME@what is also compared with the row NAME")
    rep.add_argument("--against", action="append", default=[], metavar="ROW=BASE",
                     help="with --deltas: also compare row ROW with row BASE (e.g. "
                     "ms+miner+das-dfs=ms+miner+das); repeatable")
    rep.add_argument("--html", action="store_true",
                     help="also write one self-contained HTML report (OUT/report.html; opens "
                     "from disk, no network): sortable table, learning curves, MLRC and "
                     "importance plots, the settings behind each number; a suite's MLRC part "
                     "in the sibling folder RUNS_DIR-mlrc is included")
    rep.set_defaults(handler=cmd_report)


def _against(pairs: list[str], rows: set[str]) -> dict[str, str]:
    """`--against ROW=BASE` options as a dict, each name checked against the table's rows."""
    out = {}
    for text in pairs:
        row, sep, base = text.partition("=")
        if not sep or not row or not base:
            raise UserError(f"--against {text!r} is not ROW=BASE, e.g. "
                            "--against ms+miner+das-dfs=ms+miner+das")
        for name in (row, base):
            if name not in rows:
                raise UserError(f"--against {text!r}: no row {name!r} in these runs; rows: "
                                + ", ".join(sorted(rows)))
        out[row] = base
    return out


def cmd_report(ns: argparse.Namespace) -> int:
    if ns.against and not ns.deltas:
        raise UserError("--against applies to the paired deltas: add --deltas")
    from dmlbench.results.tables import write_tables

    published = None
    if ns.published:
        from dmlbench.bench.suite import load_published

        published = load_published(ns.published)
        published.attrs["name"] = ns.published
    print_table(write_tables(ns.runs_dir, ns.out, which=ns.which, ci=ns.ci,
                             published=published))
    if ns.deltas:
        from dmlbench.results.deltas import deltas_markdown, paired_deltas
        from dmlbench.results.tables import default_metrics, load_runs

        df = load_runs(ns.runs_dir, which=ns.which)
        against = _against(ns.against, set(df["method"]))
        print("\n" + deltas_markdown(paired_deltas(df, default_metrics(df.columns), against)))
    if ns.html:
        from dmlbench.results.html import write_html_report

        runs = Path(ns.runs_dir)
        mlrc_part = runs.parent / f"{runs.resolve().name}-mlrc"
        dirs = [runs] + ([mlrc_part] if mlrc_part.is_dir() else [])
        path = write_html_report(dirs, Path(ns.out or runs) / "report.html",
                                 published=published, which=ns.which,
                                 ci=True if ns.ci else None)
        print(f"html: {path}")
    return 0
