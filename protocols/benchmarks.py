"""`python -m dmlbench.protocols.benchmarks [--quick] [--json FILE]`: MLRC protocol costs on
the demo settings (bench/suites/demo.yaml, its `mlrc` part), printed (`make bench` runs it):

1. harness overhead per trial: the share of a trial's wall time (ask to tell) spent outside
   the training steps and validation evaluations, split into fold set-up inside `fit` (model
   and data on the device, checkpoints) and the rest (sampling, storage writes, fold results);
   plus the study bookkeeping alone (ask + user attributes + tell, no training) per storage;
2. how the search of one small MLRC experiment scales with 1 and 2 `dmlbench worker`
   processes (1 torch thread each) on a JournalStorage file, on this machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path


def _demo_mlrc() -> tuple[dict, dict]:
    """(config, search options dict) of the demo suite's MLRC part, normsoftmax run."""
    from dmlbench.bench import config as C
    from dmlbench.bench.suite import load_suite

    suite = load_suite("demo")
    part = suite["mlrc"]
    cfg = C.merge(C.merge(C.defaults(), suite["config"]), part["config"])
    cfg["method"] = {"name": "normsoftmax", "params": {}}
    cfg["run"]["protocol"] = "mlrc"
    return C.validate(cfg), copy.deepcopy(part["search"])


def _overhead(quick: bool) -> dict:
    from dmlbench.bench.data import load_configured
    from dmlbench.bench.train import fit
    from dmlbench.protocols import mlrc as S
    from dmlbench.protocols.mlrc import (FoldData, SearchOptions, build_settings, fold_config,
                                         work_on)

    cfg, search = _demo_mlrc()
    search.update(n_trials=3 if quick else 8, reproductions=1)
    data = FoldData(load_configured(cfg), 4)
    # the first fit of a process pays one-off costs (lazy imports, kernel set-up): measured
    # apart, as a worker pays them once, not per trial
    t0 = time.perf_counter()
    fit(fold_config(cfg, {"temperature": 0.5, "loss_lr": 0.01}, 0), *data.folds[0])
    warmup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        opts = SearchOptions.from_dict(search)
        name, settings = build_settings(cfg, opts, out)
        st = S.open_storage(f"sqlite:///{out / 'studies.db'}")
        S.create_or_check_study(name, st, settings, checked=("experiment", "budget"))
        summary = work_on(name, st, settings, out_dir=out, data=data, log=lambda s: None)
        trials = {t.number: t for t in S.load_study(name, st).get_trials()}
    rows = []
    for number, wall in summary.wall_s_by_trial.items():
        tm = trials[number].user_attrs["timing"]
        work = tm["train_s"] + tm["eval_s"]
        rows.append({"wall_s": wall, "work_s": work, "fit_setup_s": tm["fit_s"] - work,
                     "outside_fit_s": wall - tm["fit_s"]})
    wall = sum(r["wall_s"] for r in rows)
    fig = {
        "trials": len(rows), "mean_trial_s": wall / len(rows),
        "overhead_share": 1 - sum(r["work_s"] for r in rows) / wall,
        "fit_setup_share": sum(r["fit_setup_s"] for r in rows) / wall,
        "outside_fit_share": sum(r["outside_fit_s"] for r in rows) / wall,
        "per_trial_overhead_share": [1 - r["work_s"] / r["wall_s"] for r in rows],
        "process_warmup_s": warmup,
    }
    print(f"   harness overhead per trial (demo settings, {len(rows)} trials of 4 folds, mean "
          f"{fig['mean_trial_s']:.2f} s): {100 * fig['overhead_share']:.1f}% of trial time "
          f"(fold set-up in fit {100 * fig['fit_setup_share']:.1f}%, outside fit "
          f"{100 * fig['outside_fit_share']:.1f}%; per trial "
          + ", ".join(f"{100 * s:.1f}%" for s in fig["per_trial_overhead_share"])
          + f"); once per worker process: {warmup:.2f} s of warm-up in its first fit")
    return fig


def _bookkeeping(quick: bool) -> dict:
    """Seconds per trial of the study machinery alone: ask (sampling), the user attributes a
    trial writes, tell, per storage."""
    import optuna

    from dmlbench.protocols import mlrc as S

    n = 10 if quick else 30
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for kind, url in (("sqlite", f"sqlite:///{d}/b.db"), ("journal", f"journal://{d}/b.log")):
            st = S.open_storage(url)
            space = {"temperature": S.distribution(["log", 0.01, 1.0]),
                     "loss_lr": S.distribution(["log", 1e-4, 0.1])}
            study = optuna.create_study(storage=st.storage, direction="maximize",
                                        study_name=f"b-{uuid.uuid4().hex[:6]}",
                                        sampler=S.PerTrialSeededSampler("tpe", 0, space))

            def objective(trial):
                v = sum(S.suggest(trial, k, dist) for k, dist in space.items())
                for p in range(4):
                    trial.set_user_attr(f"fold_{p}", {"value": v, "fit_s": 1.0})
                trial.set_user_attr("fold_values", [v] * 4)
                trial.set_user_attr("timing", {"fit_s": 4.0})
                return v

            t0 = time.perf_counter()
            S.run_trials(study, objective, n_trials=n, max_failed=n, log=lambda s: None)
            out[kind] = (time.perf_counter() - t0) / n
    print("   study bookkeeping alone (ask, TPE sampling, attributes, tell), per trial: "
          + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in out.items())
          + f" (mean over {n} trials)")
    return out


def _scaling(quick: bool) -> dict:
    from dmlbench.protocols import mlrc as S
    from dmlbench.protocols.mlrc import SearchOptions, build_settings, spawn_workers

    cfg, search = _demo_mlrc()
    n_trials = 4 if quick else 8
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for workers in (1, 2):
            out = Path(d) / f"w{workers}"
            out.mkdir()
            url = f"journal://{out / 'studies.log'}"
            opts = SearchOptions.from_dict({**search, "n_trials": n_trials, "reproductions": 1,
                                            "study": f"bench-{workers}-{uuid.uuid4().hex[:6]}"})
            name, settings = build_settings(cfg, opts, out)
            S.create_or_check_study(name, S.open_storage(url), settings,
                                    checked=("experiment", "budget"))
            t0 = time.perf_counter()
            procs = spawn_workers(name, url, workers, out, threads=1)
            codes = [p.wait() for p in procs]
            wall = time.perf_counter() - t0
            if any(codes):
                raise RuntimeError(f"a worker exited with {codes}")
            trials = S.load_study(name, S.open_storage(url)).get_trials()
            done = [t for t in trials if t.state.name == "COMPLETE"]
            busy = statistics.fmean(t.user_attrs["timing"]["trial_s"] for t in done)
            rows[workers] = {"wall_s": wall, "complete": len(done),
                             "trials_started": len(trials), "mean_trial_s": busy}
    speedup = rows[1]["wall_s"] / rows[2]["wall_s"]
    print(f"   search of {n_trials} trials (demo settings, JournalStorage, 1 thread per worker, "
          f"wall incl. ~process start): 1 worker {rows[1]['wall_s']:.1f} s, 2 workers "
          f"{rows[2]['wall_s']:.1f} s -> speed-up x{speedup:.2f}; mean trial "
          f"{rows[1]['mean_trial_s']:.2f} s alone, {rows[2]['mean_trial_s']:.2f} s side by side")
    return {"n_trials": n_trials, "workers": rows, "speedup_2_workers": speedup}


def main(quick: bool = False) -> dict:
    """Measure and print the three figures; returns them."""
    return {"overhead": _overhead(quick), "bookkeeping": _bookkeeping(quick),
            "scaling": _scaling(quick)}


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dmlbench.protocols.benchmarks",
                                description="MLRC protocol costs on the demo settings.")
    p.add_argument("--quick", action="store_true", help="fewer trials")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    ns = p.parse_args(argv)
    from dmlbench.protocols.mlrc import quiet_optuna

    quiet_optuna()   # a script: Optuna's per-trial lines off, as on the command line
    print("== mlrc")
    t0 = time.perf_counter()
    figures = main(quick=ns.quick)
    print(f"   ({time.perf_counter() - t0:.0f} s)")
    if ns.json:
        with open(ns.json, "w", encoding="utf-8") as f:
            json.dump({"mlrc": figures}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
