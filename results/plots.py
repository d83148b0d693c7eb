"""Figures of a suite, as PNG: learning curves of conventional runs, MLRC per-fold test scores,
and a study's optimisation history and per-fold validation curves.

Every figure is a `matplotlib.figure.Figure` built with the object API: nothing here imports
pyplot or selects a backend, so importing this module changes no global state; `save_png`
renders a figure with the Agg canvas and writes the file atomically.

Learning curves: one figure per dataset, one panel per metric, one line per method: the mean
over seeds of the metric at each evaluated epoch of the records' `evaluations`, with a band of
± one sample standard deviation (ddof=1) over the seeds evaluated at that epoch (no band for a
single seed). A "+method" variant is drawn dashed in its base method's colour.

MLRC per-fold test scores: for each method of a dataset, the test metric of each fold's model
(`mlrc.folds[p].test`) and of the concatenated embedding (`mlrc.concatenated`) of every
reproduction, as points, with the mean over reproductions as a bar.

Per-fold validation curves need intermediate values: a trial's validation MAP@R reported at
step `fold * train.epochs + epoch` (epoch counted from 1; `train.epochs` from the study's
`dmlbench` settings), or a user attribute `fold_P` holding `"curve": [[epoch, value], ...]`.
Without either, `fold_validation_curves` returns None.
"""
from __future__ import annotations

import io
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["save_png", "png_bytes", "metric_label", "objective_label", "learning_curves",
           "fold_test_scores", "optimisation_history", "fold_validation_curves",
           "fold_curves", "write_plots"]

log = logging.getLogger(__name__)

_SHORT = {"precision_at_1": "P@1", "r_precision": "RP", "mean_average_precision_at_r": "MAP@R",
          "nmi": "NMI", "f1": "F1"}
MAP_R = "mean_average_precision_at_r"
DPI = 110


def metric_label(metric: str) -> str:
    """Axis label of a metric key, in percent: "P@1 (%)", "R@4 (%)"."""
    if metric.startswith("recall_at_"):
        return f"R@{metric.rsplit('_', 1)[1]} (%)"
    return f"{_SHORT.get(metric, metric)} (%)"


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as PNG (Agg canvas, tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def save_png(fig: Figure, path: "str | os.PathLike[str]") -> Path:
    """Write the figure to `path` as PNG atomically (unique temporary name, rename); the file
    gets the mode a plain `open()` would give it."""
    path = Path(path)
    data = png_bytes(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = _umask()
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    try:  # Linux: read it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


# ----------------------------------------------------------------------------- records


def _completed(records: Iterable[dict[str, Any]], dataset: str, protocol: str
               ) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "completed" and r.get("dataset") == dataset
            and r.get("protocol") == protocol]


def _methods(records: list[dict[str, Any]], order: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(str(r["method"]) for r in records))
    if not order:
        return seen
    pos = {m: i for i, m in enumerate(order)}
    return sorted(seen, key=lambda m: (pos.get(m, len(pos)), seen.index(m)))


def _grouped(records: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """`methods` with each "+method" variant moved right after its base (when present)."""
    base = {str(r["method"]): r.get("base_method") for r in records}
    out: list[str] = []
    for m in methods:
        if base.get(m) in methods:
            continue
        out.append(m)
        out += [v for v in methods if base.get(v) == m and v != m]
    return out + [m for m in methods if m not in out]


def _styles(records: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Colour per base method (variants share it), solid for bases, dashed/dotted variants."""
    base = {str(r["method"]): r.get("base_method") for r in records}
    colours: dict[str, str] = {}
    styles = {}
    dashes = ["--", ":", "-."]
    variants: dict[str, int] = {}
    for m in methods:
        b = base.get(m)
        if "@" in m and b:
            b = f"{b}@{m.rsplit('@', 1)[1]}" if f"{b}@{m.rsplit('@', 1)[1]}" in methods else b
        root = b if b in methods else m
        if root not in colours:
            colours[root] = f"C{len(colours) % 10}"
        if root == m:
            styles[m] = {"color": colours[root], "linestyle": "-"}
        else:
            k = variants.get(root, 0)
            variants[root] = k + 1
            styles[m] = {"color": colours[root], "linestyle": dashes[k % len(dashes)]}
    return styles


def learning_curves(records: Iterable[dict[str, Any]], dataset: str, *,
                    metrics: Sequence[str] = ("precision_at_1", MAP_R),
                    order: Sequence[str] | None = None) -> Figure | None:
    """Metric vs epoch of the completed conventional runs of `dataset`: per method the mean
    over seeds and a ± 1 std band; None if no run has evaluations."""
    recs = [r for r in _completed(records, dataset, "conventional") if r.get("evaluations")]
    if not recs:
        return None
    methods = _grouped(recs, _methods(recs, order))
    styles = _styles(recs, methods)
    metrics = [m for m in metrics if any(m in (e.get("metrics") or {}) for r in recs
                                         for e in r["evaluations"])]
    if not metrics:
        return None
    fig = Figure(figsize=(4.6 * len(metrics) + 2.2, 3.6), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    n_seeds = {}
    for ax, metric in zip(axes, metrics):
        for m in methods:
            by_epoch: dict[int, list[float]] = {}
            runs = [r for r in recs if r["method"] == m]
            n_seeds[m] = len(runs)
            for r in runs:
                for e in r["evaluations"]:
                    v = (e.get("metrics") or {}).get(metric)
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        by_epoch.setdefault(int(e["epoch"]), []).append(100.0 * v)
            if not by_epoch:
                continue
            x = np.array(sorted(by_epoch))
            mu = np.array([np.mean(by_epoch[k]) for k in x])
            sd = np.array([np.std(by_epoch[k], ddof=1) if len(by_epoch[k]) > 1 else np.nan
                           for k in x])
            st = styles[m]
            ax.plot(x, mu, marker="o", markersize=3, label=f"{m} ({len(runs)} seeds)", **st)
            if np.isfinite(sd).any():
                ax.fill_between(x, mu - sd, mu + sd, color=st["color"], alpha=0.12, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric_label(metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_title(f"test {_SHORT.get(metric, metric)}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(f"{dataset}: learning curves on the test classes (mean over seeds, "
                 "band ± 1 std)", fontsize=10)
    return fig


def fold_test_scores(records: Iterable[dict[str, Any]], dataset: str, *,
                     metrics: Sequence[str] = ("precision_at_1", MAP_R),
                     order: Sequence[str] | None = None) -> Figure | None:
    """MLRC test metric of each fold model and of the concatenated embedding, per method of
    `dataset`: points per reproduction, bars at their mean; None without MLRC records."""
    recs = [r for r in _completed(records, dataset, "mlrc") if (r.get("mlrc") or {}).get("folds")]
    if not recs:
        return None
    methods = _grouped(recs, _methods(recs, order))
    n_folds = max(len(r["mlrc"]["folds"]) for r in recs)
    cats = [f"fold {p}" for p in range(n_folds)] + ["separated\nmean", "concatenated"]
    fig = Figure(figsize=(max(5.0, 0.9 * len(cats) + 0.5 * len(methods)) * len(metrics) + 2.2,
                          3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    width = 0.8 / max(1, len(methods))
    for ax, metric in zip(axes, metrics):
        for i, m in enumerate(methods):
            runs = [r for r in recs if r["method"] == m]
            pts: dict[int, list[float]] = {}
            for r in runs:
                info = r["mlrc"]
                for f in info["folds"]:
                    v = (f.get("test") or {}).get(metric)
                    if isinstance(v, (int, float)):
                        pts.setdefault(int(f["fold"]), []).append(100 * v)
                sep = ((info.get("separated") or {}).get("metrics") or {}).get(metric)
                conc = ((info.get("concatenated") or {}).get("metrics")
                        or info.get("concatenated") or {}).get(metric)
                if isinstance(sep, (int, float)):
                    pts.setdefault(n_folds, []).append(100 * sep)
                if isinstance(conc, (int, float)):
                    pts.setdefault(n_folds + 1, []).append(100 * conc)
            if not pts:
                continue
            off = (i - (len(methods) - 1) / 2) * width
            xs = sorted(pts)
            ax.bar([x + off for x in xs], [np.mean(pts[x]) for x in xs], width * 0.9,
                   color=f"C{i % 10}", alpha=0.35, label=f"{m} ({len(runs)} reproductions)")
            for x in xs:
                ax.scatter([x + off] * len(pts[x]), pts[x], s=12, color=f"C{i % 10}", zorder=3)
        ax.set_xticks(range(len(cats)), cats, fontsize=8)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"test {_SHORT.get(metric, metric)}")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{dataset}: MLRC test scores per fold model (points: reproductions; bars: "
                 "their mean)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- studies


def objective_label(study: Any) -> tuple[str, float]:
    """(axis label, scale) of a study's objective: dmlbench MLRC studies maximise the mean
    validation MAP@R over the folds, shown in percent; other studies: ("objective", 1)."""
    settings = getattr(study, "user_attrs", {}).get("dmlbench")
    if isinstance(settings, dict):
        exp = settings.get("experiment") or {}
        folds = exp.get("num_folds")
        if exp.get("protocol") == "mlrc":
            return (f"val MAP@R (%, mean of {folds} folds)" if folds else "val MAP@R (%)"), 100.0
    return "objective", 1.0


def optimisation_history(study: Any, label: str | None = None, scale: float | None = None
                         ) -> Figure:
    """Objective of each completed trial and the best so far, against the trial number
    (integer ticks); pruned and failed trials as marks under the axis."""
    from optuna.trial import TrialState

    auto_label, auto_scale = objective_label(study)
    label = label or auto_label
    scale = auto_scale if scale is None else scale
    maximize = getattr(getattr(study, "direction", None), "name", "MAXIMIZE") != "MINIMIZE"
    trials = study.get_trials(deepcopy=False)
    fig = Figure(figsize=(7.0, 3.4), layout="constrained")
    ax = fig.subplots()
    done = [(t.number, scale * t.value) for t in trials
            if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    if done:
        n, v = (np.array(a) for a in zip(*done))
        best = np.maximum.accumulate(v) if maximize else np.minimum.accumulate(v)
        ax.step(n, best, where="post", color="C1", label="best so far", zorder=2)
        ax.scatter(n, v, s=18, color="C0", label="completed trial", zorder=3)
    other = [(t.number, t.state) for t in trials if t.state in (TrialState.PRUNED, TrialState.FAIL)]
    for state, marker, colour in ((TrialState.PRUNED, "v", "C2"), (TrialState.FAIL, "x", "C3")):
        xs = [n for n, s in other if s == state]
        if xs:
            ax.scatter(xs, [0.02] * len(xs), marker=marker, color=colour, clip_on=False,
                       transform=ax.get_xaxis_transform(), label=state.name.lower(), zorder=3)
    if trials:
        ax.set_xlim(-0.5, max(t.number for t in trials) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    ax.set_title(f"optimisation history ({len(done)} completed of {len(trials)} trials)",
                 fontsize=10)
    return fig


def fold_curves(study: Any) -> dict[int, dict[int, list[tuple[int, float]]]]:
    """{trial number: {fold: [(epoch, value), ...]}} of the study's trials with per-fold
    validation curves (see the module docstring for the two sources); {} if none has any."""
    settings = getattr(study, "user_attrs", {}).get("dmlbench") or {}
    epochs = ((settings.get("config") or {}).get("train") or {}).get("epochs")
    exp = settings.get("experiment") or {}
    folds = exp.get("num_folds") or 4
    out: dict[int, dict[int, list[tuple[int, float]]]] = {}
    for t in study.get_trials(deepcopy=False):
        curves: dict[int, list[tuple[int, float]]] = {}
        for key, val in t.user_attrs.items():
            if key.startswith("fold_") and key[5:].isdigit() and isinstance(val, dict):
                pts = val.get("curve")
                if isinstance(pts, list) and pts:
                    curves[int(key[5:])] = [(int(e), float(v)) for e, v in pts]
        iv = t.intermediate_values
        # with a pruner, older studies report the running mean over folds at step = fold
        running_means = exp.get("pruner", "none") != "none" and iv and max(iv) < folds
        if (not curves and iv and not running_means and isinstance(epochs, int)
                and epochs > 0):
            for step, v in sorted(t.intermediate_values.items()):
                if step < 1 or v is None or not math.isfinite(v):
                    continue
                fold, epoch = (step - 1) // epochs, (step - 1) % epochs + 1
                curves.setdefault(fold, []).append((epoch, float(v)))
        if curves:
            out[t.number] = {k: sorted(v) for k, v in sorted(curves.items())}
    return out


def fold_validation_curves(study: Any, label: str | None = None, scale: float = 100.0
                           ) -> Figure | None:
    """Validation MAP@R vs epoch, one panel per fold, one line per trial (the best trial
    highlighted); None when the study has no per-fold curves."""
    curves = fold_curves(study)
    if not curves:
        return None
    folds = sorted({f for c in curves.values() for f in c})
    try:
        best = study.best_trial.number
    except (ValueError, RuntimeError):
        best = None
    fig = Figure(figsize=(3.2 * len(folds) + 1.0, 3.2), layout="constrained")
    axes = fig.subplots(1, len(folds), squeeze=False, sharey=True)[0]
    for ax, fold in zip(axes, folds):
        for number, c in curves.items():
            if fold not in c:
                continue
            e, v = zip(*c[fold])
            is_best = number == best
            ax.plot(e, scale * np.array(v), color="C3" if is_best else "0.55",
                    linewidth=2.0 if is_best else 0.8, alpha=1.0 if is_best else 0.6,
                    zorder=3 if is_best else 2,
                    label=f"best trial ({number})" if is_best else None)
        ax.set_title(f"fold {fold}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(label or "val MAP@R (%)")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"validation curves per fold ({len(curves)} trials; grey: other trials)",
                 fontsize=10)
    return fig


# ----------------------------------------------------------------------------- files


def write_plots(records: Iterable[dict[str, Any]], out_dir: "str | os.PathLike[str]", *,
                order: Sequence[str] | None = None) -> dict[str, Path]:
    """Write curves-DATASET.png (conventional runs) and mlrc-folds-DATASET.png (MLRC runs) for
    every dataset of `records` into `out_dir`; return the paths by file stem."""
    records = list(records)
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for ds in dict.fromkeys(str(r.get("dataset")) for r in records):
        for stem, make in ((f"curves-{ds}", learning_curves), (f"mlrc-folds-{ds}", fold_test_scores)):
            fig = make(records, ds, order=order)
            if fig is not None:
                paths[stem] = save_png(fig, out / f"{stem}.png")
    return paths
