"""The methods registry: name -> objective factory with paper defaults and an MLRC search space.

A method contributes `components(num_classes, embedding_size, **params) -> (loss, miner)`,
where `loss(embeddings, labels[, indices_tuple])` returns a scalar and `miner` is a PML miner
or None. `build_objective` resolves parameters (defaults < user values), checks them, and
wraps the pair in an `Objective`, the one thing a training loop calls.

Parameter names are the loss's / miner's own keyword names, plus, for methods whose loss has
trainable parameters, `loss_lr` and `loss_weight_decay` (the training loop gives those parameters
their own optimizer group with this lr and weight decay; weight decay 0 unless a recipe sets it)
and, for losses with class weights, `weight_init` (one of `WEIGHT_INITS`).
Wrapper methods (`memvir+<loss>`, `<loss>+das`) register composed entries with `register`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from dmlbench.methods.errors import UserError
from dmlbench.methods.registry_type import Registry

# (kind, low, high) with kind in {"float", "log", "int"}, or ("categorical", [choices]).
SearchParam = tuple

# Values of the `weight_init` parameter of losses with class weights (methods.losses
# `class_weight_init` says what each one draws; "fan" is the embedding size d or, for the
# `_classes` variants, the number of class vectors).
WEIGHT_INITS = ("normal", "kaiming_normal", "kaiming_normal_classes", "kaiming_uniform",
                "kaiming_uniform_classes", "xavier_normal", "xavier_uniform")


@dataclass
class MethodSpec:
    """One registered method."""

    name: str
    components: Callable[..., tuple[Any, Any]]
    defaults: dict[str, Any]
    search_space: dict[str, SearchParam] = field(default_factory=dict)
    family: str = "pair"                 # "classification" | "proxy" | "pair"
    m_per_class: int = 4                 # default images per class in a batch
    base: str | None = None              # for "+method" rows: the method it is compared to
    description: str = ""

    @property
    def has_loss_parameters(self) -> bool:
        return "loss_lr" in self.defaults


def _import_builtin() -> None:
    import importlib

    for mod in ("dmlbench.methods.losses", "dmlbench.methods.curricularface", "dmlbench.methods.memvir", "dmlbench.methods.das"):
        importlib.import_module(mod)   # each registers its methods on import


# Every method, built in or added by a third-party package through the entry-point group
# `dmlbench.methods` (an entry point names a module whose import registers its methods).
METHODS: Registry[MethodSpec] = Registry("method", "dmlbench.methods", _import_builtin)
_METHODS = METHODS   # the name older code and tests use


def register(spec: MethodSpec) -> MethodSpec:
    """Add a fully built MethodSpec (used by wrapper modules for composed names)."""
    return METHODS.register(spec.name, spec)


def register_method(
    name: str,
    *,
    defaults: dict[str, Any],
    search_space: dict[str, SearchParam] | None = None,
    family: str = "pair",
    m_per_class: int = 4,
    base: str | None = None,
    description: str = "",
) -> Callable[[Callable[..., tuple[Any, Any]]], Callable[..., tuple[Any, Any]]]:
    """Decorator: register `components(num_classes, embedding_size, **params)` under `name`."""

    def deco(fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any]]:
        register(
            MethodSpec(
                name=name,
                components=fn,
                defaults=dict(defaults),
                search_space=dict(search_space or {}),
                family=family,
                m_per_class=m_per_class,
                base=base,
                description=description or (fn.__doc__ or "").strip().split("\n")[0],
            )
        )
        return fn

    return deco


def list_methods() -> list[str]:
    """All registered method names, sorted."""
    return METHODS.names()


def get_method(name: str) -> MethodSpec:
    """The spec of `name`; unknown names raise UserError listing the valid ones."""
    return METHODS.get(name)


def resolve_params(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of `name` updated by `params`; an unknown parameter raises UserError."""
    spec = get_method(name)
    out = dict(spec.defaults)
    for key, value in (params or {}).items():
        if key not in spec.defaults:
            valid = ", ".join(sorted(spec.defaults)) or "(none)"
            raise UserError(
                f"method {name!r} has no parameter {key!r}; its parameters are: {valid}"
            )
        out[key] = value
    if "loss_lr" in out and not (isinstance(out["loss_lr"], (int, float)) and out["loss_lr"] > 0):
        raise UserError(f"method.loss_lr={out['loss_lr']!r} is invalid; it must be a number > 0")
    wd = out.get("loss_weight_decay", 0.0)
    if isinstance(wd, bool) or not (isinstance(wd, (int, float)) and wd >= 0):
        raise UserError(f"method.loss_weight_decay={wd!r} is invalid; it must be a number >= 0")
    if "weight_init" in out and out["weight_init"] not in WEIGHT_INITS:
        raise UserError(f"method.weight_init={out['weight_init']!r} is invalid; allowed values: "
                        f"{', '.join(WEIGHT_INITS)}")
    return out


class Objective(nn.Module):
    """loss [+ miner]: `objective(embeddings, labels) -> scalar`, usable in any PyTorch loop."""

    loss_weight_decay: float = 0.0   # weight decay of the loss's own parameters

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None, *,
                 loss_lr: float | None = None, loss_weight_decay: float = 0.0,
                 name: str = "") -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner
        self.loss_lr = loss_lr
        self.loss_weight_decay = float(loss_weight_decay)
        self.name = name

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.miner is None:
            return self.loss(embeddings, labels)
        return self.loss(embeddings, labels, self.miner(embeddings, labels))

    def set_epoch(self, epoch: int) -> None:
        """Tell epoch-aware parts (MemVir warm-up, ...) which 0-indexed epoch starts."""
        for module in self.modules():
            if module is not self and hasattr(module, "set_epoch"):
                module.set_epoch(epoch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # a PML miner's counts of its last call (set by BaseMiner.output_assertion, plain ints)
    _MINER_COUNTS = ("num_pos_pairs", "num_neg_pairs", "num_triplets")

    def stats(self) -> dict[str, float]:
        """The method's own training signals at the last step, as a flat {name: float}.

        Collected from every submodule that defines `stats() -> dict[str, float]` (a method's
        hook: MemVir gives `memvir_k` and `memvir_ring_fill`, DAS `das_bank_fill` and
        `das_generated_rows`) and, for PML miners, the pair / triplet counts of their last
        call (`miner_num_pos_pairs`, `miner_num_neg_pairs` or `miner_num_triplets`; with
        several miners, `miner_<path>_...`). A `stats()` must only read numbers its module
        stored during the step: no device work and no synchronisation. The training loop
        calls this every train.log_every iterations, after it has synchronised for the loss.
        """
        out: dict[str, float] = {}
        miners = []
        for name, module in self.named_modules():
            if module is self:
                continue
            hook = getattr(module, "stats", None)
            if callable(hook):
                out.update({k: float(v) for k, v in hook().items()})
            elif any(k in vars(module) for k in self._MINER_COUNTS):
                miners.append((name, module))
        for name, module in miners:
            prefix = "miner_" if len(miners) == 1 else f"miner_{name.replace('.', '_')}_"
            for key in self._MINER_COUNTS:
                value = vars(module).get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[prefix + key] = float(value)
        return out


def build_objective(name: str, num_classes: int, embedding_size: int,
                    params: dict[str, Any] | None = None) -> Objective:
    """Build the objective of method `name` for `num_classes` training classes."""
    spec = get_method(name)
    resolved = resolve_params(name, params)
    loss_lr = resolved.pop("loss_lr", None)
    loss_weight_decay = resolved.pop("loss_weight_decay", 0.0)
    try:
        loss, miner = spec.components(num_classes, embedding_size, **resolved)
    except (TypeError, ValueError, AssertionError) as e:
        raise UserError(f"method {name!r} rejected its parameters {resolved}: {e}") from e
    return Objective(loss, miner, loss_lr=loss_lr, loss_weight_decay=loss_weight_decay,
                     name=name)
