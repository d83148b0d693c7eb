"""`dmlbench worker`, `dmlbench importance` and `dmlbench studies`: the commands that work on
the Optuna studies of a storage."""
from __future__ import annotations

import argparse
from pathlib import Path

from dmlbench.bench.cli.common import STORAGE, positive
from dmlbench.bench.errors import UserError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="add a worker process to an MLRC study or a whole suite",
                       description="Join study STUDY and run its trials until the study has "
                       "its n_trials finished trials, then its waiting reproductions (unless "
                       "--max-trials); or, with --suite NAME, serve every MLRC "
                       "study of the suite (search trials, reproductions, reports) until the "
                       "suite is done. Any number of workers may join and leave. Everything "
                       "else comes from the studies' stored settings.",
                       epilog=STORAGE)
    w.add_argument("study", metavar="STUDY", nargs="?")
    w.add_argument("--suite", metavar="FILE|NAME", help="serve every MLRC study of this suite "
                   "(instead of STUDY)")
    w.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="with --suite: the config overrides `dmlbench suite` was given")
    w.add_argument("--storage", required=True, metavar="URL")
    w.add_argument("--out", help="STUDY: where trial checkpoints go (default: the study's "
                   "output folder); --suite: the suite's output folder (as for `dmlbench suite`)")
    w.add_argument("--smoke", action="store_true", help="with --suite: the suite in smoke mode")
    w.add_argument("--max-trials", type=positive, default=None,
                   help="leave after this many trials (STUDY only)")
    w.add_argument("--threads", type=positive, default=None, help="torch CPU threads")
    w.add_argument("--gpu-memory-fraction", type=float, default=None, metavar="F",
                   help="cap this process's CUDA memory at F of the device (set by `dmlbench "
                   "launch --workers-per-gpu N` to 1/N)")
    w.set_defaults(handler=cmd_worker)

    im = sub.add_parser("importance", help="hyperparameter importance report of a study",
                        description="Write importance.md and PNGs for STUDY: fANOVA and "
                        "PED-ANOVA importances, pairwise interactions, marginal curves, history.",
                        epilog=STORAGE)
    im.add_argument("study", metavar="STUDY")
    im.add_argument("--storage", metavar="URL", help="default: the SQLite file under runs/ that "
                    "holds STUDY")
    im.add_argument("--out", help="output folder (default: the study's output folder/"
                    "STUDY/importance)")
    im.set_defaults(handler=lambda ns: cmd_importance(ns.study, ns.storage, ns.out))

    sl = sub.add_parser("studies", help="list the studies of a storage with their trial states",
                        epilog=STORAGE)
    sl.add_argument("--storage", metavar="URL", help="default: every runs/**/studies.db")
    sl.set_defaults(handler=lambda ns: cmd_studies(ns.storage))


def cmd_worker(ns: argparse.Namespace) -> int:
    from dmlbench.protocols.mlrc import run_worker
    from dmlbench.protocols.mlrc.storage import check_exists

    if ns.study is None and ns.suite is None:
        raise UserError("give either STUDY or --suite NAME to `dmlbench worker` (exactly one)")
    if ns.gpu_memory_fraction is not None:
        from dmlbench.bench.suite.launch import apply_gpu_share

        apply_gpu_share(ns.gpu_memory_fraction)
    if ns.suite is not None:
        if ns.study is not None:   # argparse took the first KEY=VALUE for STUDY
            if "=" not in ns.study:
                raise UserError("give either STUDY or --suite NAME to `dmlbench worker` "
                                "(exactly one)")
            ns.overrides, ns.study = [ns.study, *ns.overrides], None
        return _suite_worker(ns)
    if ns.overrides or ns.smoke:
        raise UserError("KEY=VALUE overrides and --smoke go with --suite NAME, not with STUDY")
    check_exists(ns.storage)
    summary = run_worker(ns.study, ns.storage, out_dir=ns.out, max_trials=ns.max_trials,
                         threads=ns.threads)
    print(f"worker done: ran {len(summary.ran)} trials, {len(summary.reproductions)} "
          "final items; study: " + ", ".join(
        f"{v} {k.lower()}" for k, v in sorted(summary.states.items()))
        + f"; {summary.stopped}")
    return 0


def _suite_worker(ns: argparse.Namespace) -> int:
    from dmlbench.bench.suite.workers import run_suite_worker

    if ns.max_trials is not None:
        raise UserError("--max-trials goes with STUDY; a suite worker leaves when the suite is "
                        "done (stop it any time: its work goes back to the queue)")
    s = run_suite_worker(ns.suite, ns.storage, overrides=ns.overrides, out_dir=ns.out,
                         smoke=ns.smoke, threads=ns.threads)
    print(f"suite worker done: ran {len(s.trials)} trials, {len(s.items)} final items, "
          f"{len(s.reports)} reports in {s.wall_s:.0f} s ({s.idle_s:.0f} s waiting); studies: "
          + ", ".join(f"{v} {k}" for k, v in sorted(_count(s.states.values()).items())))
    return 0


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _print_items(st, name: str) -> None:
    """The state of a study's reproduction items, when it has any."""
    from dmlbench.protocols import mlrc as S
    from dmlbench.protocols.mlrc.items import final_study_name, item_table

    if final_study_name(name) not in S.list_study_names(st, companions=True):
        return
    final = S.load_study(final_study_name(name), st)
    items = sorted({t.user_attrs["item"] for t in final.get_trials(deepcopy=False)
                    if "item" in t.user_attrs})
    table = item_table(final, items)
    print(f"    final items (folds, reproductions): {len(table.done)} complete, "
          f"{len(table.running)} running, "
          f"{len(table.waiting)} waiting" + (f", {len(table.missing)} failed"
                                            if table.missing else ""))


def _find_storage(study: str) -> str:
    """The default SQLite file under runs/ that holds `study`."""
    from dmlbench.protocols import mlrc as S

    candidates = sorted(Path("runs").glob("**/studies.db"))
    for db in candidates:
        st = S.open_storage(f"sqlite:///{db}")
        if study in S.list_study_names(st):
            return f"sqlite:///{db}"
    raise UserError(f"no SQLite storage under runs/ holds study {study!r}"
                    + (f" (looked in {', '.join(map(str, candidates))})" if candidates else "")
                    + "; pass --storage URL")


def cmd_importance(study_name: str, storage: str | None, out: str | None) -> int:
    from dmlbench.bench.suite import attach_importance_report
    from dmlbench.protocols import mlrc as S
    from dmlbench.results.importance import write_importance_report

    url = storage or _find_storage(study_name)
    st = S.open_storage(url, create=False)
    study = S.load_study(study_name, st)
    try:
        base = Path(S.study_settings(study)["execution"]["out_dir"])
    except UserError:
        base = Path("runs")
    if out is None:
        out = str(base / study_name / "importance")
    paths = write_importance_report(study, out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    artifacts = base / study_name / "artifacts"
    attach_importance_report(study, paths, artifacts)
    print(f"attached to the study as Optuna artifacts in {artifacts} (optuna-dashboard {url} "
          f"--artifact-dir {artifacts})")
    return 0


def cmd_studies(storage: str | None) -> int:
    from dmlbench.protocols import mlrc as S

    urls = [storage] if storage else [f"sqlite:///{p}" for p in
                                      sorted(Path("runs").glob("**/studies.db"))]
    if not urls:
        raise UserError("no studies.db under runs/; pass --storage URL")
    for url in urls:
        st = S.open_storage(url, create=False)
        print(f"{st.display}:")
        for name in S.list_study_names(st):
            study = S.load_study(name, st)
            states = S.count_states(study.get_trials(deepcopy=False))
            stale = S.stale_trials(study, st)
            if stale:   # RUNNING in the storage, but their worker is gone
                states["RUNNING"] -= len(stale)
                states = {k: v for k, v in states.items() if v} | {"STALE": len(stale)}
            n = (study.user_attrs.get(S.SETTINGS_ATTR) or {}).get("budget", {}).get("n_trials")
            print(f"  {name}  " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items()))
                  + (f"  (n_trials {n})" if n else ""))
            _print_items(st, name)
            if stale:
                one = len(stale) == 1
                print(f"    stale: trial{'' if one else 's'} "
                      + ", ".join(str(t.number) for t in stale)
                      + f": no heartbeat for more than the {S.grace_period(st)} s grace period "
                      f"(the worker died); the next worker on the study re-queues "
                      f"{'it' if one else 'them'}")
    return 0
