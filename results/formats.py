"""The comparison table as text: Markdown, LaTeX and CSV (in percent), and the layout, caption
and cells that the HTML report shares."""
from __future__ import annotations

import math

import pandas as pd

from dmlbench.bench.errors import UserError
from dmlbench.results.metric_names import short_name

__all__ = ["FORMATS", "format_table", "escape_latex", "layout", "caption", "cell_columns", "cell"]

FORMATS = ("markdown", "csv", "latex")


def _pct(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{100.0 * x:.2f}"


def _signed(x: float) -> str:
    """Signed percent with 2 decimals; blank where undefined (rows without a base)."""
    return "" if pd.isna(x) else f"{round(100.0 * x, 2) + 0.0:+.2f}"


def escape_latex(text: str) -> str:
    """`text` safe in LaTeX text mode (\\ & % $ # _ { } ~ ^ escaped; "+" is literal there)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
            "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in str(text))


def layout(table: pd.DataFrame) -> tuple[list[str], list[str], str, bool]:
    """(datasets, metrics, spread stat "std" or "ci95", whether any row has a delta)."""
    datasets = list(dict.fromkeys(table.columns.get_level_values("dataset")))
    metrics = list(dict.fromkeys(table.columns.get_level_values("metric")))
    spread = "ci95" if "ci95" in table.columns.get_level_values("stat") else "std"
    has_delta = bool(table.loc[:, (slice(None), slice(None), "delta")].notna().to_numpy().any())
    return datasets, metrics, spread, has_delta


def caption(table: pd.DataFrame, spread: str, has_delta: bool) -> str:
    """The line under a table saying what its numbers are."""
    what = ("mean ± t-based 95% CI half-width" if spread == "ci95"
            else "mean ± sample std (ddof=1)")
    src = f"each run's '{table.attrs['which']}' evaluation" if table.attrs.get("which") else "runs"
    if "mlrc" in (table.attrs.get("protocols") or []):
        src += " (MLRC runs: concatenated test evaluation)"
    text = f"Metrics in %, {what} over seeds, from {src}."
    if has_delta:
        text += " Δ: difference of the mean to the base method's mean."
    if "published" in table.columns.get_level_values("stat"):
        text += " pub.: published value; diff: our mean minus published."
    return text


def cell_columns(table: pd.DataFrame, dataset: str, metrics: list[str],
                  has_delta: bool) -> list[tuple[str, str, str]]:
    """(metric, header, stat) of each column shown for `dataset`; stat "value": mean ± spread.
    Metrics with no value for `dataset` are left out."""
    cols = []
    for metric in metrics:
        if not table[(dataset, metric, "mean")].notna().any():
            continue  # e.g. R@10 on a dataset evaluated at R@1,2,4,8
        name = short_name(metric)
        cols.append((metric, name, "value"))
        if has_delta:
            cols.append((metric, f"Δ {name}", "delta"))
        if (dataset, metric, "published") in table.columns:
            cols += [(metric, f"pub. {name}", "published"), (metric, f"diff {name}", "diff")]
    return cols


def cell(table: pd.DataFrame, method: str, dataset: str, metric: str, stat: str, spread: str,
          latex: bool) -> str:
    """The text of one cell: mean ± spread ("value"), published, delta or diff."""
    def at(s: str) -> float:
        return table.loc[method, (dataset, metric, s)]

    if stat == "value":
        mean, sp = at("mean"), at(spread)
        if pd.isna(mean):
            return "n/a"
        if latex:
            return (f"${_pct(mean)} \\pm {_pct(sp)}$" if pd.notna(sp)
                    else f"${_pct(mean)} \\pm$ n/a")
        return f"{_pct(mean)} ± {_pct(sp)}"
    if stat == "published":
        return "" if pd.isna(at(stat)) else _pct(at(stat))
    text = _signed(at(stat))
    return f"${text}$" if latex and text else text


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _markdown(table: pd.DataFrame) -> str:
    datasets, metrics, spread, has_delta = layout(table)
    lines = [caption(table, spread, has_delta)]
    for d in datasets:
        cells = cell_columns(table, d, metrics, has_delta)
        lines += ["", f"### {_md_escape(d)}", ""]
        header = ["method", "runs"] + [_md_escape(h) for _, h, _ in cells]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":---", "---:"] + ["---:"] * len(cells)) + "|")
        for method in table.index:
            n = int(table.loc[method, (d, slice(None), "n")].max())
            if n == 0:
                continue
            row = [_md_escape(method), str(n)] + [
                cell(table, method, d, m, s, spread, latex=False) for m, _, s in cells]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _latex(table: pd.DataFrame) -> str:
    datasets, metrics, spread, has_delta = layout(table)
    groups = {d: cell_columns(table, d, metrics, has_delta) for d in datasets}
    width = sum(len(g) for g in groups.values())
    text = caption(table, spread, has_delta).replace("±", "+-").replace("Δ", "Delta")
    lines = [f"% {text}", "\\begin{tabular}{l" + "r" * width + "}", "\\toprule"]
    head, rules, start = [""], [], 2
    for d, g in groups.items():
        head.append(f"\\multicolumn{{{len(g)}}}{{c}}{{{escape_latex(d)}}}")
        rules.append(f"\\cmidrule(lr){{{start}-{start + len(g) - 1}}}")
        start += len(g)
    lines += [" & ".join(head) + " \\\\", " ".join(rules)]
    sub = ["Method"] + [escape_latex(h).replace("Δ", "$\\Delta$")
                        for g in groups.values() for _, h, _ in g]
    lines += [" & ".join(sub) + " \\\\", "\\midrule"]
    for method in table.index:
        row = [escape_latex(method)] + [cell(table, method, d, m, s, spread, latex=True)
                                        for d, g in groups.items() for m, _, s in g]
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _csv(table: pd.DataFrame) -> str:
    datasets, metrics, spread, _ = layout(table)
    base = table.attrs.get("base", {})
    extra = [s for s in ("published", "diff") if s in table.columns.get_level_values("stat")]
    rows = []
    for method in table.index:
        for d in datasets:
            for m in metrics:
                n = table.loc[method, (d, m, "n")]
                if not n > 0:
                    continue
                row = {"method": method, "base_method": base.get(method), "dataset": d,
                       "metric": m, "n": int(n)}
                for s in (("mean", spread, "delta") + tuple(extra)):
                    v = table.loc[method, (d, m, s)] if (d, m, s) in table.columns else math.nan
                    row[s] = 100.0 * v
                rows.append(row)
    cols = ["method", "base_method", "dataset", "metric", "n", "mean", spread, "delta"] + extra
    return pd.DataFrame(rows, columns=cols).to_csv(index=False)


def format_table(table: pd.DataFrame, fmt: str) -> str:
    """The table as text: "markdown" (one GitHub pipe table per dataset), "latex" (booktabs
    tabular, datasets as column groups) or "csv" (one row per method, dataset and metric with
    numeric columns n, mean, std|ci95, delta[, published, diff], in percent)."""
    writers = {"markdown": _markdown, "csv": _csv, "latex": _latex}
    if fmt not in writers:
        raise UserError(f"unknown table format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return writers[fmt](table)
