"""The `dmlbench` command line."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from dmlbench.bench.errors import UserError

STORAGE = ("Storage URLs: sqlite:///FILE.db (or a path ending in .db; default, one process), "
           "journal:///ABS/FILE.log or journal://REL/FILE.log (or a path ending in .log; several "
           "processes on one machine), any SQLAlchemy URL such as "
           "postgresql://user:password@host:5432/db (several machines).")
EPILOG = ("Overrides are key=value pairs with dotted keys, e.g. train.lr=1e-4 "
          "method.params.alpha=2 dataset.name=glyphs. Errors a user can fix exit with code 2.")


class _Parser(argparse.ArgumentParser):
    """Options and positionals in any order (`run my.yaml --out X train.lr=1e-4`: each command's
    arguments are parsed intermixed), and a usage error as one line (a UserError, exit 2)."""

    _intermixed = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixed or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixed = True   # parse_known_intermixed_args calls parse_known_args twice
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False

    def error(self, message: str):
        raise UserError(f"{message}; see `{self.prog} --help`")


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dmlbench", description="Benchmark deep metric learning methods (MLRC and "
        "conventional protocols, MemVir, DAS, pytorch-metric-learning losses).", epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run the demo suite, or one run from a config file",
                       description="Without CONFIG: run the demo suite on the embedded `glyphs` "
                       "dataset and print its table. With a CONFIG YAML file: one run of the "
                       "config (overrides apply on top) and its record.", epilog=EPILOG)
    r.add_argument("args", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]")
    r.add_argument("--out", help="output folder (default: runs/demo or runs/single; "
                   "runs/mlrc for a config with run.protocol=mlrc)")
    _mlrc_exec_args(r)

    s = sub.add_parser("suite", help="run a suite by name or YAML file, then write its tables",
                       description="Run every run of a suite (skipping those already recorded "
                       "in the output folder) and write table.{md,csv,tex} there.", epilog=EPILOG)
    s.add_argument("suite", metavar="FILE|NAME")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--out", help="output folder (default: runs/SUITE_NAME)")
    s.add_argument("--plan", action="store_true", help="print the runs and MLRC studies it "
                   "would do with an estimate of their GPU hours, and stop")
    s.add_argument("--smoke", action="store_true", help="smoke test: every run of the suite "
                   "end to end on generated fixture trees in the datasets' real layouts, on the "
                   "preset's real path (its trunk with random weights, transforms, BN, "
                   "optimiser and schedule) at 32 px, 2 one-batch epochs, 1 seed, 1 search "
                   "trial and 1 reproduction (default output: runs/SUITE_NAME-smoke)")
    _mlrc_exec_args(s)

    m = sub.add_parser("mlrc", help="one MLRC experiment (search + final evaluation) from a config",
                       description="Run (or resume) the MLRC protocol for the config's dataset "
                       "and method: a 4-fold cross-validated Optuna search over the method's "
                       "search space, then the best parameters retrained R times and evaluated "
                       "on the test set (separated and concatenated); writes run records, the "
                       "MLRC table and the importance report.", epilog=EPILOG + " " + STORAGE)
    m.add_argument("config", metavar="CONFIG")
    m.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    m.add_argument("--n-trials", type=int, default=None, help="completed trials (default 50)")
    m.add_argument("--sampler", default=None, choices=("tpe", "gp", "random", "grid"))
    m.add_argument("--grid-points", type=int, default=None,
                   help="values per float/int parameter with --sampler grid (default 3)")
    m.add_argument("--pruner", default=None, choices=("none", "median"),
                   help="prune trials between folds (default none)")
    m.add_argument("--seed", type=int, default=None, help="search seed (default: run.seed)")
    m.add_argument("--reproductions", type=int, default=None,
                   help="retrainings of the best parameters for the test table (default 3)")
    m.add_argument("--space", action="append", default=[], metavar="PARAM=VALUE",
                   help="override a search range ([log, 1e-4, 1e-1]) or fix a value; repeatable")
    m.add_argument("--study", help="study name (default: derived from the settings)")
    m.add_argument("--out", help="output folder (default: runs/mlrc)")
    _mlrc_exec_args(m)

    w = sub.add_parser("worker", help="add a worker process to a running MLRC study",
                       description="Join study STUDY and run its trials until the study has "
                       "its n_trials finished trials; any number of workers may join and leave. "
                       "Everything else comes from the study's stored settings.",
                       epilog=STORAGE)
    w.add_argument("study", metavar="STUDY")
    w.add_argument("--storage", required=True, metavar="URL")
    w.add_argument("--out", help="where trial checkpoints go (default: the study's output folder)")
    w.add_argument("--max-trials", type=_positive, default=None,
                   help="leave after this many trials")
    w.add_argument("--threads", type=_positive, default=None, help="torch CPU threads")

    im = sub.add_parser("importance", help="hyperparameter importance report of a study",
                        description="Write importance.md and PNGs for STUDY: fANOVA and "
                        "PED-ANOVA importances, pairwise interactions, marginal curves, history.",
                        epilog=STORAGE)
    im.add_argument("study", metavar="STUDY")
    im.add_argument("--storage", metavar="URL", help="default: the SQLite file under runs/ that "
                    "holds STUDY")
    im.add_argument("--out", help="output folder (default: the study's output folder/"
                    "STUDY/importance)")

    sl = sub.add_parser("studies", help="list the studies of a storage with their trial states",
                        epilog=STORAGE)
    sl.add_argument("--storage", metavar="URL", help="default: every runs/**/studies.db")

    rep = sub.add_parser("report", help="turn a folder of run records into tables",
                         description="Read every run record under RUNS_DIR and write "
                         "table.md, table.csv and table.tex (rows: methods; columns: dataset x "
                         "metric; mean +- std over seeds; deltas of '+method' rows to their base).")
    rep.add_argument("runs_dir", metavar="RUNS_DIR")
    rep.add_argument("--which", choices=("best", "final"), default="best",
                     help="the best evaluation (chosen on the test set, as papers do) or the last")
    rep.add_argument("--ci", action="store_true",
                     help="t-based 95%% confidence intervals instead of standard deviations")
    rep.add_argument("--out", help="where to write the tables (default: RUNS_DIR)")
    rep.add_argument("--published", metavar="NAME|CSV",
                     help="show published numbers beside the measured ones, with the difference: "
                     "a name of the shipped published numbers (the preset suites' names: "
                     "memvir-table2, memvir-table4, das-table2, mlrc) or a CSV file with columns "
                     "method, dataset, metric, value (percent)[, protocol]")
    rep.add_argument("--deltas", action="store_true",
                     help="also print each '+method' row's paired delta to its base (same "
                     "seeds) with a t-based 95%% CI, in percentage points")
    rep.add_argument("--html", action="store_true",
                     help="also write one self-contained HTML report (OUT/report.html; opens "
                     "from disk, no network): sortable table, learning curves, MLRC and "
                     "importance plots, the settings behind each number; a suite's MLRC part "
                     "in the sibling folder RUNS_DIR-mlrc is included")

    ds = sub.add_parser("datasets", help="download or check CUB-200-2011, CARS196, SOP",
                        description="download: fetch the public archive (resumable, verified, "
                        "safely and atomically extracted) into ROOT. check: verify the layout and "
                        "image/class counts and read every image once, naming unreadable files.")
    ds.add_argument("action", choices=("download", "check"))
    ds.add_argument("name", metavar="NAME", help="cub, cars196 or sop; check also takes "
                    "folder and csv (your own data, with --root as dataset.root)")
    ds.add_argument("--root", required=True, metavar="DIR", help="the dataset root folder")
    ds.add_argument("--no-images", action="store_true",
                    help="check: verify layout and counts only, do not decode every image")

    ls = sub.add_parser("list", help="list datasets, methods, protocols, suites, trunks")
    ls.add_argument("what", nargs="?", default="all",
                    choices=("all", "datasets", "methods", "protocols", "suites", "trunks"))
    return p


def _mlrc_exec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MLRC execution (suites' MLRC part, mlrc configs)")
    g.add_argument("--storage", metavar="URL", help="Optuna storage (default: sqlite file "
                   "OUT/studies.db)")
    g.add_argument("--workers", type=_positive, default=None,
                   help="worker processes per study on this machine (needs journal or RDB "
                   "storage)")
    g.add_argument("--threads", type=_positive, default=None,
                   help="torch CPU threads per worker (a conventional run's: train.threads=N)")


def _search_overrides(ns: argparse.Namespace) -> dict:
    out = {}
    if getattr(ns, "storage", None):
        out["storage"] = ns.storage
    if getattr(ns, "workers", None) is not None:
        out["workers"] = ns.workers
    return out


def _refuse_exec_options(given: list[str], what: str) -> None:
    """--storage, --workers and --threads set how MLRC studies run: refuse them (they would be
    ignored) for `what`, which runs none."""
    if given:
        many = len(given) > 1
        raise UserError(f"{' and '.join(given)} {'apply' if many else 'applies'} to MLRC studies "
                        f"only, and {what} runs none; drop {'them' if many else 'it'}"
                        + ("; a conventional run's CPU threads are set with train.threads=N"
                           if "--threads" in given else ""))


def _sqlite_workers(workers: Any, storage: Any) -> None:
    """Several worker processes cannot share a SQLite file: refuse before anything is written."""
    from dmlbench.protocols.study import parse_storage_url

    if isinstance(workers, int) and workers > 1 and (
            storage is None or parse_storage_url(str(storage))[0] == "sqlite"):
        raise UserError(f"{workers} workers need a storage that several processes can share: "
                        "give e.g. --storage journal:///abs/path/studies.log or a PostgreSQL URL "
                        "(SQLite, the default, is for one process)")


def _protocol_override(overrides: list[str]) -> bool:
    from dmlbench.bench.config import parse_override

    return any(parse_override(o)[0] == ["run", "protocol"] for o in overrides)


def _print_table(tables: dict) -> None:
    md = tables.get("markdown") or tables.get("md")
    if md is not None and Path(md).exists():
        print(Path(md).read_text(encoding="utf-8"))
    for kind, path in tables.items():
        print(f"{kind}: {path}")


def _cmd_datasets(action: str, name: str, root: str, read_images: bool) -> int:
    from dmlbench.bench.data.download import CHECKABLE, DATASET_INFO, check, download
    from dmlbench.bench.errors import unknown_name

    if action == "download":
        if name not in DATASET_INFO:
            raise unknown_name("downloadable dataset", name, list(DATASET_INFO))
        path = download(name, root)
        print(f"{name}: ready at {path}")
        return 0
    if name not in CHECKABLE:
        raise unknown_name("checkable dataset", name, list(CHECKABLE))
    if not Path(root).expanduser().exists():
        raise UserError(f"--root {root!r} does not exist; pass the folder that holds the dataset"
                        + (f" (get it with `dmlbench datasets download {name} --root DIR`)"
                           if name in DATASET_INFO else ""))
    report = check(name, root, read_images=read_images, progress=sys.stderr.isatty())
    if not report.counts:   # not loadable at all: the loader's reason is the message
        raise UserError(report.problems[0])
    print(report.format())
    if not report.ok:
        raise UserError(f"{name} at {report.root}: {report.summary()} (listed on stdout); "
                        f"{report.fix()}")
    return 0


def _cmd_list(what: str) -> None:
    from dmlbench.bench.data import list_datasets
    from dmlbench.bench.models import list_trunks
    from dmlbench.bench.suite import list_suites
    from dmlbench.methods import get_method, list_methods
    from dmlbench.protocols import list_protocols

    if what in ("all", "datasets"):
        print("datasets:  " + ", ".join(list_datasets()))
    if what in ("all", "protocols"):
        print("protocols: " + ", ".join(list_protocols()))
    if what in ("all", "suites"):
        print("suites:    " + ", ".join(list_suites()))
    if what in ("all", "trunks"):
        print("trunks:    " + ", ".join(list_trunks()))
    if what in ("all", "methods"):
        print("methods:")
        for name in list_methods():
            spec = get_method(name)
            init = spec.defaults.get("weight_init")
            extra = f" [weight_init: {init}]" if init is not None else ""
            print(f"  {name:32s} {spec.description}{extra}")


def _num(x: float) -> str:
    """A count for humans: 1234 -> 1,234; 1.2e6 -> 1.2M; nan -> ?."""
    if x != x:
        return "?"
    for unit, div in (("G", 1e9), ("M", 1e6)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:,.0f}"


def _gpu_h(h: float) -> str:
    return "? GPU h" if h != h else f"{h:,.1f} GPU h" if h < 100 else f"{h:,.0f} GPU h"


def _print_plan(name: str, overrides: list[str], out: str | None, search: dict | None,
                smoke: bool) -> int:
    from dmlbench.bench import suite as S

    suite, _, runs, studies, _ = S.prepare(name, overrides, out, search=search, smoke=smoke)
    conv_h = mlrc_h = 0.0
    for pr in runs:
        c, t = pr.cfg, pr.cfg["train"]
        e = S.estimate_run(c, measure=smoke)
        conv_h += e.gpu_hours
        print(f"{c['dataset']['name']:10s} {c['run']['protocol']:12s} "
              f"{c['run']['name'] or c['method']['name']:28s} seed {c['run']['seed']}  "
              f"{t['epochs']} epochs x {_num(e.iterations)} it x {t['batch_size']} img, "
              f"{e.evaluations} evals x {_num(e.eval_set)} img: "
              f"{'<= ' if e.upper_bound else '~'}{_gpu_h(e.gpu_hours)} -> {pr.run_dir}")
    for ps in studies:
        c, o, t = ps.cfg, ps.opts, ps.cfg["train"]
        e = S.estimate_study(ps, measure=smoke)
        mlrc_h += e.gpu_hours
        n = ps.budget.get("n_trials", o.n_trials)
        reps = ps.budget.get("reproductions", o.reproductions)
        print(f"{c['dataset']['name']:10s} {'mlrc':12s} "
              f"{c['run']['name'] or c['method']['name']:28s} {n} trials x "
              f"{o.num_folds} folds + {reps} x {o.num_folds} folds, each <= "
              f"{t['epochs']} epochs x {_num(e.iterations)} it x {t['batch_size']} img, "
              f"eval every {t['eval_every']} on {_num(e.eval_set)} img: "
              f"<= {_gpu_h(e.gpu_hours)} -> {ps.out_dir / ps.study}")
    print(f"{len(runs)} runs" + (f", {len(studies)} MLRC studies" if studies else "")
          + f" of suite {suite['name']}" + (" (smoke mode)" if smoke else ""))
    parts = []
    if runs:
        parts.append(f"conventional ~{_gpu_h(conv_h)}")
    if studies:
        parts.append(f"MLRC <= {_gpu_h(mlrc_h)} (upper bound: every fit to its last epoch; "
                     "early stopping usually ends fits far earlier)")
    total = conv_h + mlrc_h
    print("Estimated GPU hours: " + "; ".join(parts)
          + f"; total {'<= ' if studies else '~'}{_gpu_h(total)}")
    print(S.throughput_note())
    return 0


def _cmd_suite(name: str, overrides: list[str], out: str | None, plan_only: bool,
               search: dict | None = None, threads: int | None = None,
               smoke: bool = False) -> int:
    from dmlbench.bench import suite as S

    if plan_only and smoke:
        raise UserError("--plan and --smoke do not go together: --plan estimates the GPU hours of "
                        "the real suite, --smoke runs it in seconds on fixture data; use one")
    suite = S.load_suite(name)
    if _protocol_override(overrides):
        raise UserError(f"run.protocol cannot be overridden for suite {suite['name']!r}: a "
                        "suite's protocol is set in its file (protocol: mlrc, or an `mlrc:` "
                        "part); for one MLRC experiment run `dmlbench mlrc CONFIG`")
    part, _ = S.mlrc_part(suite, Path("."))
    given = [f"--{k}" for k in ("storage", "workers") if k in (search or {})]
    given += ["--threads"] if threads is not None else []
    if part is None:
        _refuse_exec_options(given, f"suite {suite['name']!r} (it has no MLRC part)")
    else:
        eff = {**(part.get("search") or {}), **(S.SMOKE_SEARCH if smoke else {}),
               **(search or {})}
        _sqlite_workers(eff.get("workers"), eff.get("storage"))
    if plan_only:
        return _print_plan(name, overrides, out, search, smoke)
    res = S.run_suite(name, overrides, out, search=search, threads=threads, smoke=smoke)
    if res["tables"]:
        _print_table(res["tables"])
    if res.get("mlrc"):
        m = res["mlrc"]
        if m["tables"]:
            print(f"\nMLRC ({m['out_dir']}):")
            _print_table(m["tables"])
        for study, path in m["importance"].items():
            print(f"importance report ({study}): {path}")
    if res.get("html"):
        print(f"HTML report: {res['html']}")
    return 1 if res["failed"] else 0


def _cmd_mlrc(cfg: dict, ns: argparse.Namespace, out: str | None) -> int:
    from dmlbench.bench.config import parse_override
    from dmlbench.bench.suite import mlrc_experiment
    from dmlbench.protocols.mlrc import SearchOptions
    from dmlbench.results.tables import write_tables

    space = {}
    for text in getattr(ns, "space", []) or []:
        parts, value = parse_override(text)
        space[".".join(parts)] = value
    # only what the command line gave: SearchOptions holds the defaults
    given = {k: getattr(ns, k, None) for k in ("n_trials", "sampler", "grid_points", "pruner",
                                               "seed", "reproductions", "study")}
    sd = {**{k: v for k, v in given.items() if v is not None}, "space": space,
          **_search_overrides(ns)}
    opts = SearchOptions.from_dict(sd, where="option")
    out_dir = Path(out or Path(cfg["run"]["output"]) / "mlrc")
    res = mlrc_experiment(cfg, opts, out_dir, threads=ns.threads)
    if res["records"]:
        _print_table(write_tables(out_dir, ci=True))
    if res["importance"] is not None:
        print(f"importance report ({res['study']}): {res['importance']}")
    if res["status"] == "failed":
        print(f"study {res['study']}: {res['message']}")
        return 1
    return 0


def _find_storage(study: str) -> str:
    """The default SQLite file under runs/ that holds `study`."""
    from dmlbench.protocols import study as S

    candidates = sorted(Path("runs").glob("**/studies.db"))
    for db in candidates:
        st = S.open_storage(f"sqlite:///{db}")
        if study in S.list_study_names(st):
            return f"sqlite:///{db}"
    raise UserError(f"no SQLite storage under runs/ holds study {study!r}"
                    + (f" (looked in {', '.join(map(str, candidates))})" if candidates else "")
                    + "; pass --storage URL")


def _cmd_importance(study_name: str, storage: str | None, out: str | None) -> int:
    from dmlbench.bench.suite import attach_importance_report
    from dmlbench.protocols import study as S
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


def _cmd_studies(storage: str | None) -> int:
    from dmlbench.protocols import study as S

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
            if stale:
                one = len(stale) == 1
                print(f"    stale: trial{'' if one else 's'} "
                      + ", ".join(str(t.number) for t in stale)
                      + f": no heartbeat for more than the {S.grace_period(st)} s grace period "
                      f"(the worker died); the next worker on the study re-queues "
                      f"{'it' if one else 'them'}")
    return 0


def _cmd_run(args: list[str], out: str | None, ns: argparse.Namespace | None = None) -> int:
    if args and "=" not in args[0]:
        from dmlbench.bench.config import load_config
        from dmlbench.protocols.conventional import run_conventional, run_id

        cfg = load_config(args[0], args[1:])
        if cfg["run"]["protocol"] == "mlrc":
            return _cmd_mlrc(cfg, ns or argparse.Namespace(threads=None), out)
        _refuse_exec_options([f"--{k}" for k in ("storage", "workers", "threads")
                              if getattr(ns, k, None) is not None],
                             f"a conventional run ({args[0]} has run.protocol=conventional)")
        out_dir = Path(out or Path(cfg["run"]["output"]) / "single")
        rec = run_conventional(cfg, out_dir / run_id(cfg))
        if rec["status"] != "completed":
            print(f"run {rec['run_id']}: {rec['status']} ({rec['error']})")
            return 1
        best = rec["best"]
        print(f"run {rec['run_id']}: best at epoch {best['epoch']}: " + ", ".join(
            f"{k} {100 * v:.2f}" for k, v in best["metrics"].items()))
        print(f"record: {out_dir / run_id(cfg) / 'record.json'}")
        return 0
    if _protocol_override(args):
        raise UserError("`dmlbench run` without a CONFIG file runs the demo suite, whose "
                        "protocols are fixed; for MLRC run `dmlbench mlrc CONFIG` (one "
                        "experiment) or `dmlbench suite demo` (the demo with its MLRC part)")
    return _cmd_suite("demo", args, out, False,
                      search=_search_overrides(ns) if ns is not None else None,
                      threads=getattr(ns, "threads", None))


def _one_line(e: UserError) -> str:
    """The message of a UserError; one raised in a DataLoader worker process comes back wrapped
    in the worker's traceback, whose last line is the original message."""
    lines = str(e).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught "):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in lines)


class _StderrLines(logging.Handler):
    """Records of the `dmlbench` logger as lines on the current sys.stderr: INFO as it is
    (progress, resumes), warnings as `dmlbench: warning: ...`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = record.getMessage()
            if record.levelno >= logging.WARNING:
                line = f"dmlbench: {record.levelname.lower()}: {line}"
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _log_to_stderr():
    """Show INFO lines of the `dmlbench` logger on stderr while a command runs (library code
    only logs; the command line decides where lines go)."""
    logger = logging.getLogger("dmlbench")
    handler, level = _StderrLines(logging.INFO), logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run the `dmlbench` command line `argv` (default: sys.argv[1:]); returns the exit code."""
    try:
        with _log_to_stderr():
            code = _main(argv)
        sys.stdout.flush()   # a reader that went away shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # `dmlbench report DIR | head`: the reader has what it wanted; stop quietly, as a
        # process killed by SIGPIPE would (exit 128 + 13)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):   # stdout is not a file (captured in-process)
            pass
        return 141


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    try:
        ns = parser.parse_args(argv)
        from dmlbench.bench import distributed

        if ns.command in ("run", "suite", "mlrc", "worker", "importance", "studies"):
            from dmlbench.protocols.study import quiet_optuna

            quiet_optuna()

        if distributed.launched() and ns.command in ("mlrc", "worker"):
            raise UserError("MLRC searches are not data-parallel: start one `dmlbench worker` "
                            "per GPU (CUDA_VISIBLE_DEVICES=i) on a shared storage instead of "
                            "torchrun")
        if distributed.launched() and os.environ.get("RANK", "0") != "0":
            sys.stdout = open(os.devnull, "w")  # rank 0 reports; errors still reach stderr
        if ns.command == "run":
            return _cmd_run(ns.args, ns.out, ns)
        if ns.command == "suite":
            return _cmd_suite(ns.suite, ns.overrides, ns.out, ns.plan,
                              search=_search_overrides(ns), threads=ns.threads, smoke=ns.smoke)
        if ns.command == "mlrc":
            from dmlbench.bench.config import load_config

            cfg = load_config(ns.config, ns.overrides + ["run.protocol=mlrc"])
            return _cmd_mlrc(cfg, ns, ns.out)
        if ns.command == "worker":
            from dmlbench.protocols.mlrc import run_worker
            from dmlbench.protocols.study import check_exists

            check_exists(ns.storage)
            summary = run_worker(ns.study, ns.storage, out_dir=ns.out, max_trials=ns.max_trials,
                                 threads=ns.threads)
            print(f"worker done: ran {len(summary.ran)} trials; study: " + ", ".join(
                f"{v} {k.lower()}" for k, v in sorted(summary.states.items()))
                + f"; {summary.stopped}")
            return 0
        if ns.command == "importance":
            return _cmd_importance(ns.study, ns.storage, ns.out)
        if ns.command == "studies":
            return _cmd_studies(ns.storage)
        if ns.command == "report":
            from dmlbench.results.tables import write_tables

            published = None
            if ns.published:
                from dmlbench.bench.suite import load_published

                published = load_published(ns.published)
                published.attrs["name"] = ns.published
            _print_table(write_tables(ns.runs_dir, ns.out, which=ns.which, ci=ns.ci,
                                      published=published))
            if ns.deltas:
                from dmlbench.results.deltas import deltas_markdown, paired_deltas
                from dmlbench.results.tables import default_metrics, load_runs

                df = load_runs(ns.runs_dir, which=ns.which)
                print("\n" + deltas_markdown(paired_deltas(df, default_metrics(df.columns))))
            if ns.html:
                from dmlbench.results.html import write_html_report

                runs = Path(ns.runs_dir)
                mlrc_part = runs.parent / f"{runs.resolve().name}-mlrc"
                dirs = [runs] + ([mlrc_part] if mlrc_part.is_dir() else [])
                path = write_html_report(dirs, Path(ns.out or runs) / "report.html",
                                         published=published, which=ns.which,
                                         ci=True if ns.ci else None)
                print(f"html: {path}")
            return 0
        if ns.command == "list":
            _cmd_list(ns.what)
            return 0
        if ns.command == "datasets":
            return _cmd_datasets(ns.action, ns.name, ns.root, not ns.no_images)
        parser.print_help()
        return 2
    except UserError as e:
        print(f"dmlbench: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("dmlbench: interrupted; finished runs are kept, re-run the command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
