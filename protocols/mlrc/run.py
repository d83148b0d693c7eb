"""One MLRC experiment: the search (or its continuation) on the study's storage, with extra
worker processes when asked, then the final evaluation of the best trial.

Progress lines go to `log` when given, else to this module's logger at INFO.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from dmlbench.bench.data import DMLDataset, load_configured
from dmlbench.bench.errors import UserError
from dmlbench.bench.records import check_output_dir
from dmlbench.protocols.mlrc.final import final_evaluation
from dmlbench.protocols.mlrc.objective import FoldData
from dmlbench.protocols.mlrc.options import SearchOptions
from dmlbench.protocols.mlrc.settings import build_settings
from dmlbench.protocols.mlrc.storage import (Storage, create_or_check_study, default_storage,
                                             load_study, open_storage, parse_storage_url,
                                             study_settings)
from dmlbench.protocols.mlrc.worker import WorkerSummary, params_text, spawn_workers, work_on
from dmlbench.protocols.splits import check_mlrc_classes

logger = logging.getLogger(__name__)


def _check_shared_storage(opts: SearchOptions, url: str) -> None:
    if opts.workers > 1 and parse_storage_url(url)[0] == "sqlite":
        raise UserError(f"{opts.workers} workers need a storage that several processes can "
                        "share: give e.g. --storage journal:///abs/path/studies.log or a "
                        "PostgreSQL URL (SQLite is for one process)")


def _search(name: str, url: str, st: Storage, settings: dict[str, Any], opts: SearchOptions,
            out_dir: Path, data: FoldData, threads: int | None,
            log: Callable[[str], None]) -> WorkerSummary:
    """Trials in this process (and `opts.workers - 1` worker processes) until the budget is
    spent."""
    procs = spawn_workers(name, url, opts.workers - 1, out_dir, threads=threads) \
        if opts.workers > 1 else []
    try:
        return work_on(name, st, settings, out_dir=out_dir, threads=threads, data=data, log=log)
    finally:
        for p in procs:
            p.wait()


def _search_result(name: str, st: Storage, summary: WorkerSummary, n: int,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """run_mlrc's result before the final evaluation: completed, incomplete or failed."""
    finished = summary.states.get("COMPLETE", 0) + summary.states.get("PRUNED", 0)
    result = {"study": name, "storage": st.display, "summary": summary, "records": [],
              "status": "completed", "message": summary.stopped}
    if finished < n:
        result["status"] = "incomplete"
        log(f"  search stopped before {n} trials: {summary.stopped}")
    if summary.states.get("COMPLETE", 0) == 0:
        result["status"] = "failed"
        result["message"] = f"no completed trial ({summary.stopped})"
    return result


def run_mlrc(cfg: dict[str, Any], opts: SearchOptions, out_dir: "str | Path", *,
             suite: str | None = None, dataset: DMLDataset | None = None,
             threads: int | None = None, log: Callable[[str], None] | None = None
             ) -> dict[str, Any]:
    """Search (or resume the search), then the final evaluation; returns
    {"study", "storage", "summary", "records", "status", "message"}."""
    log = log or logger.info
    out_dir = Path(out_dir)
    name, settings = build_settings(cfg, opts, out_dir, suite)
    url = opts.storage or default_storage(out_dir)
    _check_shared_storage(opts, url)
    ds = dataset if dataset is not None else load_configured(cfg)
    check_mlrc_classes(ds.num_classes, opts.num_folds, f"dataset {ds.name!r}")
    check_output_dir(out_dir)   # trial folds and records go there: fail before training
    st = open_storage(url, heartbeat_interval=opts.heartbeat_interval,
                      grace_period=opts.grace_period)
    study = create_or_check_study(name, st, settings, checked=("experiment", "budget"))
    settings = study_settings(study)
    data = FoldData(ds, settings["experiment"]["num_folds"])
    n = settings["budget"]["n_trials"]
    log(f"study {name} ({st.display}): {n} trials, sampler {settings['experiment']['sampler']}")
    summary = _search(name, url, st, settings, opts, out_dir, data, threads, log)
    result = _search_result(name, st, summary, n, log)
    if result["status"] == "failed":
        return result
    study = load_study(name, st)
    best = study.best_trial
    log(f"  best trial {best.number}: MAP@R {100 * best.value:.2f} ({params_text(best.params)})")
    result["records"] = final_evaluation(study, settings, data, out_dir,
                                         storage_display=st.display, log=log)
    return result
