"""The one embedding path: every evaluation, in a fit or in a protocol, embeds a split here,
with the config's transforms, workers, AMP policy and eval batch size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmlbench.bench.data.loading import ImageSource, Split
from dmlbench.bench.train.build import amp_enabled, image_source, resolve_device


def _embed_batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "embed"):
        return model.embed(x)
    return F.normalize(model(x).float(), dim=1)


@torch.no_grad()
def embed_split(model: nn.Module, source: ImageSource, batch_size: int,
                amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised embeddings (float32, CPU) and labels of every image of the source, in
    order."""
    was_training = model.training
    model.eval()
    embs, labels = [], []
    dev = source.device
    try:
        with torch.autocast(dev.type, enabled=amp and dev.type == "cuda"):
            for x, y in source.eval_batches(batch_size):
                embs.append(_embed_batch(model, x).float().cpu())
                labels.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(embs), torch.cat(labels)


def embed(model: nn.Module, split: Split, cfg: dict, *, source: ImageSource | None = None,
          device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels of `split` exactly as a fit of `cfg` evaluates it. `source`: an
    already built `image_source(cfg, split, device)` (a fit reuses its own)."""
    if source is None:
        if device is None:
            device = next((p.device for p in model.parameters()), None) or resolve_device(
                cfg["train"]["device"])
        source = image_source(cfg, split, device)
    return embed_split(model, source, cfg["eval"]["batch_size"],
                       amp=amp_enabled(cfg, source.device))
