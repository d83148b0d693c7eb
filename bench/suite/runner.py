"""Running a suite: conventional runs (skipping finished ones, under per-run locks), then its
MLRC part, then tables, importance reports and the HTML report. This module and
`bench.cli` are the face: the one place that wires protocols and results. Progress lines go
to the `log` a caller gives, else to this module's logger at INFO (the CLI shows them)."""
from __future__ import annotations

import copy
import logging
import traceback
from pathlib import Path
from typing import Any

from dmlbench.bench import config as C
from dmlbench.bench.errors import UserError
from dmlbench.bench.records import read_records
from dmlbench.bench.suite.plan import plan, plan_mlrc
from dmlbench.bench.suite.published import load_published
from dmlbench.bench.suite.schema import PlannedRun, PlannedStudy, load_suite, mlrc_part
from dmlbench.bench.suite.smoke import smoke_datasets, smoke_suite

logger = logging.getLogger(__name__)


def _done(run_dir: Path, cfg: dict) -> bool:
    """A finished record of exactly this config (same fingerprint) is in `run_dir`."""
    from dmlbench.bench.records import fingerprint

    fp = fingerprint(cfg)
    return (run_dir / "record.json").exists() and any(
        r.get("status") in ("completed", "diverged") and r.get("fingerprint") == fp
        for r in read_records(run_dir))


def prepare(name_or_path: str, overrides: list[str] | None = None, out_dir: str | None = None,
            *, search: dict[str, Any] | None = None, smoke: bool = False
            ) -> tuple[dict, Path, list[PlannedRun], list[PlannedStudy], Path]:
    """(suite, out dir, conventional runs, MLRC studies, MLRC out dir) of a suite; in smoke
    mode the suite is cut down and its fixture trees are written to OUT/smoke-data."""
    suite = load_suite(name_or_path)
    default = Path(C.defaults()["run"]["output"]) / (suite["name"] + ("-smoke" if smoke else ""))
    out = Path(out_dir or default)
    root = None
    if smoke:
        suite = smoke_suite(suite)
        root = out / "smoke-data"
    runs = plan(suite, overrides or [], out, smoke_root=root)
    studies, mout = plan_mlrc(suite, overrides or [], out, search, smoke_root=root)
    if smoke:
        from dmlbench.bench.data.fixtures import build_fixture_tree
        from dmlbench.bench.records import file_lock

        with file_lock(out / ".smoke-data.lock", wait=True):   # suite workers start at once
            build_fixture_tree(root, smoke_datasets(runs, studies))
    return suite, out, runs, studies, mout


def run_suite(name_or_path: str, overrides: list[str] | None = None, out_dir: str | None = None,
              *, log=None, search: dict[str, Any] | None = None,
              threads: int | None = None, smoke: bool = False) -> dict[str, Any]:
    """Run (or resume) a suite; returns {"out_dir", "records", "tables", "failed", "suite",
    "mlrc"}; "mlrc" (None without an MLRC part) holds its "out_dir", "tables", "studies" and
    "importance" (report paths by study). `search` overrides the suite's MLRC search settings
    (e.g. {"storage": URL, "workers": 2}); `threads` sets the MLRC workers' torch threads;
    `smoke` runs the suite in smoke mode (see the module docstring; default out
    runs/NAME-smoke)."""
    from dmlbench.bench.data import DatasetPool
    from dmlbench.bench.records import check_output_dir, write_manifest
    from dmlbench.results.html import write_html_report
    from dmlbench.results.tables import write_tables

    log = log or logger.info
    suite, out, runs, studies, mout = prepare(name_or_path, overrides, out_dir, search=search,
                                              smoke=smoke)
    published = load_published(suite["published"]) if suite.get("published") else None
    if smoke and threads is None:
        threads = 1
    if studies:
        from dmlbench.protocols import mlrc as S

        for url in dict.fromkeys(ps.opts.storage for ps in studies if ps.opts.storage):
            S.open_storage(url)  # an unreachable storage fails before any training
    dataset_for = DatasetPool()   # each dataset loaded once for all its runs

    for folder in ([out] if runs else []) + ([mout] if studies else []):
        check_output_dir(folder)   # a folder that cannot hold results fails before training
    records, failed, held = [], [], []
    for i, pr in enumerate(runs, 1):
        cfg = pr.cfg
        label = f"[{i}/{len(runs)}] {cfg['dataset']['name']} {cfg['run']['name'] or cfg['method']['name']} seed {cfg['run']['seed']}"
        if _done(pr.run_dir, cfg):
            log(f"{label}: done before, skipped")
            continue
        rec = _run_once(pr, label, failed, log, dataset_for, suite["name"], wait=False)
        if rec is _HELD:
            held.append((label, pr))
        elif rec is not None:
            records.append(rec)
    # runs another process held: wait for it; train any it left undone (it died)
    for label, pr in held:
        log(f"{label}: waiting for the other process to finish it")
        rec = _run_once(pr, label, failed, log, dataset_for, suite["name"], wait=True)
        if rec is not None:
            records.append(rec)
    report = suite.get("report") or {}
    tables = {}
    if runs:
        write_manifest(out, [pr.run_dir.name for pr in runs], suite["name"])
        tables = write_tables(out, which=report.get("which", "best"), ci=report.get("ci", False),
                              published=published)
    mlrc = None
    if studies:
        write_manifest(mout, [ps.study for ps in studies], suite["name"])
        mlrc = _run_mlrc_part(suite, studies, mout, dataset_for, failed, threads, log,
                              published)
        records += mlrc.pop("records")
    html = _attempt("HTML report", failed, log, lambda: write_html_report(
        [d for d, has in ((out, bool(runs)), (mout, bool(studies))) if has], out / "report.html",
        published=published, which=report.get("which", "best")))
    if html is not None:
        log(f"HTML report: {html}")
    return {"out_dir": out, "records": records, "tables": tables, "failed": failed,
            "suite": copy.deepcopy(suite), "mlrc": mlrc, "html": html}


_HELD = object()


def _run_once(pr: PlannedRun, label: str, failed: list, log, dataset_for, suite_name: str, *,
              wait: bool):
    """Run `pr` under its folder's lock unless it is done: its record, None (done by another
    process, or failed), or _HELD when another process holds the run (without `wait`)."""
    from dmlbench.bench.records import RunHeld
    from dmlbench.protocols.conventional import run_conventional, run_guard

    cfg = pr.cfg
    try:
        with run_guard(pr.run_dir, wait=wait):
            if _done(pr.run_dir, cfg):  # finished by another process since we looked
                log(f"{label}: done by another process, skipped")
                return None
            rec = _attempt(label, failed, log, lambda: run_conventional(
                cfg, pr.run_dir, suite=suite_name, dataset=dataset_for(cfg),
                position=pr.position))
    except RunHeld as e:
        log(f"{label}: held by another process, skipped ({e.holder})")
        return _HELD
    if rec is None:
        return None
    if rec["status"] == "diverged":
        log(f"{label}: diverged ({rec['error']})")
    else:
        m = rec["best"]["metrics"]
        log(f"{label}: P@1 {100 * m['precision_at_1']:.2f}  MAP@R "
            f"{100 * m['mean_average_precision_at_r']:.2f}  ({rec['wall_time_s']:.0f} s, "
            f"{rec['images_per_s']:.0f} img/s)")
    return rec


def _attempt(label: str, failed: list, log, fn):
    """`fn()`, or None after recording a failure: a UserError (the user's to fix) ends the
    suite; any other exception (a bug, the environment) is logged and the suite goes on."""
    try:
        return fn()
    except UserError:
        raise
    except Exception as e:
        failed.append((label, e))
        log(f"{label}: FAILED ({type(e).__name__}: {e})")
        logger.warning("%s: traceback of the failure:\n%s", label,
                       traceback.format_exc().rstrip())
        return None


def attach_importance_report(study: Any, paths: dict[str, Path],
                             artifact_dir: "str | Path") -> dict[str, str]:
    """Attach an importance report's files (importance.md and its PNGs) to `study` as Optuna
    artifacts in a FileSystemArtifactStore at `artifact_dir`, for optuna-dashboard (`optuna-
    dashboard STORAGE --artifact-dir ARTIFACT_DIR`). A file already attached under its name is
    rewritten under the same artifact id, so a re-run adds no duplicate. Returns {file name:
    artifact id}."""
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(artifact_dir))
    attached = {m.filename: m.artifact_id for m in get_all_artifact_meta(study)}
    out = {}
    for path in map(Path, paths.values()):
        if path.name in attached:
            with open(path, "rb") as f:
                store.write(attached[path.name], f)
            out[path.name] = attached[path.name]
        else:
            out[path.name] = upload_artifact(artifact_store=store, file_path=str(path),
                                             study_or_trial=study)
    return out


def mlrc_experiment(cfg: dict, opts: Any, out_dir: Path, *, suite: str | None = None,
                    dataset: Any = None, threads: int | None = None, log=None,
                    label: str = "") -> dict[str, Any]:
    """One MLRC experiment end to end, the one sequence both `dmlbench mlrc` and suites run:
    the search (or its continuation), the final evaluation, then the importance report
    (Markdown + PNGs, attached to the study as Optuna artifacts). Returns
    `protocols.mlrc.run_mlrc`'s result plus "importance" (the report's path, or None)."""
    from dmlbench.protocols import mlrc as S
    from dmlbench.protocols.mlrc import default_storage, run_mlrc
    from dmlbench.results.importance import write_importance_report

    log = log or logger.info
    res = run_mlrc(cfg, opts, out_dir, suite=suite, dataset=dataset, threads=threads, log=log)
    res["importance"] = None
    try:
        st = S.open_storage(opts.storage or default_storage(out_dir))
        study = S.load_study(res["study"], st)
        paths = write_importance_report(study, out_dir / res["study"] / "importance")
        res["importance"] = paths["markdown"]
        log(f"{label}importance report {paths['markdown']}")
        attach_importance_report(study, paths, out_dir / res["study"] / "artifacts")
        from dmlbench.protocols.mlrc.items import REPORT_ATTR, final_study

        # suite workers on the same storage need not write it again
        final_study(study).set_user_attr(REPORT_ATTR, str(paths["markdown"]))
    except UserError:
        raise
    except Exception as e:
        log(f"{label}importance report failed ({type(e).__name__}: {e})")
    return res


def _run_mlrc_part(suite: dict[str, Any], studies: list[PlannedStudy], mout: Path,
                   dataset_for, failed: list, threads: int | None, log,
                   published=None) -> dict[str, Any]:
    from dmlbench.results.tables import write_tables

    part, _ = mlrc_part(suite, mout)
    records, importance, names = [], {}, []
    for i, ps in enumerate(studies, 1):
        cfg = ps.cfg
        label = (f"[mlrc {i}/{len(studies)}] {cfg['dataset']['name']} "
                 f"{cfg['run']['name'] or cfg['method']['name']}")
        log(f"{label}: study {ps.study}")
        res = _attempt(label, failed, log, lambda: mlrc_experiment(
            cfg, ps.opts, ps.out_dir, suite=suite["name"], dataset=dataset_for(cfg),
            threads=threads, log=log, label=f"{label}: "))
        if res is None:
            continue
        names.append(res["study"])
        records += res["records"]
        if res["status"] == "failed":
            failed.append((label, RuntimeError(res["message"])))
            log(f"{label}: FAILED ({res['message']})")
        if res["importance"] is not None:
            importance[res["study"]] = res["importance"]
    report = part.get("report") or {}
    tables = {}
    if any(r.get("status") == "completed" for r in records) or any(mout.rglob("record.json")):
        tables = write_tables(mout, which=report.get("which", "best"), ci=report.get("ci", True),
                              published=published)
    return {"out_dir": mout, "tables": tables, "studies": names, "importance": importance,
            "records": records}
