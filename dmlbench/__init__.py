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
from bench.config import defaults as default_config
from bench.config import load_config
from bench.data import DMLDataset, list_datasets, load_dataset, register_dataset
from bench.data.loading import Split
from bench.errors import UserError
from bench.evaluate import compute_metrics
from bench.models import EmbeddingModel, build_model, list_trunks, register_trunk
from bench.records import fingerprint, read_records
from bench.suite import load_suite, run_suite
from bench.train import Callback, FitResult, Trainer, build_parts, embed, fit
from methods import (MethodSpec, Objective, build_objective, get_method, list_methods,
                     register_method)
from methods.das import DAS, DASLoss
from methods.memvir import MemVir
from protocols.conventional import run_conventional
from protocols.mlrc import SearchOptions, run_mlrc
from results.html import write_html_report
from results.tables import load_runs, write_tables

try:
    from importlib.metadata import version as _version

    __version__ = _version("dmlbench")
except Exception:  # not installed (a source checkout on sys.path)
    __version__ = "unknown"

__all__ = ["Callback", "DAS", "DASLoss", "DMLDataset", "EmbeddingModel", "FitResult", "MemVir",
           "MethodSpec", "Objective", "SearchOptions", "Split", "Trainer", "UserError",
           "build_model", "build_objective", "build_parts", "compute_metrics",
           "default_config", "embed", "fingerprint", "fit", "get_method", "list_datasets",
           "list_methods", "list_trunks", "load_config", "load_dataset", "load_runs",
           "load_suite", "read_records", "register_dataset", "register_method",
           "register_trunk", "run_conventional", "run_mlrc", "run_suite", "write_html_report",
           "write_tables", "__version__"]
