"""dmlbench: a benchmarking harness for deep metric learning — the stable Python API.

    import dmlbench
    cfg = dmlbench.load_config("my.yaml", ["train.lr=1e-4"])
    ds = dmlbench.load_dataset("glyphs")
    train, test = dmlbench.Split.of_classes(ds, ds.train_classes), \\
        dmlbench.Split.of_classes(ds, ds.test_classes)
    result = dmlbench.fit(cfg, train, test, trunk=my_module)   # or model=, objective=
    metrics = dmlbench.compute_metrics(embeddings, labels)

The implementation lives in the subpackages `bench` (engine and face), `methods`, `protocols`
and `results`; names not exported here may change between versions.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, attribute); each is imported on first use, so that
# `import dmlbench.methods` (torch + PML only) does not pull in the engine, and
# `import dmlbench` costs nothing until a name is used (PEP 562).
_EXPORTS: dict[str, tuple[str, str]] = {
    "default_config": ("dmlbench.bench.config", "defaults"),
    **{n: ("dmlbench.bench.config", n) for n in ("RunConfig", "load_config", "load_run_config")},
    **{n: ("dmlbench.bench.data", n) for n in
       ("DMLDataset", "list_datasets", "load_dataset", "register_dataset")},
    "Split": ("dmlbench.bench.data.loading", "Split"),
    "UserError": ("dmlbench.bench.errors", "UserError"),
    "compute_metrics": ("dmlbench.bench.evaluate", "compute_metrics"),
    **{n: ("dmlbench.bench.models", n) for n in
       ("EmbeddingModel", "build_model", "list_trunks", "register_trunk")},
    **{n: ("dmlbench.bench.records", n) for n in ("fingerprint", "read_records")},
    **{n: ("dmlbench.bench.suite", n) for n in ("load_suite", "run_suite")},
    "SuiteSpec": ("dmlbench.bench.suite.schema", "SuiteSpec"),
    **{n: ("dmlbench.bench.train", n) for n in
       ("Callback", "FitResult", "Trainer", "build_parts", "embed", "fit")},
    **{n: ("dmlbench.methods", n) for n in
       ("MethodSpec", "Objective", "build_objective", "get_method", "list_methods",
        "register_method")},
    **{n: ("dmlbench.methods.das", n) for n in ("DAS", "DASLoss")},
    "MemVir": ("dmlbench.methods.memvir", "MemVir"),
    "run_conventional": ("dmlbench.protocols.conventional", "run_conventional"),
    **{n: ("dmlbench.protocols.mlrc", n) for n in ("SearchOptions", "run_mlrc")},
    "write_html_report": ("dmlbench.results.html", "write_html_report"),
    **{n: ("dmlbench.results.tables", n) for n in ("load_runs", "write_tables")},
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dmlbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


try:
    from importlib.metadata import version as _version

    __version__ = _version("dmlbench")
except Exception:  # not installed (a source checkout on sys.path)
    __version__ = "unknown"

__all__ = ["Callback", "DAS", "DASLoss", "DMLDataset", "EmbeddingModel", "FitResult", "MemVir",
           "MethodSpec", "Objective", "RunConfig", "SearchOptions", "Split", "SuiteSpec",
           "Trainer", "UserError", "build_model", "build_objective", "build_parts",
           "compute_metrics", "default_config", "embed", "fingerprint", "fit", "get_method",
           "list_datasets", "list_methods", "list_trunks", "load_config", "load_dataset",
           "load_run_config", "load_runs",
           "load_suite", "read_records", "register_dataset", "register_method",
           "register_trunk", "run_conventional", "run_mlrc", "run_suite", "write_html_report",
           "write_tables", "__version__"]
