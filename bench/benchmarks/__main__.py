"""`python -m dmlbench.bench.benchmarks [--quick] [NAME ...]`: run the benchmark scripts, print figures.

Each module in this package defines `main(quick: bool = False) -> dict`; its figures are
measured side by side in one process, so ratios are comparable on any machine.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

# the MLRC protocol's benchmark imports protocols, which bench may not: it lives in
# protocols/benchmarks.py (`python -m dmlbench.protocols.benchmarks`; `make bench` runs both)
ALL = ("evaluator", "training", "memvir", "das", "backbone_gpu", "clustering", "pipeline",
       "train_log")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dmlbench.bench.benchmarks", description=__doc__)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default: all of {', '.join(ALL)})")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--json", metavar="FILE", help="also write all figures to FILE as JSON")
    ns = p.parse_args(argv)
    unknown = [n for n in ns.names if n not in ALL]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; valid: {', '.join(ALL)}")
    figures = {}
    for name in ns.names or ALL:
        try:
            mod = importlib.import_module(f"dmlbench.bench.benchmarks.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"dmlbench.bench.benchmarks.{name}":
                print(f"== {name}: not available in this version")
                continue
            raise
        print(f"== {name}")
        t0 = time.perf_counter()
        figures[name] = mod.main(quick=ns.quick)
        print(f"   ({time.perf_counter() - t0:.0f} s)")
    if ns.json:
        with open(ns.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
