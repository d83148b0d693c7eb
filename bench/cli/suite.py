"""`dmlbench suite`: run a suite, or print its plan with estimated GPU hours."""
from __future__ import annotations

import argparse
from pathlib import Path

from dmlbench.bench.cli.common import (EPILOG, mlrc_exec_args, print_table, protocol_override,
                                       refuse_exec_options, search_overrides, sqlite_workers)
from dmlbench.bench.errors import UserError


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    mlrc_exec_args(s)
    s.set_defaults(handler=lambda ns: cmd_suite(ns.suite, ns.overrides, ns.out, ns.plan,
                                                search=search_overrides(ns), threads=ns.threads,
                                                smoke=ns.smoke))


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


def _span(lo: float, hi: float) -> str:
    a, b = _gpu_h(lo), _gpu_h(hi)
    return b if a == b or lo != lo else f"{a.split()[0]} - {b}"


def _source(e) -> str:
    return "measured" if e.measured else "assumed"


def _print_plan(name: str, overrides: list[str], out: str | None, search: dict | None,
                smoke: bool) -> int:
    from dmlbench.bench import suite as S
    from dmlbench.bench.calibrate import calibration_path, device_name, load_calibration

    suite, _, runs, studies, _ = S.prepare(name, overrides, out, search=search, smoke=smoke)
    cal, device = load_calibration(), device_name()
    conv_h = mlrc_h = 0.0
    ests = []
    for pr in runs:
        c, t = pr.cfg, pr.cfg["train"]
        e = S.estimate_run(c, measure=smoke, calibration=cal, device=device)
        conv_h += e.gpu_hours
        ests.append(e)
        print(f"{c['dataset']['name']:10s} {c['run']['protocol']:12s} "
              f"{c['run']['name'] or c['method']['name']:28s} seed {c['run']['seed']}  "
              f"{t['epochs']} epochs x {_num(e.iterations)} it x {t['batch_size']} img, "
              f"{e.evaluations} evals x {_num(e.eval_set)} img: "
              f"{'<= ' if e.upper_bound else '~'}{_gpu_h(e.gpu_hours)} ({_source(e)}) "
              f"-> {pr.run_dir}")
    for ps in studies:
        c, o, t = ps.cfg, ps.opts, ps.cfg["train"]
        e = S.estimate_study(ps, measure=smoke, calibration=cal, device=device)
        mlrc_h += e.gpu_hours
        ests.append(e)
        n = ps.budget.get("n_trials", o.n_trials)
        reps = ps.budget.get("reproductions", o.reproductions)
        print(f"{c['dataset']['name']:10s} {'mlrc':12s} "
              f"{c['run']['name'] or c['method']['name']:28s} {n} trials x "
              f"{o.num_folds} folds + {reps} x {o.num_folds} folds, each "
              f"{e.stop_epochs[0]}-{t['epochs']} epochs x {_num(e.iterations)} it x "
              f"{t['batch_size']} img, eval every {t['eval_every']} on {_num(e.eval_set)} img: "
              f"{_span(*e.hours['model'])} ({_source(e)}) -> {ps.out_dir / ps.study}")
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
          + f"; total {'<= ' if studies else '~'}{_gpu_h(total)} (the model's step alone, "
          "data loading keeping up)")
    _print_paths(ests, device, str(calibration_path()))
    print(S.throughput_note())
    return 0


def _print_paths(ests: list, device: str, path: str) -> None:
    """The totals by data path, as ranges, and which figures are measured."""
    def tot(p: str, i: int) -> float:
        return sum(e.hours[p][i] for e in ests)

    print("By data path (min: every fit stopped at the earliest epoch train.patience allows; "
          "max: every fit to its last epoch):")
    print(f"  model alone (data keeping up)              {_span(tot('model', 0), tot('model', 1))}")
    print(f"  PIL path (dataset.cache=none, num_workers) {_span(tot('pil', 0), tot('pil', 1))}")
    print(f"  cache path (dataset.cache=device)          {_span(tot('cache', 0), tot('cache', 1))}")
    measured = sum(e.measured for e in ests)
    data = sum(e.data_measured for e in ests)
    memory = sum(e.in_memory for e in ests)
    print(f"Figures: model rates measured on {device!r} for {measured} of {len(ests)} lines "
          f"(hours on that device), assumed for {len(ests) - measured}; data-path costs "
          f"measured for {data}, assumed for {len(ests) - data - memory}"
          + (f", none for {memory} (in-memory dataset)" if memory else "")
          + f" (calibration file {path}; `dmlbench calibrate SUITE` measures them).")


def cmd_suite(name: str, overrides: list[str], out: str | None, plan_only: bool,
               search: dict | None = None, threads: int | None = None,
               smoke: bool = False) -> int:
    from dmlbench.bench import suite as S

    if plan_only and smoke:
        raise UserError("--plan and --smoke do not go together: --plan estimates the GPU hours of "
                        "the real suite, --smoke runs it in seconds on fixture data; use one")
    suite = S.load_suite(name)
    if protocol_override(overrides):
        raise UserError(f"run.protocol cannot be overridden for suite {suite['name']!r}: a "
                        "suite's protocol is set in its file (protocol: mlrc, or an `mlrc:` "
                        "part); for one MLRC experiment run `dmlbench mlrc CONFIG`")
    part, _ = S.mlrc_part(suite, Path("."))
    given = [f"--{k}" for k in ("storage", "workers") if k in (search or {})]
    given += ["--threads"] if threads is not None else []
    if part is None:
        refuse_exec_options(given, f"suite {suite['name']!r} (it has no MLRC part)")
    else:
        eff = {**(part.get("search") or {}), **(S.SMOKE_SEARCH if smoke else {}),
               **(search or {})}
        sqlite_workers(eff.get("workers"), eff.get("storage"))
    if plan_only:
        return _print_plan(name, overrides, out, search, smoke)
    res = S.run_suite(name, overrides, out, search=search, threads=threads, smoke=smoke)
    if res["tables"]:
        print_table(res["tables"])
    if res.get("mlrc"):
        m = res["mlrc"]
        if m["tables"]:
            print(f"\nMLRC ({m['out_dir']}):")
            print_table(m["tables"])
        for study, path in m["importance"].items():
            print(f"importance report ({study}): {path}")
    if res.get("html"):
        print(f"HTML report: {res['html']}")
    return 1 if res["failed"] else 0
