"""What is compared: the methods registry, built-in losses, MemVir and DAS.

The built-in methods are registered the first time the registry is read (`get_method`,
`list_methods`, `build_objective`, ...). Importing this package alone loads nothing heavy:
`methods.errors` (the UserError every layer raises) needs neither torch nor PML.
"""
from __future__ import annotations

from typing import Any

__all__ = ["MethodSpec", "Objective", "build_objective", "get_method", "list_methods",
           "register", "register_method", "resolve_params"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dmlbench.methods import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'methods' has no attribute {name!r}")
