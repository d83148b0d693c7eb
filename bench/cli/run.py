"""`dmlbench run` (the demo suite, or one run from a config) and `dmlbench mlrc` (one MLRC
experiment)."""
from __future__ import annotations

import argparse
from pathlib import Path

from dmlbench.bench.cli.common import (EPILOG, STORAGE, mlrc_exec_args, print_table,
                                       protocol_override, refuse_exec_options, search_overrides)
from dmlbench.bench.errors import UserError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run the demo suite, or one run from a config file",
                       description="Without CONFIG: run the demo suite on the embedded `glyphs` "
                       "dataset and print its table. With a CONFIG YAML file: one run of the "
                       "config (overrides apply on top) and its record.", epilog=EPILOG)
    r.add_argument("args", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]")
    r.add_argument("--out", help="output folder (default: runs/demo or runs/single; "
                   "runs/mlrc for a config with run.protocol=mlrc)")
    mlrc_exec_args(r)
    r.set_defaults(handler=lambda ns: cmd_run(ns.args, ns.out, ns))

    m = sub.add_parser("mlrc", help="one MLRC experiment (search + final evaluation) from a config",
                       description="Run (or resume) the MLRC protocol for the config's dataset "
                       "and method: a 4-fold cross-validated Optuna search over the method's "
                       "search space, then the best parameters retrained R times and evaluated "
                       "on the test set (separated and concatenated); writes run records, the "
                       "MLRC table and the importance report.", epilog=EPILOG + " " + STORAGE)
    m.add_argument("config", metavar="CONFIG")
    m.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    from dmlbench.protocols.mlrc.options import SearchOptions

    def default(key: str) -> str:  # the model's default, so help never disagrees with it
        return f"(default {SearchOptions.model_fields[key].default})"

    m.add_argument("--n-trials", type=int, default=None,
                   help=f"completed trials {default('n_trials')}")
    m.add_argument("--sampler", default=None, choices=("tpe", "gp", "random", "grid"),
                   help=f"the Optuna sampler {default('sampler')}")
    m.add_argument("--grid-points", type=int, default=None,
                   help=f"values per float/int parameter with --sampler grid "
                        f"{default('grid_points')}")
    m.add_argument("--pruner", default=None, choices=("none", "median"),
                   help=f"prune trials between folds {default('pruner')}")
    m.add_argument("--seed", type=int, default=None, help="search seed (default: run.seed)")
    m.add_argument("--reproductions", type=int, default=None,
                   help="retrainings of the best parameters for the test table "
                        f"{default('reproductions')}")
    m.add_argument("--space", action="append", default=[], metavar="PARAM=VALUE",
                   help="override a search range ([log, 1e-4, 1e-1]) or fix a value; repeatable")
    m.add_argument("--study", help="study name (default: derived from the settings)")
    m.add_argument("--out", help="output folder (default: runs/mlrc)")
    mlrc_exec_args(m)
    m.set_defaults(handler=_mlrc_command)


def _mlrc_command(ns: argparse.Namespace) -> int:
    from dmlbench.bench.config import load_config

    cfg = load_config(ns.config, ns.overrides + ["run.protocol=mlrc"])
    return cmd_mlrc(cfg, ns, ns.out)


def cmd_mlrc(cfg: dict, ns: argparse.Namespace, out: str | None) -> int:
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
          **search_overrides(ns)}
    opts = SearchOptions.from_dict(sd, where="option")
    out_dir = Path(out or Path(cfg["run"]["output"]) / "mlrc")
    res = mlrc_experiment(cfg, opts, out_dir, threads=ns.threads)
    if res["records"]:
        print_table(write_tables(out_dir, ci=True))
    if res["importance"] is not None:
        print(f"importance report ({res['study']}): {res['importance']}")
    if res["status"] == "failed":
        print(f"study {res['study']}: {res['message']}")
        return 1
    return 0


def cmd_run(args: list[str], out: str | None, ns: argparse.Namespace | None = None) -> int:
    if args and "=" not in args[0]:
        from dmlbench.bench.config import load_config
        from dmlbench.protocols.conventional import run_conventional, run_id

        cfg = load_config(args[0], args[1:])
        if cfg["run"]["protocol"] == "mlrc":
            return cmd_mlrc(cfg, ns or argparse.Namespace(threads=None), out)
        refuse_exec_options([f"--{k}" for k in ("storage", "workers", "threads")
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
    if protocol_override(args):
        raise UserError("`dmlbench run` without a CONFIG file runs the demo suite, whose "
                        "protocols are fixed; for MLRC run `dmlbench mlrc CONFIG` (one "
                        "experiment) or `dmlbench suite demo` (the demo with its MLRC part)")
    from dmlbench.bench.cli.suite import cmd_suite

    return cmd_suite("demo", args, out, False,
                     search=search_overrides(ns) if ns is not None else None,
                     threads=getattr(ns, "threads", None))
