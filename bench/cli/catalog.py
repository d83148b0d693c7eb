"""`dmlbench datasets` (download or check a dataset) and `dmlbench list` (what is
registered)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dmlbench.bench.errors import UserError


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    ds.set_defaults(handler=lambda ns: cmd_datasets(ns.action, ns.name, ns.root,
                                                    not ns.no_images))

    ls = sub.add_parser("list", help="list datasets, methods, protocols, suites, trunks")
    ls.add_argument("what", nargs="?", default="all",
                    choices=("all", "datasets", "methods", "protocols", "suites", "trunks"))
    ls.set_defaults(handler=lambda ns: cmd_list(ns.what))


def cmd_datasets(action: str, name: str, root: str, read_images: bool) -> int:
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


def cmd_list(what: str) -> int:
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
    return 0
