"""The report's sortable results tables, one per protocol and dataset, with their warnings
(test-selected numbers, unequal budgets) beside the numbers."""
from __future__ import annotations

import math

import pandas as pd

from dmlbench.results import formats as F
from dmlbench.results.report_page import esc as _e
from dmlbench.results.report_page import slug

__all__ = ["table_html"]

_TEST_FLAG = ('<span class="warn test-selected" title="selected on the test set: '
              'the best epoch was chosen on the test classes (conventional '
              'protocol), an optimistic number" aria-label="selected on the test '
              'set">⚠test</span>')


def _num(x: float, scale: float = 100.0) -> str:
    return "" if pd.isna(x) else repr(scale * float(x))


def _budget_flag(b: tuple) -> str:
    ratio, mine, theirs, base = b
    return (f'<span class="warn budget" title="trained with {ratio:.3g}× the '
            f"budget of {_e(base)} (epochs × iterations per epoch × batch: "
            f"{_e(mine)} against {_e(theirs)}): the Δ measures budget as well as "
            f'method">⚠ budget ×{ratio:.3g}</span>')


def _row(table: pd.DataFrame, method: str, d: str, n: int, cols: list, spread: str,
         card: str | None, test_selected: bool, b: tuple | None) -> str:
    """One method's <tr> in the table of dataset `d`."""
    name = _e(method)
    name = f'<a href="#{card}">{name}</a>' if card else name
    flags = _budget_flag(b) if b is not None else ""
    cells = [f'<td class="method" data-sort="{_e(method)}">{name}{flags}</td>',
             f'<td class="num" data-sort="{n}">{n}</td>']
    for m, _, s in cols:
        text = F.cell(table, method, d, m, s, spread, latex=False)
        stat = "mean" if s == "value" else s
        raw = table.loc[method, (d, m, stat)] if (d, m, stat) in table.columns else math.nan
        cls = "num"
        if s in ("delta", "diff") and pd.notna(raw) and round(100 * raw, 2) != 0:
            cls += " pos" if raw > 0 else " neg"
        extra = ""
        if s == "value" and test_selected:
            extra = _TEST_FLAG
        if s == "delta" and b is not None and text:
            extra = f'<span class="warn budget" title="budget ratio">×{b[0]:.3g}</span>'
        spread_v = table.loc[method, (d, m, spread)] if s == "value" else math.nan
        attrs = (f'data-metric="{_e(m)}" data-stat="{_e(stat)}" '
                 f'data-sort="{_num(raw)}"')
        if s == "value":
            attrs += f' data-spread="{_num(spread_v)}" data-n="{n}"'
        cells.append(f'<td class="{cls}" {attrs}>{_e(text)}{extra}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


def table_html(table: pd.DataFrame, protocol: str, groups: dict[tuple, list[dict]],
               test_selected: set[tuple[str, str]], budget: dict[tuple[str, str], tuple],
               cards: dict[tuple, str]) -> str:
    """The sortable HTML tables (one per dataset) of a protocol's comparison `table`."""
    datasets, metrics, spread, has_delta = F.layout(table)
    parts = []
    for d in datasets:
        cols = F.cell_columns(table, d, metrics, has_delta)
        head = ['<th data-col="method">method</th>', '<th class="num" data-col="runs">runs</th>']
        head += [f'<th class="num" data-col="{_e(s)}:{_e(m)}">{_e(h)}</th>' for m, h, s in cols]
        rows = []
        for method in table.index:
            n = int(table.loc[method, (d, slice(None), "n")].max())
            if n == 0:
                continue
            rows.append(_row(table, method, d, n, cols, spread,
                             cards.get((protocol, str(method), d)),
                             (str(method), d) in test_selected, budget.get((str(method), d))))
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
            f'id="table-{slug(protocol, d)}"><thead><tr>{"".join(head)}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
            f'<p class="legend muted">{_e(" ".join(legend))}</p>')
    return "\n".join(parts)
