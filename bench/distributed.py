"""Multi-process (multi-GPU) data-parallel training, launched with `torchrun`.

Every rank draws the same global batch (same seeds), takes its contiguous slice, embeds it,
and gathers the embeddings of all ranks with a gradient-carrying all-gather, so that the
objective (miner, MemVir, DAS, loss) sees the whole batch on every rank and keeps identical
state everywhere. DistributedDataParallel averages the trunk/embedder gradients; gradients of
the objective's own parameters are averaged by `average_gradients`. The result equals a
single-process fit of the same global batch up to floating-point summation order. Trained
BatchNorm layers become SyncBatchNorm on CUDA; on CPU (Gloo) their batch statistics are per
rank, so CPU equivalence needs model.freeze_bn=true.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """True inside a multi-process launch (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device_kind: str) -> torch.device | None:
    """Join the process group of a torchrun launch (NCCL on CUDA, else Gloo); returns this
    rank's CUDA device, or None on CPU. A no-op outside a launch or when already joined."""
    if not launched():
        return None
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend)
    if device_kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return None


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 (equal row counts); backward sums the gradients of every rank's
    copy and returns this rank's rows. Works on any backend (uses all_reduce only)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of every rank, in rank order, differentiable w.r.t. this rank's rows."""
    return _GatherRows.apply(x) if active() else x


def average_gradients(params) -> None:
    """Average the .grad of parameters that DistributedDataParallel does not manage."""
    if not active():
        return
    n = world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(n)
