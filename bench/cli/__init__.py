"""The `dmlbench` command line: argument parsing and dispatch. Each command lives in one
module of this package (`run`, `suite`, `studies`, `report`, `catalog`) that adds its parser
and names its handler; a handler calls library functions and returns the exit code."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from dmlbench.bench.cli import calibrate, catalog, launch, report, run, studies, suite
from dmlbench.bench.cli.common import EPILOG, UsageParser
from dmlbench.bench.errors import UserError

# the order of the commands in `dmlbench --help`
COMMAND_MODULES = (run, suite, calibrate, studies, launch, report, catalog)
# commands that may run Optuna studies (its INFO lines are silenced while they run)
_OPTUNA_COMMANDS = ("run", "suite", "mlrc", "worker", "importance", "studies", "launch")


def _parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="dmlbench", description="Benchmark deep metric learning methods (MLRC and "
        "conventional protocols, MemVir, DAS, pytorch-metric-learning losses).", epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return p


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

        if ns.command in _OPTUNA_COMMANDS:
            from dmlbench.protocols.mlrc.worker import quiet_optuna

            quiet_optuna()
        if distributed.launched() and ns.command in ("mlrc", "worker"):
            raise UserError("MLRC searches are not data-parallel: start one `dmlbench worker` "
                            "per GPU (CUDA_VISIBLE_DEVICES=i) on a shared storage instead of "
                            "torchrun")
        if distributed.launched() and os.environ.get("RANK", "0") != "0":
            sys.stdout = open(os.devnull, "w")  # rank 0 reports; errors still reach stderr
        if getattr(ns, "handler", None) is None:
            parser.print_help()
            return 2
        return ns.handler(ns)
    except UserError as e:
        print(f"dmlbench: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("dmlbench: interrupted; finished runs are kept, re-run the command to resume",
              file=sys.stderr)
        return 130
