"""The `dmlbench` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import UserError

EPILOG = ("Overrides are key=value pairs with dotted keys, e.g. train.lr=1e-4 "
          "method.params.alpha=2 dataset.name=glyphs. Errors a user can fix exit with code 2.")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dmlbench", description="Benchmark deep metric learning methods (MLRC and "
        "conventional protocols, MemVir, DAS, pytorch-metric-learning losses).", epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run the demo suite, or one run from a config file",
                       description="Without CONFIG: run the demo suite on the embedded `glyphs` "
                       "dataset and print its table. With a CONFIG YAML file: one run of the "
                       "config (overrides apply on top) and its record.", epilog=EPILOG)
    r.add_argument("args", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]")
    r.add_argument("--out", help="output folder (default: runs/demo or runs/single)")

    s = sub.add_parser("suite", help="run a suite by name or YAML file, then write its tables",
                       description="Run every run of a suite (skipping those already recorded "
                       "in the output folder) and write table.{md,csv,tex} there.", epilog=EPILOG)
    s.add_argument("suite", metavar="FILE|NAME")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--out", help="output folder (default: runs/SUITE_NAME)")
    s.add_argument("--plan", action="store_true", help="print the runs it would do and stop")

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

    ls = sub.add_parser("list", help="list datasets, methods, protocols, suites, trunks")
    ls.add_argument("what", nargs="?", default="all",
                    choices=("all", "datasets", "methods", "protocols", "suites", "trunks"))
    return p


def _print_table(tables: dict) -> None:
    md = tables.get("markdown") or tables.get("md")
    if md is not None and Path(md).exists():
        print(Path(md).read_text(encoding="utf-8"))
    for kind, path in tables.items():
        print(f"{kind}: {path}")


def _cmd_list(what: str) -> None:
    from bench.data import list_datasets
    from bench.models import list_trunks
    from bench.suite import list_suites
    from methods import get_method, list_methods
    from protocols import list_protocols

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
            print(f"  {name:32s} {spec.description}")


def _cmd_suite(name: str, overrides: list[str], out: str | None, plan_only: bool) -> int:
    from bench import suite as S

    if plan_only:
        suite = S.load_suite(name)
        out_dir = Path(out or Path("runs") / suite["name"])
        runs = S.plan(suite, overrides, out_dir)
        for pr in runs:
            c = pr.cfg
            print(f"{c['dataset']['name']:10s} {c['run']['protocol']:12s} "
                  f"{c['run']['name'] or c['method']['name']:28s} seed {c['run']['seed']}  "
                  f"{c['train']['epochs']} epochs -> {pr.run_dir}")
        print(f"{len(runs)} runs")
        return 0
    res = S.run_suite(name, overrides, out)
    _print_table(res["tables"])
    return 1 if res["failed"] else 0


def _cmd_run(args: list[str], out: str | None) -> int:
    if args and "=" not in args[0]:
        from bench.config import load_config
        from protocols.conventional import run_conventional, run_id

        cfg = load_config(args[0], args[1:])
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
    return _cmd_suite("demo", args, out, False)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    try:
        if ns.command == "run":
            return _cmd_run(ns.args, ns.out)
        if ns.command == "suite":
            return _cmd_suite(ns.suite, ns.overrides, ns.out, ns.plan)
        if ns.command == "report":
            from results.tables import write_tables

            _print_table(write_tables(ns.runs_dir, ns.out, which=ns.which, ci=ns.ci))
            return 0
        if ns.command == "list":
            _cmd_list(ns.what)
            return 0
        parser.print_help()
        return 2
    except UserError as e:
        print(f"dmlbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("dmlbench: interrupted; finished runs are kept, re-run the command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
