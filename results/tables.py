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
"""
from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import pandas as pd
from scipy import stats as _stats

from dmlbench.bench.errors import UserError
from dmlbench.bench.records import atomic_write_text, read_records

__all__ = ["ID_COLUMNS", "load_runs", "default_metrics", "comparison_table", "add_published",
           "published_metric", "build_table", "format_table", "write_tables", "skipped_summary",
           "short_name", "escape_latex"]

log = logging.getLogger(__name__)

ID_COLUMNS: tuple[str, ...] = ("method", "base_method", "dataset", "protocol", "seed", "suite")
HEADLINE_METRICS: tuple[str, ...] = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
VAL_MAP_R = "val_mean_average_precision_at_r"
_SHORT = {"precision_at_1": "P@1", "r_precision": "RP", "mean_average_precision_at_r": "MAP@R",
          "nmi": "NMI", "f1": "F1", VAL_MAP_R: "val MAP@R"}
_RECALL = re.compile(r"recall_at_(\d+)$")
# Order of the per-(dataset, metric) numbers in a comparison table's columns.
_STATS = ("mean", "std", "ci95", "n", "delta", "published", "diff")
_SUPERSEDE_KEY = ("method", "dataset", "protocol", "seed", "suite")
FORMATS = ("markdown", "csv", "latex")


def short_name(metric: str) -> str:
    """Header name of a metric key: P@1, RP, MAP@R, R@K, NMI, F1; other keys unchanged."""
    m = _RECALL.match(metric)
    return f"R@{m.group(1)}" if m else _SHORT.get(metric, metric)


def _metric_key(name: str) -> str:
    """Inverse of `short_name` (a metric key passes through)."""
    m = re.fullmatch(r"R@(\d+)", name)
    if m:
        return f"recall_at_{m.group(1)}"
    return {v: k for k, v in _SHORT.items()}.get(name, name)


def _metric_rank(metric: str) -> tuple[int, int]:
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
    return sorted((m for m in dict.fromkeys(available) if _metric_rank(m)[0] < 3), key=_metric_rank)


# ----------------------------------------------------------------------------- loading


def _numbers(metrics: Any) -> dict[str, float] | None:
    if not isinstance(metrics, dict):
        return None
    out = {k: (math.nan if v is None else float(v)) for k, v in metrics.items()
           if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
    return out or None


def _record_metrics(rec: dict[str, Any], which: str) -> dict[str, float] | None:
    if rec.get("protocol") == "mlrc":
        info = rec.get("mlrc") or {}
        conc = info.get("concatenated")
        if isinstance(conc, dict):
            found = _numbers(conc.get("metrics", conc))
            if found:
                val = info.get("best_value")
                if isinstance(val, (int, float)) and not isinstance(val, bool):
                    found[VAL_MAP_R] = float(val)
                return found
    block = rec.get(which)
    return _numbers(block.get("metrics")) if isinstance(block, dict) else None


def _ids(rec: dict[str, Any]) -> dict[str, Any]:
    for key in ("method", "dataset"):
        if not isinstance(rec.get(key), str) or not rec[key]:
            raise UserError(f"run record {rec.get('_path', '?')} has no {key!r}; "
                            "fix or delete that file and run again")
    return {k: rec.get(k) for k in ID_COLUMNS}


def load_runs(runs_dir: "str | os.PathLike[str]", *,
              which: Literal["best", "final"] = "best") -> pd.DataFrame:
    """One row per completed run under `runs_dir`: the ID_COLUMNS plus one column per metric.

    Rows in the suite's declared order (see the module docstring). `df.attrs` holds "which",
    "runs_dir", "skipped" (a list of dicts with the ID_COLUMNS, "status" and "error", one per
    diverged/failed run, or completed run without metrics) and "datasets" (their order).
    """
    if which not in ("best", "final"):
        raise UserError(f"which must be 'best' or 'final', not {which!r}")
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"runs directory {runs_dir} does not exist; run `dmlbench run` or "
                        "`dmlbench suite NAME` first, or pass the folder holding the run records")
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    records = _declared_order(list(read_records(runs_dir)))
    for rec in records:
        ids = _ids(rec)
        status = rec.get("status")
        metrics = _record_metrics(rec, which) if status == "completed" else None
        if metrics is not None:
            rows.append({**ids, **metrics})
        elif status == "completed":
            skipped.append({**ids, "status": "completed",
                            "error": f"record has no {which!r} metrics"})
        else:
            skipped.append({**ids, "status": str(status), "error": rec.get("error") or ""})
    if not rows and not skipped:
        raise UserError(f"no run records under {runs_dir}; "
                        "run `dmlbench run` or `dmlbench suite NAME` first")
    done = {tuple(r[k] for k in _SUPERSEDE_KEY) for r in rows}
    skipped = [s for s in skipped if tuple(s[k] for k in _SUPERSEDE_KEY) not in done]
    if not rows:
        raise UserError(f"no completed runs under {runs_dir}; {skipped_summary(skipped)}")
    df = pd.DataFrame(rows)
    metric_cols = sorted((c for c in df.columns if c not in ID_COLUMNS), key=_metric_rank)
    df = df[list(ID_COLUMNS) + metric_cols]
    df.attrs.update(which=which, runs_dir=str(runs_dir), skipped=skipped,
                    datasets=list(dict.fromkeys(r["dataset"] for r in _declared_order(
                        records, datasets_first=True))))
    return df


def _position(rec: dict[str, Any], key: str) -> float:
    pos = rec.get("suite_position")
    v = pos.get(key) if isinstance(pos, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.inf


def _declared_order(records: list[dict[str, Any]], *, datasets_first: bool = False
                    ) -> list[dict[str, Any]]:
    """`records` in the suite's declared order: by their methods' and datasets' smallest
    `suite_position` indices, then by name (never by creation time); then seed and path."""
    run_rank: dict[str, float] = {}
    ds_rank: dict[str, float] = {}
    for r in records:
        m, d = str(r.get("method")), str(r.get("dataset"))
        run_rank[m] = min(run_rank.get(m, math.inf), _position(r, "run"))
        ds_rank[d] = min(ds_rank.get(d, math.inf), _position(r, "dataset"))

    def key(r: dict[str, Any]) -> tuple:
        m, d = str(r.get("method")), str(r.get("dataset"))
        seed = r.get("seed") if isinstance(r.get("seed"), int) else -1
        method_key, ds_key = (run_rank[m], m), (ds_rank[d], d)
        first, second = (ds_key, method_key) if datasets_first else (method_key, ds_key)
        return (*first, *second, seed, str(r.get("_path", "")))

    return sorted(records, key=key)


def skipped_summary(skipped: list[dict[str, Any]]) -> str:
    """One line naming each run left out of the table (method, dataset, seed, status: error)."""
    if not skipped:
        return ""
    parts = []
    for s in skipped:
        error = (str(s.get("error") or "").strip().splitlines() or ["no error message"])[0]
        if len(error) > 120:
            error = error[:117] + "..."
        parts.append(f"{s['method']} / {s['dataset']} / seed {s.get('seed')}: "
                     f"{s.get('status')} ({error})")
    n = len(skipped)
    return f"{n} run{'s' if n != 1 else ''} not in the table: " + "; ".join(parts) + "."


# ----------------------------------------------------------------------------- the table


def _row_order(methods: list[str], base: dict[str, str]) -> list[str]:
    """Each base followed by its variants (recursively); otherwise first-seen order."""
    children: dict[str, list[str]] = {}
    for m in methods:
        if m in base:
            children.setdefault(base[m], []).append(m)
    out: list[str] = []

    def visit(m: str) -> None:
        if m not in out:
            out.append(m)
            for c in children.get(m, []):
                visit(c)

    for m in methods:
        if m not in base:
            visit(m)
    for m in methods:  # only members of a base cycle are left
        visit(m)
    return out


def _ranked(names: list[str], order: "Iterable[str] | None") -> list[str]:
    """`names` with those in `order` first, in that order; the others keep their order."""
    if not order:
        return list(names)
    order = list(order)
    pos = {n: i for i, n in enumerate(order)}
    return sorted(names, key=lambda n: (pos.get(n, len(order)), names.index(n)))


def comparison_table(df: pd.DataFrame, metrics: list[str] | None = None, *,
                     ci: bool = False, order: "Iterable[str] | None" = None,
                     datasets: "Iterable[str] | None" = None) -> pd.DataFrame:
    """Rows: methods; columns: MultiIndex (dataset, metric, stat), stat in
    ("mean", "std" | "ci95", "n", "delta"); values as fractions, "n" the number of seeds.

    "delta" is the row's mean minus its base method's mean, where the base is in the table;
    a row named "NAME@TAG" (suite runs with a `name`, e.g. "ms+das@bninception") has the base
    "BASE@TAG" when that row exists.
    Rows: the methods named in `order` first, in that order, then the others in `df`'s order
    (`load_runs`: the suite's declared order, see the module docstring); each base method is
    followed by its variants. Column groups: `datasets` first, then `df.attrs["datasets"]`.
    `table.attrs`: "base" ({method: base} for those deltas), "which" (from `df.attrs`),
    "protocols".
    """
    if df.empty:
        raise UserError("no completed runs to tabulate")
    protocols = list(dict.fromkeys(df["protocol"].dropna()))
    if len(protocols) > 1:
        raise UserError(f"the runs mix protocols ({', '.join(map(str, protocols))}); "
                        "tabulate each protocol's runs on their own (separate runs folders)")
    available = [c for c in df.columns if c not in ID_COLUMNS and df[c].notna().any()]
    if metrics is None:
        metrics = default_metrics(available)
    else:
        metrics = [_metric_key(m) for m in metrics]
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise UserError(f"no values for metric(s) {', '.join(unknown)} in these runs; "
                            f"available: {', '.join(available) or 'none'}")
    if not metrics:
        raise UserError(f"none of the usual metrics in these runs; pass metrics= from: "
                        f"{', '.join(available) or 'none'}")

    first_seen = _ranked(list(dict.fromkeys(df["method"])), order)
    declared = (df.dropna(subset=["base_method"])
                .groupby("method", sort=False)["base_method"].first())
    base = {}
    for m, b in declared.items():
        tagged = f"{b}@{m.rsplit('@', 1)[1]}" if "@" in m else None  # "ms+das@x" -> "ms@x"
        b = tagged if tagged in first_seen else b
        if b in first_seen and b != m:
            base[m] = b
    methods = _row_order(first_seen, base)
    present = list(dict.fromkeys(df["dataset"]))
    known = [d for d in df.attrs.get("datasets") or [] if d in present]
    datasets = _ranked(known + [d for d in present if d not in known], datasets)
    spread = "ci95" if ci else "std"

    grouped = df.groupby(["method", "dataset"], sort=False)[metrics]
    mean, std, n = grouped.mean(), grouped.std(ddof=1), grouped.count()
    if ci:
        with np.errstate(invalid="ignore", divide="ignore"):
            nn = n.to_numpy(dtype=float)
            half = _stats.t.ppf(0.975, nn - 1) * std.to_numpy(dtype=float) / np.sqrt(nn)
        std = pd.DataFrame(np.where(nn > 1, half, np.nan), index=std.index, columns=std.columns)
    parts = {"mean": mean, spread: std, "n": n.astype(float)}

    pairs = [(d, m) for d in datasets for m in metrics]
    table = pd.DataFrame(
        {(d, m, stat): frame.unstack("dataset")[(m, d)].reindex(methods)
         for d, m in pairs for stat, frame in parts.items()}, index=methods)
    table.columns.names = ["dataset", "metric", "stat"]
    table.index.name = "method"
    means = table.loc[:, [(d, m, "mean") for d, m in pairs]].to_numpy()
    delta = np.full_like(means, np.nan)
    for variant, b in base.items():
        delta[methods.index(variant)] = means[methods.index(variant)] - means[methods.index(b)]
    deltas = pd.DataFrame(delta, index=table.index,
                          columns=pd.MultiIndex.from_tuples([(d, m, "delta") for d, m in pairs],
                                                            names=table.columns.names))
    table = pd.concat([table, deltas], axis=1)
    n_cols = [(d, m, "n") for d, m in pairs]
    table[n_cols] = table[n_cols].fillna(0.0)
    table = _ordered(table)
    table.attrs.update(base=base, which=df.attrs.get("which"), protocols=protocols)
    return table


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    datasets = list(dict.fromkeys(table.columns.get_level_values("dataset")))
    metrics = list(dict.fromkeys(table.columns.get_level_values("metric")))
    cols = sorted(table.columns, key=lambda c: (datasets.index(c[0]), metrics.index(c[1]),
                                                _STATS.index(c[2])))
    return table[cols]


def published_metric(metric: str, protocol: Any = None) -> str:
    """The table metric a published number compares with: its key, or for protocol
    "mlrc-validation" (MLRC's search value) `val_mean_average_precision_at_r`."""
    key = _metric_key(str(metric))
    if protocol == "mlrc-validation" and key == "mean_average_precision_at_r":
        return VAL_MAP_R
    return key


def _published_rows(published: pd.DataFrame, protocols: list[str] | None) -> pd.DataFrame:
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
    published = _published_rows(published, table.attrs.get("protocols"))
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
    return _ordered(out)


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


# ----------------------------------------------------------------------------- formatting


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


def _layout(table: pd.DataFrame) -> tuple[list[str], list[str], str, bool]:
    datasets = list(dict.fromkeys(table.columns.get_level_values("dataset")))
    metrics = list(dict.fromkeys(table.columns.get_level_values("metric")))
    spread = "ci95" if "ci95" in table.columns.get_level_values("stat") else "std"
    has_delta = bool(table.loc[:, (slice(None), slice(None), "delta")].notna().to_numpy().any())
    return datasets, metrics, spread, has_delta


def _caption(table: pd.DataFrame, spread: str, has_delta: bool) -> str:
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


def _cell_columns(table: pd.DataFrame, dataset: str, metrics: list[str],
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


def _cell(table: pd.DataFrame, method: str, dataset: str, metric: str, stat: str, spread: str,
          latex: bool) -> str:
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
    datasets, metrics, spread, has_delta = _layout(table)
    lines = [_caption(table, spread, has_delta)]
    for d in datasets:
        cells = _cell_columns(table, d, metrics, has_delta)
        lines += ["", f"### {_md_escape(d)}", ""]
        header = ["method", "runs"] + [_md_escape(h) for _, h, _ in cells]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":---", "---:"] + ["---:"] * len(cells)) + "|")
        for method in table.index:
            n = int(table.loc[method, (d, slice(None), "n")].max())
            if n == 0:
                continue
            row = [_md_escape(method), str(n)] + [
                _cell(table, method, d, m, s, spread, latex=False) for m, _, s in cells]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _latex(table: pd.DataFrame) -> str:
    datasets, metrics, spread, has_delta = _layout(table)
    groups = {d: _cell_columns(table, d, metrics, has_delta) for d in datasets}
    width = sum(len(g) for g in groups.values())
    caption = _caption(table, spread, has_delta).replace("±", "+-").replace("Δ", "Delta")
    lines = [f"% {caption}", "\\begin{tabular}{l" + "r" * width + "}", "\\toprule"]
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
        row = [escape_latex(method)] + [_cell(table, method, d, m, s, spread, latex=True)
                                        for d, g in groups.items() for m, _, s in g]
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _csv(table: pd.DataFrame) -> str:
    datasets, metrics, spread, _ = _layout(table)
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


def build_table(df: pd.DataFrame, *, metrics: list[str] | None = None, ci: bool = False,
                published: pd.DataFrame | None = None, order: "Iterable[str] | None" = None,
                datasets: "Iterable[str] | None" = None) -> pd.DataFrame:
    """`comparison_table` of `df` (rows of one protocol), with the `published` numbers where
    given (`add_published`; without `metrics`, the default columns plus any other metric the
    published numbers compare with). `table.attrs["published_note"]`: one line when the
    published numbers match none of the runs, else ""."""
    if metrics is None and published is not None:
        available = [c for c in df.columns if c not in ID_COLUMNS and df[c].notna().any()]
        rows = _published_rows(published, list(dict.fromkeys(df["protocol"].dropna())))
        wanted = {published_metric(r["metric"], r.get("protocol"))
                  for r in rows.to_dict("records")} if "metric" in rows.columns else set()
        metrics = default_metrics(available) + sorted(
            (m for m in available if m in wanted and _metric_rank(m)[0] >= 3), key=_metric_rank)
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
    one-line note is printed. Published numbers that match none of the runs: a note under the
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
        print(note)
    return paths
