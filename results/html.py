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
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import pandas as pd

from dmlbench.bench.errors import UserError
from dmlbench.bench.records import atomic_write_text, read_records
from dmlbench.results import plots
from dmlbench.results import tables as T

__all__ = ["write_html_report", "render_html_report", "run_budget", "markdown_to_html"]

log = logging.getLogger(__name__)

PROTOCOL_TITLES = {"conventional": "Conventional protocol", "mlrc": "MLRC protocol"}
BUDGET_TOLERANCE = 0.01  # relative difference of budgets below which they count as equal


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


# ----------------------------------------------------------------------------- records


def run_budget(rec: dict[str, Any]) -> dict[str, Any]:
    """The planned training budget of a run: epochs, iterations per epoch (configured, or
    measured from its evaluations, or train images // batch size; None if unknown), batch
    size, and their product "images" (None if iterations are unknown)."""
    t = (rec.get("config") or {}).get("train") or {}
    epochs, batch = t.get("epochs"), t.get("batch_size")
    ipe = t.get("iterations_per_epoch")
    if not ipe:
        for e in reversed(rec.get("evaluations") or []):
            if e.get("epoch") and e.get("iteration"):
                ipe = round(e["iteration"] / e["epoch"])
                break
    if not ipe and rec.get("num_train_images") and batch:
        ipe = max(1, int(rec["num_train_images"]) // int(batch))
    images = epochs * ipe * batch if epochs and ipe and batch else None
    return {"epochs": epochs, "iterations_per_epoch": ipe or None, "batch_size": batch,
            "images": images}


def _group_budget(recs: list[dict[str, Any]]) -> tuple[float | None, str]:
    budgets = [run_budget(r) for r in recs]
    images = [b["images"] for b in budgets if b["images"]]
    if not images:
        return None, "unknown"
    text = " / ".join(dict.fromkeys(
        f"{b['epochs']} epochs × {b['iterations_per_epoch']} it × {b['batch_size']}"
        for b in budgets if b["images"]))
    return float(sum(images) / len(images)), text


def _selection(recs: list[dict[str, Any]], which: str) -> tuple[str, bool]:
    """(how the reported number was selected, whether on the test set)."""
    r = recs[0]
    if r.get("protocol") == "mlrc":
        t = (r.get("config") or {}).get("train") or {}
        return ("best epoch of each fold on its validation classes (MAP@R, early stopping "
                f"patience {t.get('patience')}); test: the concatenated embedding of the fold "
                "models", False)
    if which == "final":
        return "last evaluation", False
    best = r.get("best") or {}
    n = len(r.get("evaluations") or [])
    sel = best.get("selection_set")
    by = best.get("selected_by", "?")
    if sel == "test":
        return (f"best of {n} evaluations by {T.short_name(str(by))} on the test set", True)
    if sel == "val":
        return f"best of {n} evaluations by {T.short_name(str(by))} on validation", False
    return f"best evaluation by {by} (selection set not recorded)", False


def _key(rec: dict[str, Any]) -> tuple[str, str, str]:
    return (str(rec.get("protocol")), str(rec.get("method")), str(rec.get("dataset")))


# ----------------------------------------------------------------------------- studies


def _find_studies(dirs: list[Path], names: set[str],
                  given: Mapping[str, Any] | None) -> dict[str, Any]:
    found: dict[str, Any] = dict(given or {})
    wanted = names - set(found)
    if not wanted:
        return found
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a dependency
        return found
    for d in dirs:
        for db in sorted(d.rglob("studies.db")):
            try:
                storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
                present = {s.study_name for s in storage.get_all_studies()}
                for name in sorted(wanted & present):
                    found[name] = optuna.load_study(study_name=name, storage=storage)
            except Exception as e:  # a foreign or locked database: the report goes on
                log.warning("cannot read studies from %s: %s", db, e)
            wanted = names - set(found)
            if not wanted:
                return found
    return found


def _search_hours(study: Any) -> float | None:
    total = 0.0
    seen = False
    for t in study.get_trials(deepcopy=False):
        timing = t.user_attrs.get("timing")
        if isinstance(timing, dict) and isinstance(timing.get("trial_s"), (int, float)):
            total += float(timing["trial_s"])
            seen = True
        elif t.datetime_start and t.datetime_complete:
            total += (t.datetime_complete - t.datetime_start).total_seconds()
            seen = True
    return total / 3600.0 if seen else None


# ----------------------------------------------------------------------------- markdown


_IMG = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _inline(text: str, base: Path | None) -> str:
    out, pos = [], 0
    for m in _IMG.finditer(text):
        out.append(_BOLD.sub(r"<strong>\1</strong>", _e(text[pos:m.start()])))
        path = (base / m.group(2)) if base is not None else None
        if path is not None and path.suffix.lower() == ".png" and path.is_file():
            out.append(f'<img src="{_data_uri(path.read_bytes())}" alt="{_e(m.group(1))}">')
        else:
            out.append(f"<em>[figure {_e(m.group(2))} not found]</em>")
        pos = m.end()
    out.append(_BOLD.sub(r"<strong>\1</strong>", _e(text[pos:])))
    return "".join(out)


def markdown_to_html(md: str, base: Path | None = None, *, shift: int = 0) -> str:
    """The Markdown subset dmlbench writes (headings, paragraphs, **bold**, pipe tables, "- "
    lists, images of PNG files under `base`, inlined) as HTML; everything else escaped.
    `shift` lowers heading levels."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
            continue
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            level = min(6, len(m.group(1)) + shift)
            out.append(f"<h{level}>{_inline(m.group(2), base)}</h{level}>")
            i += 1
            continue
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i].rstrip())
                i += 1
            out.append(_md_table(block, base))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:], base)}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        para = [line]
        i += 1
        while i < len(lines) and lines[i].strip() and not re.match(r"(#|\||- )", lines[i]):
            para.append(lines[i].rstrip())
            i += 1
        out.append(f"<p>{_inline(' '.join(para), base)}</p>")
    return "\n".join(out)


def _md_cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def _md_table(block: list[str], base: Path | None) -> str:
    head = _md_cells(block[0])
    aligns = ["right" if c.endswith(":") and not c.startswith(":") else "left"
              for c in _md_cells(block[1])] if len(block) > 1 else []
    rows = [_md_cells(line) for line in block[2:]]
    th = "".join(f"<th>{_inline(h, base)}</th>" for h in head)
    body = "".join("<tr>" + "".join(
        f'<td class="{"num" if (aligns[j] if j < len(aligns) else "") == "right" else ""}">'
        f"{_inline(c, base)}</td>" for j, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="plain"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


# ----------------------------------------------------------------------------- the page


_CSS = """
:root { --fg: #1d232a; --muted: #5b6570; --line: #d8dde3; --warn: #9a5b00; --warnbg: #fff4e0;
        --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); margin: 0; background: #f6f7f9; }
main { max-width: 1280px; margin: 0 auto; padding: 20px 28px 60px; background: #fff; }
h1 { font-size: 24px; margin: 4px 0 6px; }
h2 { font-size: 20px; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 6px; }
h4, h5, h6 { font-size: 14px; margin: 16px 0 4px; }
p.meta, .muted { color: var(--muted); }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 14px; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.results thead th { background: #eef1f5; position: sticky; top: 0; cursor: pointer;
                         user-select: none; }
table.results thead th:hover { background: #e1e7ee; }
table.results thead th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
table.results thead th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
table.results tbody tr:nth-child(even) { background: #fafbfc; }
table.plain th { background: #eef1f5; text-align: left; }
td.method a { color: var(--fg); text-decoration: none; border-bottom: 1px dotted var(--muted); }
.warn { color: var(--warn); font-size: 11px; font-weight: 600; margin-left: 4px; cursor: help; }
.pos { color: #17702f; } .neg { color: #b3261e; }
.box { background: var(--warnbg); border-left: 4px solid #e0a030; padding: 8px 14px;
       margin: 10px 0 16px; }
.box ul { margin: 4px 0; padding-left: 20px; }
figure { margin: 10px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
.report img { max-width: 100%; height: auto; }
details.card { border: 1px solid var(--line); border-radius: 6px; margin: 8px 0;
               padding: 6px 12px; }
details.card summary { cursor: pointer; font-weight: 600; }
details.card table { margin-top: 8px; }
details.card th { text-align: left; color: var(--muted); font-weight: 500; vertical-align: top; }
details.card td { white-space: normal; }
p.legend { font-size: 12px; margin: -6px 0 12px; }
.imp { border: 1px solid var(--line); border-radius: 6px; padding: 4px 16px; margin: 12px 0; }
"""

_JS = """
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-sort');
    if (v === null) { v = cell.textContent.trim(); }
    var n = parseFloat(v);
    return (v !== '' && !isNaN(n) && isFinite(v)) ? {n: n} : {s: v.toLowerCase()};
  }
  function compare(a, b) {
    if (a.n !== undefined && b.n !== undefined) { return a.n - b.n; }
    if (a.n !== undefined) { return -1; }
    if (b.n !== undefined) { return 1; }
    return a.s < b.s ? -1 : (a.s > b.s ? 1 : 0);
  }
  function openCard(id) {
    var d = document.getElementById(id);
    if (d && d.tagName === 'DETAILS') { d.open = true; }
  }
  document.querySelectorAll('a[href^="#card-"]').forEach(function (a) {
    a.addEventListener('click', function () { openCard(a.getAttribute('href').slice(1)); });
  });
  if (location.hash) { openCard(location.hash.slice(1)); }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.setAttribute('tabindex', '0');
      function sort() {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var c = compare(key(r1.cells[col]), key(r2.cells[col]));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener('click', sort);
      th.addEventListener('keydown', function (ev) {
        if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); sort(); }
      });
    });
  });
})();
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")


def _slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "--".join(str(p) for p in parts)).strip("-")


def _figure(fig: Any, alt: str, caption: str) -> str:
    try:
        png = plots.png_bytes(fig)
    finally:
        fig.clear()
    return (f'<figure><img src="{_data_uri(png)}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _num(x: float, scale: float = 100.0) -> str:
    return "" if pd.isna(x) else repr(scale * float(x))


def _table_html(table: pd.DataFrame, protocol: str, groups: dict[tuple, list[dict]],
                test_selected: set[tuple[str, str]], budget: dict[tuple[str, str], tuple],
                cards: dict[tuple, str]) -> str:
    datasets, metrics, spread, has_delta = T._layout(table)
    parts = []
    for d in datasets:
        cols = T._cell_columns(table, d, metrics, has_delta)
        head = ['<th data-col="method">method</th>', '<th class="num" data-col="runs">runs</th>']
        head += [f'<th class="num" data-col="{_e(s)}:{_e(m)}">{_e(h)}</th>' for m, h, s in cols]
        rows = []
        for method in table.index:
            n = int(table.loc[method, (d, slice(None), "n")].max())
            if n == 0:
                continue
            card = cards.get((protocol, str(method), d))
            name = _e(method)
            name = f'<a href="#{card}">{name}</a>' if card else name
            flags = ""
            b = budget.get((str(method), d))
            if b is not None:
                ratio, mine, theirs, base = b
                flags = (f'<span class="warn budget" title="trained with {ratio:.3g}× the '
                         f"budget of {_e(base)} (epochs × iterations per epoch × batch: "
                         f"{_e(mine)} against {_e(theirs)}): the Δ measures budget as well as "
                         f'method">⚠ budget ×{ratio:.3g}</span>')
            cells = [f'<td class="method" data-sort="{_e(method)}">{name}{flags}</td>',
                     f'<td class="num" data-sort="{n}">{n}</td>']
            for m, _, s in cols:
                text = T._cell(table, method, d, m, s, spread, latex=False)
                stat = "mean" if s == "value" else s
                raw = table.loc[method, (d, m, stat)] if (d, m, stat) in table.columns else math.nan
                cls = "num"
                if s in ("delta", "diff") and pd.notna(raw) and round(100 * raw, 2) != 0:
                    cls += " pos" if raw > 0 else " neg"
                extra = ""
                if s == "value" and (str(method), d) in test_selected:
                    extra = ('<span class="warn test-selected" title="selected on the test set: '
                             'the best epoch was chosen on the test classes (conventional '
                             'protocol), an optimistic number" aria-label="selected on the test '
                             'set">⚠test</span>')
                if s == "delta" and b is not None and text:
                    extra = f'<span class="warn budget" title="budget ratio">×{b[0]:.3g}</span>'
                spread_v = table.loc[method, (d, m, spread)] if s == "value" else math.nan
                attrs = (f'data-metric="{_e(m)}" data-stat="{_e(stat)}" '
                         f'data-sort="{_num(raw)}"')
                if s == "value":
                    attrs += f' data-spread="{_num(spread_v)}" data-n="{n}"'
                cells.append(f'<td class="{cls}" {attrs}>{_e(text)}{extra}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        legend = []
        if any(dd == d for _, dd in test_selected):
            legend.append("⚠test: selected on the test set (the best of several evaluations, "
                          "chosen on the test classes: optimistic).")
        if any(dd == d for _, dd in budget):
            legend.append("⚠ budget ×r: trained with r times the budget of its base row "
                          "(epochs × iterations per epoch × batch size).")
        legend.append("Click a column header to sort; a method name opens its settings.")
        parts.append(
            f"<h3>{_e(d)}</h3><div class=\"scroll\"><table class=\"results sortable\" "
            f'data-protocol="{_e(protocol)}" data-dataset="{_e(d)}" '
            f'id="table-{_slug(protocol, d)}"><thead><tr>{"".join(head)}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
            f'<p class="legend muted">{_e(" ".join(legend))}</p>')
    return "\n".join(parts)


def _distinct(values: Iterable[Any]) -> str:
    vals = [v for v in dict.fromkeys(_e(x if x is not None else "—") for x in values)]
    return " / ".join(vals) if vals else "—"


def _card(key: tuple[str, str, str], recs: list[dict[str, Any]], card_id: str, which: str,
          studies: Mapping[str, Any]) -> str:
    protocol, method, dataset = key
    cfgs = [r.get("config") or {} for r in recs]

    def get(sec: str, k: str) -> list[Any]:
        return [(c.get(sec) or {}).get(k) for c in cfgs]

    def yes(v: Any) -> str:
        return "yes" if v is True else "no" if v is False else str(v)

    rows: list[tuple[str, str]] = []
    trunk = [f"{(c.get('model') or {}).get('trunk')}"
             + (" (pretrained)" if (c.get("model") or {}).get("pretrained") else "")
             + (f", width {(c.get('model') or {}).get('width')}"
                if (c.get("model") or {}).get("trunk") == "smallcnn" else "") for c in cfgs]
    rows.append(("trunk", _distinct(trunk)))
    rows.append(("embedding size", _distinct(get("model", "embedding_size"))))
    rows.append(("pooling", _distinct(get("model", "pooling"))))
    fbn = [yes((c.get("model") or {}).get("freeze_bn"))
           + (" (affine too)" if (c.get("model") or {}).get("freeze_bn_affine") else "")
           for c in cfgs]
    rows.append(("frozen BatchNorm", _distinct(fbn)))
    img = [f"{(c.get('dataset') or {}).get('image_size')} px, transforms "
           f"{(c.get('dataset') or {}).get('transforms')}, augment "
           f"{yes((c.get('train') or {}).get('augment'))}" for c in cfgs]
    rows.append(("image size and transforms", _distinct(img)))
    bm = [f"{(c.get('train') or {}).get('batch_size')}, m per class "
          f"{(c.get('train') or {}).get('m_per_class') or 'method default'}" for c in cfgs]
    rows.append(("batch size, m per class", _distinct(bm)))
    opt = []
    for c in cfgs:
        t = c.get("train") or {}
        lrs = [f"lr {t.get('lr')}"]
        if t.get("embedder_lr"):
            lrs.append(f"embedder lr {t.get('embedder_lr')}")
        lrs += [f"{k} {v}" for k, v in ((c.get("method") or {}).get("params") or {}).items()
                if "lr" in k]
        opt.append(f"{t.get('optimizer')}, " + ", ".join(lrs) + f", weight decay "
                   f"{t.get('weight_decay')}, schedule {t.get('schedule')}")
    rows.append(("optimiser and learning rates", _distinct(opt)))
    params = [", ".join(f"{k}={v}" for k, v in ((c.get("method") or {}).get("params") or {})
                        .items()) or "defaults" for c in cfgs]
    rows.append(("method parameters", _distinct(params)))
    budgets = []
    for r in recs:
        b = run_budget(r)
        t = (r.get("config") or {}).get("train") or {}
        text = (f"{b['epochs']} epochs × {b['iterations_per_epoch'] or '?'} iterations × batch "
                f"{b['batch_size']}, evaluated every {t.get('eval_every')}"
                + (f", patience {t.get('patience')}" if t.get("patience") is not None else ""))
        budgets.append(text)
    rows.append(("epochs and iterations", _distinct(budgets)))
    ran = [r.get("epochs_run") for r in recs if r.get("epochs_run") is not None]
    if ran:
        rows.append(("epochs run", _distinct(ran)))
    selection, on_test = _selection(recs, which)
    rows.append(("selection", _e(selection) + (
        ' <span class="warn test-selected">⚠ selected on the test set</span>' if on_test else "")))
    rows.append(("seeds", _e(", ".join(str(r.get("seed")) for r in recs))))
    devices = [(r.get("device") or f"{(r.get('config') or {}).get('train', {}).get('device')}"
                + ("" if r.get("device") else " (configured; the device used is not recorded)"))
               + (f" × {_processes(r)} processes" if _processes(r) > 1 else "") for r in recs]
    rows.append(("device", _distinct(devices)))
    # device-hours: wall time × the processes (one device each) that ran the fit
    hours = sum(float(r.get("wall_time_s") or 0.0) * _processes(r) for r in recs) / 3600.0
    kind = _hour_kind(recs)
    text = f"{hours:.3f} {kind} ({len(recs)} run{'s' if len(recs) != 1 else ''}"
    if protocol == "mlrc":
        text += ", reproductions only"
        names = {(r.get("mlrc") or {}).get("study") for r in recs}
        search = [_search_hours(studies[n]) for n in names if n in studies]
        if search and all(s is not None for s in search):
            text += f"; search: {sum(search):.3f} h of trials"
    rows.append(("measured time", _e(text + ")")))
    if protocol == "mlrc":
        info = [(r.get("mlrc") or {}) for r in recs]
        rows.append(("MLRC study", _distinct(i.get("study") for i in info)))
        rows.append(("best parameters", _distinct(
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in (i.get("best_params") or {}).items()) for i in info)))
        rows.append(("best search value (val MAP@R)", _distinct(
            f"{100 * i['best_value']:.2f}" if isinstance(i.get("best_value"), (int, float))
            else None for i in info)))
    versions = [", ".join(f"{k} {v}" for k, v in sorted((r.get("versions") or {}).items()))
                for r in recs]
    rows.append(("package versions", _distinct(versions)))
    rows.append(("git commit", _distinct(r.get("git_commit") or "not recorded" for r in recs)))
    rows.append(("suite", _distinct(r.get("suite") for r in recs)))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return (f'<details class="card" id="{card_id}" data-method="{_e(method)}" '
            f'data-dataset="{_e(dataset)}" data-protocol="{_e(protocol)}"><summary>'
            f"{_e(method)} — {_e(dataset)} — {_e(PROTOCOL_TITLES.get(protocol, protocol))}"
            f"</summary><table>{body}</table></details>")


def _processes(rec: dict[str, Any]) -> int:
    n = rec.get("world_size")
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def _hour_kind(recs: list[dict[str, Any]]) -> str:
    devs = {str(r.get("device") or ((r.get("config") or {}).get("train") or {}).get("device"))
            for r in recs}
    if all(d.startswith("cuda") for d in devs):
        return "GPU-hours"
    if all(d.startswith("cpu") for d in devs):
        return "CPU-hours"
    return "hours"


def _budget_flags(table: pd.DataFrame, groups: dict[tuple, list[dict]], protocol: str
                  ) -> dict[tuple[str, str], tuple]:
    """{(variant, dataset): (ratio, its budget, base budget, base)} where they differ."""
    flags = {}
    datasets = list(dict.fromkeys(table.columns.get_level_values("dataset")))
    for variant, base in (table.attrs.get("base") or {}).items():
        for d in datasets:
            mine = groups.get((protocol, variant, d))
            theirs = groups.get((protocol, base, d))
            if not mine or not theirs:
                continue
            (a, at), (b, bt) = _group_budget(mine), _group_budget(theirs)
            if a and b and abs(a / b - 1.0) > BUDGET_TOLERANCE:
                flags[(variant, d)] = (a / b, at, bt, base)
    return flags


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
    completed = [r for r in records if r.get("status") == "completed"]
    groups: dict[tuple, list[dict]] = {}
    for r in completed:
        groups.setdefault(_key(r), []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: (r.get("seed") if isinstance(r.get("seed"), int) else -1))
    study_names = {(r.get("mlrc") or {}).get("study") for r in completed
                   if r.get("protocol") == "mlrc"} - {None}
    found = _find_studies(dirs, set(study_names), studies)

    protocols = [p for p in ("conventional", "mlrc") if (df["protocol"] == p).any()]
    protocols += [p for p in dict.fromkeys(df["protocol"].dropna()) if p not in protocols]
    card_ids = {k: "card-" + _slug(*k) for k in groups}
    sections, warnings, nav = [], [], []
    card_html = []
    for protocol in protocols:
        sub = df[df["protocol"] == protocol].copy()
        sub.attrs.update(df.attrs)
        use_ci = (protocol == "mlrc") if ci is None else ci
        table = T.build_table(sub, ci=use_ci, published=published, order=order)
        datasets = list(dict.fromkeys(table.columns.get_level_values("dataset")))
        test_selected = set()
        for (p, m, d), g in groups.items():
            if p == protocol and _selection(g, which)[1]:
                test_selected.add((m, d))
        budget = _budget_flags(table, groups, protocol)
        sid = "protocol-" + _slug(protocol)
        nav.append(f'<a href="#{sid}">{_e(PROTOCOL_TITLES.get(protocol, protocol))}</a>')
        body = [f'<section id="{sid}"><h2>{_e(PROTOCOL_TITLES.get(protocol, protocol))}</h2>',
                f'<p class="meta">{_e(T._caption(table, *T._layout(table)[2:]))}</p>']
        head = PROTOCOL_TITLES.get(protocol, protocol)
        if test_selected:
            warnings.append(f"{head}: the numbers marked ⚠test are the best of several "
                            "evaluations, chosen on the test classes (this protocol has no "
                            "validation set): they are optimistic and not comparable with "
                            "numbers selected on validation data.")
        for (variant, d), (ratio, mine, theirs, base) in budget.items():
            warnings.append(f"{head}: {variant} on {d} was trained with {ratio:.3g}× the budget "
                            f"of its base {base} ({mine} against {theirs}; epochs × iterations "
                            "per epoch × batch size): its Δ measures budget as well as method.")
        note = table.attrs.get("published_note")
        if note:
            warnings.append(f"{head}: {note}")
        body.append(_table_html(table, protocol, groups, test_selected, budget, card_ids))
        method_order = [str(m) for m in table.index]
        figs = []
        for d in datasets:
            if protocol == "conventional":
                fig = plots.learning_curves(completed, d, order=method_order)
                if fig is not None:
                    figs.append(_figure(fig, f"learning curves on {d}",
                                        "Test metrics per evaluation epoch: mean over seeds, band "
                                        "± 1 std; dashed: a '+method' variant in its base's "
                                        "colour."))
            elif protocol == "mlrc":
                fig = plots.fold_test_scores(completed, d, order=method_order)
                if fig is not None:
                    figs.append(_figure(fig, f"MLRC test scores per fold on {d}",
                                        "Each fold model's test metric and the separated mean and "
                                        "concatenated embedding, per reproduction (points) and "
                                        "their mean (bars)."))
        if protocol == "mlrc":
            by_method = sorted(((method_order.index(str(r["method"]))
                                 if str(r["method"]) in method_order else len(method_order),
                                 (r.get("mlrc") or {}).get("study")) for r in completed
                                if r.get("protocol") == protocol
                                and (r.get("mlrc") or {}).get("study")), key=lambda x: x[0])
            for name in dict.fromkeys(n for _, n in by_method):
                study = found.get(name)
                if study is None:
                    continue
                has_report = any((d / name / "importance" / "importance.md").is_file()
                                 for d in dirs)
                if not has_report:
                    figs.append(_figure(plots.optimisation_history(study),
                                        f"optimisation history of {name}",
                                        f"Optimisation history of study {name}."))
                curves = plots.fold_validation_curves(study)
                if curves is not None:
                    figs.append(_figure(curves, f"validation curves of {name}",
                                        f"Validation MAP@R per fold and epoch of study {name}."))
                else:
                    figs.append(f'<p class="muted">Study {_e(name)}: no per-fold validation '
                                "curves (its trials report no intermediate values).</p>")
        if figs:
            body.append("<h3>Figures</h3>" + "".join(figs))
        body.append("</section>")
        sections.append("\n".join(body))
        rank = {m: i for i, m in enumerate(method_order)}
        keys = sorted((k for k in groups if k[0] == protocol),
                      key=lambda k: (rank.get(k[1], len(rank)), datasets.index(k[2])
                                     if k[2] in datasets else len(datasets)))
        for key in keys:
            card_html.append(_card(key, groups[key], card_ids[key], which, found))

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
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1><p class=\"meta\">{_e(summary)}</p><nav>{''.join(nav)}</nav>"
        f"{top}{''.join(sections)}</main><script>{_JS}</script></body></html>\n")


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
