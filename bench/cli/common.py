"""What the `dmlbench` commands share: the argument parser type, option groups, and the checks
of execution options."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dmlbench.bench.errors import UserError

STORAGE = ("Storage URLs: sqlite:///FILE.db (or a path ending in .db; default, one process), "
           "journal:///ABS/FILE.log or journal://REL/FILE.log (or a path ending in .log; several "
           "processes on one machine), any SQLAlchemy URL such as "
           "postgresql://user:password@host:5432/db (several machines).")

EPILOG = ("Overrides are key=value pairs with dotted keys, e.g. train.lr=1e-4 "
          "method.params.alpha=2 dataset.name=glyphs. Errors a user can fix exit with code 2.")


class UsageParser(argparse.ArgumentParser):
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


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def mlrc_exec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MLRC execution (suites' MLRC part, mlrc configs)")
    g.add_argument("--storage", metavar="URL", help="Optuna storage (default: sqlite file "
                   "OUT/studies.db)")
    g.add_argument("--workers", type=positive, default=None,
                   help="worker processes per study on this machine (needs journal or RDB "
                   "storage)")
    g.add_argument("--threads", type=positive, default=None,
                   help="torch CPU threads per worker (a conventional run's: train.threads=N)")


def search_overrides(ns: argparse.Namespace) -> dict:
    out = {}
    if getattr(ns, "storage", None):
        out["storage"] = ns.storage
    if getattr(ns, "workers", None) is not None:
        out["workers"] = ns.workers
    return out


def refuse_exec_options(given: list[str], what: str) -> None:
    """--storage, --workers and --threads set how MLRC studies run: refuse them (they would be
    ignored) for `what`, which runs none."""
    if given:
        many = len(given) > 1
        raise UserError(f"{' and '.join(given)} {'apply' if many else 'applies'} to MLRC studies "
                        f"only, and {what} runs none; drop {'them' if many else 'it'}"
                        + ("; a conventional run's CPU threads are set with train.threads=N"
                           if "--threads" in given else ""))


def sqlite_workers(workers: Any, storage: Any) -> None:
    """Several worker processes cannot share a SQLite file: refuse before anything is written."""
    from dmlbench.protocols.mlrc.storage import parse_storage_url

    if isinstance(workers, int) and workers > 1 and (
            storage is None or parse_storage_url(str(storage))[0] == "sqlite"):
        raise UserError(f"{workers} workers need a storage that several processes can share: "
                        "give e.g. --storage journal:///abs/path/studies.log or a PostgreSQL URL "
                        "(SQLite, the default, is for one process)")


def protocol_override(overrides: list[str]) -> bool:
    from dmlbench.bench.config import parse_override

    return any(parse_override(o)[0] == ["run", "protocol"] for o in overrides)


def print_table(tables: dict) -> None:
    md = tables.get("markdown") or tables.get("md")
    if md is not None and Path(md).exists():
        print(Path(md).read_text(encoding="utf-8"))
    for kind, path in tables.items():
        print(f"{kind}: {path}")
