"""The layout's rules (DESIGN.md, issue 10): the dependency direction between the four folders,
modules of one concern (over ~400 lines only with the reason at the top), short functions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

FOLDERS = ("bench", "methods", "protocols", "results", "dmlbench")
MODULE_LINES, FUNCTION_LINES = 400, 80


def _modules(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py")
                  if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _face(path: Path) -> bool:
    """The command line and the suite runner wire protocols and results together."""
    rel = path.relative_to(ROOT / "bench").parts
    return rel[0] in ("cli", "suite")


def test_the_engine_imports_neither_protocols_nor_results():
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in _modules("bench") if not _face(p)
           for n in _imports(p)
           if n.startswith(("dmlbench.protocols", "dmlbench.results"))]
    assert bad == []


def test_methods_import_only_torch_pml_and_themselves():
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in _modules("methods") for n in _imports(p)
           if n.startswith(("dmlbench.bench", "dmlbench.protocols", "dmlbench.results"))]
    assert bad == []


def test_results_read_records_not_protocols_or_the_trainer():
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in _modules("results") for n in _imports(p)
           if n.startswith(("dmlbench.protocols", "dmlbench.bench.train", "dmlbench.methods."))
           and n != "dmlbench.methods.errors"]
    assert bad == []


@pytest.mark.parametrize("path", _modules(*FOLDERS), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size_and_function_length(path: Path):
    src = path.read_text(encoding="utf-8")
    tree = ast.parse(src)
    if src.count("\n") > MODULE_LINES:
        doc = ast.get_docstring(tree) or ""
        assert "lines" in doc, (f"{path.name} has {src.count(chr(10))} lines: split it by "
                                "concern or say at the top why it is one")
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > FUNCTION_LINES]
    assert long == []
