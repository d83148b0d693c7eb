"""Models: a trunk registry (name -> module with `out_features`) and the embedding model.

A trunk factory is `factory(*, in_channels, pretrained, pooling, **options) -> nn.Module`
whose module maps images (B, in_channels, H, W) to features (B, module.out_features).
Register with `@register_trunk("name")`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dmlbench.bench.errors import UserError, unknown_name
from dmlbench.methods.registry_type import Registry


def _import_builtin() -> None:
    import importlib

    for mod in ("dmlbench.bench.models.small", "dmlbench.bench.models.backbones"):
        importlib.import_module(mod)


# Every trunk factory, built in or added through the entry-point group `dmlbench.trunks`.
TRUNKS: Registry[Callable[..., nn.Module]] = Registry("trunk", "dmlbench.trunks", _import_builtin)
_RESOLVERS: list[Callable[[str], "Callable[..., nn.Module] | None"]] = []


def register_trunk(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a trunk factory under `name` (a name registered twice is refused)."""
    return TRUNKS.decorator(name)


def register_trunk_resolver(resolver: Callable[[str], "Callable[..., nn.Module] | None"]) -> None:
    """Add a resolver for families of names (e.g. "timm:<model>"): name -> factory or None."""
    _RESOLVERS.append(resolver)


def list_trunks() -> list[str]:
    return TRUNKS.names() + ["timm:<model name>"]


def build_trunk(name: str, **kwargs) -> nn.Module:
    TRUNKS.load()
    factory = (TRUNKS.get(name) if name in TRUNKS else None) or next(
        (f for f in (r(name) for r in _RESOLVERS) if f is not None), None)
    if factory is None:
        raise unknown_name("trunk", name, TRUNKS.names() + ["timm:<model name>"])
    trunk = factory(**kwargs)
    if not isinstance(getattr(trunk, "out_features", None), int):
        raise TypeError(f"trunk {name!r} has no integer attribute out_features")
    return trunk


def pool(features: torch.Tensor, mode: str) -> torch.Tensor:
    """Global pooling of a (B, C, H, W) map: "avg" or "avgmax" (sum of average and max)."""
    if mode == "avg":
        return features.mean(dim=(2, 3))
    if mode == "avgmax":
        return features.mean(dim=(2, 3)) + features.amax(dim=(2, 3))
    raise UserError(f"unknown pooling {mode!r}; valid: avg, avgmax")


def freeze_batchnorm(module: nn.Module, affine: bool = False) -> None:
    """Keep BatchNorm running statistics fixed (eval mode), optionally its affine weights too."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            if affine:
                for p in m.parameters():
                    p.requires_grad_(False)


class EmbeddingModel(nn.Module):
    """trunk -> Linear(out_features, embedding_size) [-> L2 norm in training if asked].

    `forward` returns raw embeddings in training (normalised if `normalize_train`) and
    `embed` always returns L2-normalised embeddings, as evaluation uses.
    """

    def __init__(self, trunk: nn.Module, embedding_size: int, *, normalize_train: bool = False,
                 freeze_bn: bool = False, freeze_bn_affine: bool = False) -> None:
        super().__init__()
        self.trunk = trunk
        self.embedder = nn.Linear(trunk.out_features, embedding_size)
        self.normalize_train = normalize_train
        self.freeze_bn = freeze_bn
        if freeze_bn and freeze_bn_affine:
            freeze_batchnorm(self.trunk, affine=True)

    def train(self, mode: bool = True) -> "EmbeddingModel":
        super().train(mode)
        if mode and self.freeze_bn:
            freeze_batchnorm(self.trunk)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embedder(self.trunk(x))
        return F.normalize(e, dim=1) if self.normalize_train else e

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedder(self.trunk(x)).float(), dim=1)


def build_model(model_cfg: dict, in_channels: int) -> EmbeddingModel:
    """The embedding model described by a validated `model` config section."""
    extra = {"weights": model_cfg["weights"]} if model_cfg.get("weights") else {}
    trunk = build_trunk(model_cfg["trunk"], in_channels=in_channels,
                        pretrained=model_cfg["pretrained"], pooling=model_cfg["pooling"],
                        width=model_cfg["width"], **extra)
    return EmbeddingModel(trunk, model_cfg["embedding_size"],
                          normalize_train=model_cfg["normalize_train"],
                          freeze_bn=model_cfg["freeze_bn"],
                          freeze_bn_affine=model_cfg.get("freeze_bn_affine", False))
