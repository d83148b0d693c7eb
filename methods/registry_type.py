"""One small registry type (in the manner of timm's `register_model`) for methods, datasets
and trunks: names map to objects, a name registered twice is refused, an unknown name is a
`UserError` listing the valid ones, and third-party packages add names through a Python
entry-point group (e.g. `[project.entry-points."dmlbench.methods"] mine = "mypkg.losses"`):
each entry point is loaded (importing its module registers its names) the first time the
registry is read."""
from __future__ import annotations

import logging
from typing import Callable, Generic, Iterator, TypeVar

from dmlbench.methods.errors import UserError, unknown_name

T = TypeVar("T")
log = logging.getLogger("dmlbench.registry")


class Registry(Generic[T]):
    """name -> object, filled by `register` / the `decorator`, built-in modules (`builtin`,
    called once) and the entry points of `group`."""

    def __init__(self, kind: str, group: str | None = None,
                 builtin: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._builtin = builtin
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, obj: T) -> T:
        """Add `obj` under `name`; a name registered twice raises ValueError."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, not {name!r}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = obj
        return obj

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@registry.decorator("name")` registers the decorated object."""
        def deco(obj: T) -> T:
            return self.register(name, obj)
        return deco

    def load(self) -> None:
        """Import the built-in entries and the entry points of the group (once)."""
        if self._loaded:
            return
        self._loaded = True
        if self._builtin is not None:
            self._builtin()
        if self.group is None:
            return
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            try:
                ep.load()
            except Exception as e:
                raise UserError(f"the {self.kind} entry point {ep.name!r} ({ep.value}, group "
                                f"{self.group}) failed to load: {type(e).__name__}: {e}; fix or "
                                "uninstall the package that declares it") from None

    def get(self, name: str) -> T:
        """The object registered as `name`; an unknown name raises UserError listing the
        valid ones."""
        self.load()
        if name not in self._items:
            raise unknown_name(self.kind, name, list(self._items))
        return self._items[name]

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
