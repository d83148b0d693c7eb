"""The report's disclosure cards: one per result (method × dataset × protocol), listing the
settings, budget, selection, devices, measured time, versions and commit behind the number."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from dmlbench.results.report_facts import (hour_kind, processes, run_budget, search_hours,
                                           selection)
from dmlbench.results.report_page import esc as _e
from dmlbench.results.report_page import protocol_title

__all__ = ["card"]

Rows = list[tuple[str, str]]


def _distinct(values: Iterable[Any]) -> str:
    vals = [v for v in dict.fromkeys(_e(x if x is not None else "—") for x in values)]
    return " / ".join(vals) if vals else "—"


def _yes(v: Any) -> str:
    return "yes" if v is True else "no" if v is False else str(v)


def _model_rows(cfgs: list[dict[str, Any]]) -> Rows:
    """Trunk, embedding, pooling, frozen BN, image size and transforms."""
    def get(sec: str, k: str) -> list[Any]:
        return [(c.get(sec) or {}).get(k) for c in cfgs]

    rows: Rows = []
    trunk = [f"{(c.get('model') or {}).get('trunk')}"
             + (" (pretrained)" if (c.get("model") or {}).get("pretrained") else "")
             + (f", width {(c.get('model') or {}).get('width')}"
                if (c.get("model") or {}).get("trunk") == "smallcnn" else "") for c in cfgs]
    rows.append(("trunk", _distinct(trunk)))
    rows.append(("embedding size", _distinct(get("model", "embedding_size"))))
    rows.append(("pooling", _distinct(get("model", "pooling"))))
    fbn = [_yes((c.get("model") or {}).get("freeze_bn"))
           + (" (affine too)" if (c.get("model") or {}).get("freeze_bn_affine") else "")
           for c in cfgs]
    rows.append(("frozen BatchNorm", _distinct(fbn)))
    img = [f"{(c.get('dataset') or {}).get('image_size')} px, transforms "
           f"{(c.get('dataset') or {}).get('transforms')}, augment "
           f"{_yes((c.get('train') or {}).get('augment'))}" for c in cfgs]
    rows.append(("image size and transforms", _distinct(img)))
    return rows


def _training_rows(cfgs: list[dict[str, Any]]) -> Rows:
    """Batch and m per class, optimiser and learning rates, method parameters."""
    rows: Rows = []
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
    return rows


def _budget_rows(recs: list[dict[str, Any]], which: str) -> Rows:
    """Epochs and iterations, epochs run, selection, seeds, devices."""
    rows: Rows = []
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
    how, on_test = selection(recs, which)
    rows.append(("selection", _e(how) + (
        ' <span class="warn test-selected">⚠ selected on the test set</span>' if on_test else "")))
    rows.append(("seeds", _e(", ".join(str(r.get("seed")) for r in recs))))
    devices = [(r.get("device") or f"{(r.get('config') or {}).get('train', {}).get('device')}"
                + ("" if r.get("device") else " (configured; the device used is not recorded)"))
               + (f" × {processes(r)} processes" if processes(r) > 1 else "") for r in recs]
    rows.append(("device", _distinct(devices)))
    return rows


def _time_rows(recs: list[dict[str, Any]], protocol: str, studies: Mapping[str, Any]) -> Rows:
    """Measured time and, for MLRC, the study, its best parameters and value."""
    rows: Rows = []
    # device-hours: wall time × the processes (one device each) that ran the fit
    hours = sum(float(r.get("wall_time_s") or 0.0) * processes(r) for r in recs) / 3600.0
    kind = hour_kind(recs)
    text = f"{hours:.3f} {kind} ({len(recs)} run{'s' if len(recs) != 1 else ''}"
    if protocol == "mlrc":
        text += ", reproductions only"
        names = {(r.get("mlrc") or {}).get("study") for r in recs}
        search = [search_hours(studies[n]) for n in names if n in studies]
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
    return rows


def card(key: tuple[str, str, str], recs: list[dict[str, Any]], card_id: str, which: str,
         studies: Mapping[str, Any]) -> str:
    """The <details> card of one result `key` = (protocol, method, dataset) and its records."""
    protocol, method, dataset = key
    cfgs = [r.get("config") or {} for r in recs]
    rows = _model_rows(cfgs) + _training_rows(cfgs) + _budget_rows(recs, which)
    rows += _time_rows(recs, protocol, studies)
    versions = [", ".join(f"{k} {v}" for k, v in sorted((r.get("versions") or {}).items()))
                for r in recs]
    rows.append(("package versions", _distinct(versions)))
    rows.append(("git commit", _distinct(r.get("git_commit") or "not recorded" for r in recs)))
    rows.append(("suite", _distinct(r.get("suite") for r in recs)))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return (f'<details class="card" id="{card_id}" data-method="{_e(method)}" '
            f'data-dataset="{_e(dataset)}" data-protocol="{_e(protocol)}"><summary>'
            f"{_e(method)} — {_e(dataset)} — {_e(protocol_title(protocol))}"
            f"</summary><table>{body}</table></details>")
