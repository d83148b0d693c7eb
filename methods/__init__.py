"""What is compared: the methods registry, built-in losses, MemVir and DAS.

Importing this package registers every built-in method.
"""
import importlib

from methods.registry import (MethodSpec, Objective, build_objective, get_method, list_methods,
                              register, register_method, resolve_params)
from methods import losses  # noqa: F401

for _mod in ("methods.memvir", "methods.das"):
    try:
        importlib.import_module(_mod)
    except ModuleNotFoundError as _e:  # written in their own issues
        if _e.name != _mod:
            raise

__all__ = ["MethodSpec", "Objective", "build_objective", "get_method", "list_methods",
           "register", "register_method", "resolve_params"]
