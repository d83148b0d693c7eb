"""The page of the HTML report: its inline CSS, sorting script and Content-Security-Policy,
the escaping, anchor and figure helpers every part of it uses, and the page shell."""
from __future__ import annotations

import base64
import html
import re
from typing import Any

from dmlbench.results import plots

PROTOCOL_TITLES = {"conventional": "Conventional protocol", "mlrc": "MLRC protocol"}


def esc(x: Any) -> str:
    """`x` as text, HTML-escaped (quotes too)."""
    return html.escape(str(x), quote=True)


def slug(*parts: Any) -> str:
    """An HTML id made of `parts`."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "--".join(str(p) for p in parts)).strip("-")


def protocol_title(protocol: str) -> str:
    """The section title of a protocol ("Conventional protocol"), else its name."""
    return PROTOCOL_TITLES.get(protocol, protocol)


def data_uri(png: bytes) -> str:
    """A PNG as a data: URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(fig: Any, alt: str, caption: str) -> str:
    """A matplotlib figure as an inline <figure> (the figure is cleared)."""
    try:
        png = plots.png_bytes(fig)
    finally:
        fig.clear()
    return (f'<figure><img src="{data_uri(png)}" alt="{esc(alt)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


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


def page(title: str, summary: str, nav: list[str], top: str, sections: list[str]) -> str:
    """The whole self-contained HTML document."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{esc(title)}</h1><p class=\"meta\">{esc(summary)}</p><nav>{''.join(nav)}</nav>"
        f"{top}{''.join(sections)}</main><script>{_JS}</script></body></html>\n")
