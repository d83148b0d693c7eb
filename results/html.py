"""One self-contained HTML report of one or more folders of run records.

`write_html_report(runs_dir, out_path)` writes a single file that opens from disk with no
network: CSS and a small sorting script inline, every figure a base64 PNG data URI, and a
Content-Security-Policy that forbids any other source. It holds, per protocol found:

- the comparison table (`results.tables.build_table`: mean ± std, or ± t-based 95% CI,
  deltas of "+method" rows to their base, published numbers and our difference to them),
  one table per dataset, sortable by clicking a column header;
- warnings next to the numbers: a number selected on the test set (the conventional
  protocol's best epoch is chosen on the test classes) is marked "test-selected"; a
  "+method" row trained with another budget (epochs × iterations per epoch × batch size)
  than its base row is marked with the budget ratio;
- figures (`results.plots`): learning curves per dataset, MLRC test scores per fold model,
  and for each MLRC study its optimisation history and per-fold validation curves (when its
  trials report intermediate values); studies come from `studies` or from the SQLite
  `studies.db` files under the folders;
- the importance reports (`*/importance/importance.md` and their PNGs) under the folders;
- a disclosure card per result (method × dataset × protocol): trunk, embedding size, pooling,
  frozen BN, image size and transforms, batch and m per class, optimiser and learning rates,
  epochs or iterations, selection, seeds, device (the record's `device`, else the configured
  one), package versions, git commit, and the measured hours (the records' `wall_time_s` ×
  their `world_size` processes where recorded; MLRC: reproductions, plus the search's trial
  time when the study is found).

This module loads the records and assembles the page; its parts are `results.report_facts`
(budgets, selection, studies), `results.report_tables` (the results tables),
`results.report_cards` (the cards), `results.report_markdown` (importance reports as HTML) and
`results.report_page` (CSS, script, page shell).
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import pandas as pd

from dmlbench.bench.errors import UserError
from dmlbench.bench.records import atomic_write_text, read_records
from dmlbench.results import plots
from dmlbench.results import formats as F
from dmlbench.results import tables as T
from dmlbench.results.report_cards import card
from dmlbench.results.report_facts import (BUDGET_TOLERANCE, budget_flags, find_studies,
                                           record_key, run_budget, selection)
from dmlbench.results.report_markdown import markdown_to_html
from dmlbench.results.report_page import PROTOCOL_TITLES, esc as _e, figure, page, slug
from dmlbench.results.report_page import protocol_title
from dmlbench.results.report_tables import table_html

__all__ = ["write_html_report", "render_html_report", "run_budget", "markdown_to_html"]
__all__ += ["PROTOCOL_TITLES", "BUDGET_TOLERANCE"]  # kept importable from here

log = logging.getLogger(__name__)

Groups = dict[tuple, list[dict]]


def _load(dirs: list[Path], which: str) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """(the runs of all folders as one frame, their records, errors of folders left out)."""
    frames, records, errors = [], [], []
    for d in dirs:
        try:
            frames.append(T.load_runs(d, which=which))
        except UserError as e:
            if len(dirs) == 1:
                raise
            errors.append(str(e))
            log.warning("report: %s", e)
            continue
        records += [r for r in read_records(d) if isinstance(r.get("method"), str)]
    if not frames:
        raise UserError("; ".join(errors))
    df = pd.concat(frames, ignore_index=True)
    df.attrs.update(which=which, skipped=[s for f in frames for s in f.attrs["skipped"]],
                    datasets=list(dict.fromkeys(d for f in frames for d in f.attrs["datasets"])))
    return df, records, errors


def _groups(completed: list[dict]) -> Groups:
    """Completed records by (protocol, method, dataset), each group in seed order."""
    groups: Groups = {}
    for r in completed:
        groups.setdefault(record_key(r), []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: (r.get("seed") if isinstance(r.get("seed"), int) else -1))
    return groups


def _warnings(protocol: str, table: pd.DataFrame, test_selected: set,
              budget: dict[tuple[str, str], tuple]) -> list[str]:
    """The "read before comparing" lines of one protocol's table."""
    head = protocol_title(protocol)
    out = []
    if test_selected:
        out.append(f"{head}: the numbers marked ⚠test are the best of several "
                   "evaluations, chosen on the test classes (this protocol has no "
                   "validation set): they are optimistic and not comparable with "
                   "numbers selected on validation data.")
    for (variant, d), (ratio, mine, theirs, base) in budget.items():
        out.append(f"{head}: {variant} on {d} was trained with {ratio:.3g}× the budget "
                   f"of its base {base} ({mine} against {theirs}; epochs × iterations "
                   "per epoch × batch size): its Δ measures budget as well as method.")
    note = table.attrs.get("published_note")
    if note:
        out.append(f"{head}: {note}")
    return out


def _dataset_figures(protocol: str, datasets: list[str], completed: list[dict],
                     method_order: list[str]) -> list[str]:
    """Learning curves (conventional) or test scores per fold model (MLRC), per dataset."""
    figs = []
    for d in datasets:
        if protocol == "conventional":
            fig = plots.learning_curves(completed, d, order=method_order)
            if fig is not None:
                figs.append(figure(fig, f"learning curves on {d}",
                                   "Test metrics per evaluation epoch: mean over seeds, band "
                                   "± 1 std; dashed: a '+method' variant in its base's "
                                   "colour."))
        elif protocol == "mlrc":
            fig = plots.fold_test_scores(completed, d, order=method_order)
            if fig is not None:
                figs.append(figure(fig, f"MLRC test scores per fold on {d}",
                                   "Each fold model's test metric and the separated mean and "
                                   "concatenated embedding, per reproduction (points) and "
                                   "their mean (bars)."))
    return figs


def _study_figures(protocol: str, completed: list[dict], method_order: list[str],
                   dirs: list[Path], found: Mapping[str, Any]) -> list[str]:
    """Per MLRC study (in row order): its optimisation history (unless its importance report
    is shown) and its per-fold validation curves."""
    figs: list[str] = []
    by_method = sorted(((method_order.index(str(r["method"]))
                         if str(r["method"]) in method_order else len(method_order),
                         (r.get("mlrc") or {}).get("study")) for r in completed
                        if r.get("protocol") == protocol
                        and (r.get("mlrc") or {}).get("study")), key=lambda x: x[0])
    for name in dict.fromkeys(n for _, n in by_method):
        study = found.get(name)
        if study is None:
            continue
        has_report = any((d / name / "importance" / "importance.md").is_file() for d in dirs)
        if not has_report:
            figs.append(figure(plots.optimisation_history(study),
                               f"optimisation history of {name}",
                               f"Optimisation history of study {name}."))
        curves = plots.fold_validation_curves(study)
        if curves is not None:
            figs.append(figure(curves, f"validation curves of {name}",
                               f"Validation MAP@R per fold and epoch of study {name}."))
        else:
            figs.append(f'<p class="muted">Study {_e(name)}: no per-fold validation '
                        "curves (its trials report no intermediate values).</p>")
    return figs


def _protocol_section(protocol: str, df: pd.DataFrame, groups: Groups, completed: list[dict],
                      dirs: list[Path], found: Mapping[str, Any], card_ids: dict[tuple, str],
                      *, which: str, ci: bool | None, published: pd.DataFrame | None,
                      order: Sequence[str] | None) -> tuple[str, list[str], list[str]]:
    """(the <section> of one protocol, its warnings, its cards in row order)."""
    sub = df[df["protocol"] == protocol].copy()
    sub.attrs.update(df.attrs)
    use_ci = (protocol == "mlrc") if ci is None else ci
    table = T.build_table(sub, ci=use_ci, published=published, order=order)
    datasets = list(dict.fromkeys(table.columns.get_level_values("dataset")))
    test_selected = {(m, d) for (p, m, d), g in groups.items()
                     if p == protocol and selection(g, which)[1]}
    budget = budget_flags(table, groups, protocol)
    body = [f'<section id="protocol-{slug(protocol)}"><h2>{_e(protocol_title(protocol))}</h2>',
            f'<p class="meta">{_e(F.caption(table, *F.layout(table)[2:]))}</p>']
    body.append(table_html(table, protocol, groups, test_selected, budget, card_ids))
    method_order = [str(m) for m in table.index]
    figs = _dataset_figures(protocol, datasets, completed, method_order)
    if protocol == "mlrc":
        figs += _study_figures(protocol, completed, method_order, dirs, found)
    if figs:
        body.append("<h3>Figures</h3>" + "".join(figs))
    body.append("</section>")
    rank = {m: i for i, m in enumerate(method_order)}
    keys = sorted((k for k in groups if k[0] == protocol),
                  key=lambda k: (rank.get(k[1], len(rank)), datasets.index(k[2])
                                 if k[2] in datasets else len(datasets)))
    cards = [card(key, groups[key], card_ids[key], which, found) for key in keys]
    return "\n".join(body), _warnings(protocol, table, test_selected, budget), cards


def _importance_reports(dirs: list[Path]) -> list[str]:
    """The importance reports (importance/importance.md) under the folders, as HTML."""
    reports = []
    for d in dirs:
        for md_path in sorted(d.rglob("importance/importance.md")):
            try:
                text = md_path.read_text(encoding="utf-8")
            except OSError as e:
                log.warning("cannot read %s: %s", md_path, e)
                continue
            reports.append(f'<div class="imp report" data-study="{_e(md_path.parent.parent.name)}">'
                           + markdown_to_html(text, md_path.parent, shift=2) + "</div>")
    return reports


def render_html_report(runs_dir: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]",
                       *, published: pd.DataFrame | None = None,
                       which: Literal["best", "final"] = "best", ci: bool | None = None,
                       order: Sequence[str] | None = None,
                       studies: Mapping[str, Any] | None = None,
                       title: str | None = None) -> str:
    """The report's HTML text; see `write_html_report`."""
    dirs = [Path(runs_dir)] if isinstance(runs_dir, (str, os.PathLike)) else [
        Path(d) for d in runs_dir]
    if not dirs:
        raise UserError("no runs folder given for the report")
    df, records, errors = _load(dirs, which)
    completed = [r for r in records if r.get("status") == "completed"]
    groups = _groups(completed)
    study_names = {(r.get("mlrc") or {}).get("study") for r in completed
                   if r.get("protocol") == "mlrc"} - {None}
    found = find_studies(dirs, set(study_names), studies)

    protocols = [p for p in ("conventional", "mlrc") if (df["protocol"] == p).any()]
    protocols += [p for p in dict.fromkeys(df["protocol"].dropna()) if p not in protocols]
    card_ids = {k: "card-" + slug(*k) for k in groups}
    sections, warnings, nav, card_html = [], [], [], []
    for protocol in protocols:
        section, warns, cards = _protocol_section(
            protocol, df, groups, completed, dirs, found, card_ids, which=which, ci=ci,
            published=published, order=order)
        nav.append(f'<a href="#protocol-{slug(protocol)}">{_e(protocol_title(protocol))}</a>')
        sections.append(section)
        warnings += warns
        card_html += cards
    reports = _importance_reports(dirs)
    if reports:
        nav.append('<a href="#importance">Hyperparameter importance</a>')
        sections.append('<section id="importance"><h2>Hyperparameter importance</h2>'
                        + "\n".join(reports) + "</section>")
    nav.append('<a href="#cards">Settings behind each number</a>')
    sections.append('<section id="cards"><h2>Settings behind each number</h2><p class="meta">'
                    "One card per result (method × dataset × protocol); click to open.</p>"
                    + "\n".join(card_html) + "</section>")
    skipped = T.skipped_summary(df.attrs.get("skipped", []))
    if skipped:
        warnings.append(skipped)
    warnings += errors

    suites = ", ".join(dict.fromkeys(str(r.get("suite")) for r in completed if r.get("suite")))
    title = title or ("dmlbench report" + (f": {suites}" if suites else ""))
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    summary = (f"{len(completed)} completed runs from {', '.join(str(d) for d in dirs)}; "
               f"generated {now}.")
    top = ""
    if warnings:
        top = ('<div class="box" id="warnings"><strong>Read before comparing:</strong><ul>'
               + "".join(f"<li>{_e(w)}</li>" for w in dict.fromkeys(warnings)) + "</ul></div>")
    return page(title, summary, nav, top, sections)


def write_html_report(runs_dir: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]",
                      out_path: "str | os.PathLike[str] | None" = None, *,
                      published: pd.DataFrame | None = None,
                      which: Literal["best", "final"] = "best", ci: bool | None = None,
                      order: Sequence[str] | None = None,
                      studies: Mapping[str, Any] | None = None) -> Path:
    """Write one self-contained HTML report of the run records under `runs_dir` (a folder or
    a list of folders, e.g. a suite's OUT and OUT-mlrc) to `out_path` (default:
    FIRST_FOLDER/report.html); return its path.

    `published`: published numbers (as `results.tables.add_published` takes them); `which`:
    the "best" or "final" evaluation of conventional runs; `ci`: 95% CIs instead of standard
    deviations (default: CIs for MLRC tables only); `order`: method names, rows in that order;
    `studies`: Optuna studies by name (default: those in studies.db files under the folders).
    """
    text = render_html_report(runs_dir, published=published, which=which, ci=ci, order=order,
                              studies=studies)
    first = Path(runs_dir) if isinstance(runs_dir, (str, os.PathLike)) else Path(list(runs_dir)[0])
    out = Path(out_path) if out_path is not None else first / "report.html"
    atomic_write_text(out, text)
    return out
