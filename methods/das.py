"""DAS — densely-anchored sampling (DFS + MTS) in front of any pair-based loss and miner.

`DAS` sits between the embedder and the miner/loss: in training it returns the real
embeddings followed by `num_produce` blocks of generated ones, labels repeated,
`[real; gen_1; ...; gen_T]`. `DASLoss` composes it with an unchanged PML loss [+ miner].
Semantics follow specs/das.md; the details the spec leaves open are fixed here:

- Order inside one training step: frequency update (real rows, top-K raw signed values),
  class masks from the updated matrix, bank update from the batch's differences, then
  generation. Ties in a frequency row go to the lower channel index.
- Bank order: for a class with members at batch positions p_1 < ... < p_m, the differences
  v_{p_a} - v_{p_b} are pushed in row-major (a, b) order, all-zero rows dropped (a = b and
  exact duplicates); slot (pos + rank) % Z, so when more than Z arrive the last Z stay.
  `bank_pos[c]` is the next slot to write, `bank_fill[c]` the number of filled slots; the
  filled slots are (pos - fill + k) % Z for k = 0..fill-1, oldest first.
- Each generated row draws gamma ~ U[lo, hi) for each of its class's K mask channels and a
  bank row uniformly among its class's filled slots; v' = s * v + shift_scale * t,
  L2-normalised if `normalize` (real rows are passed through unchanged).
- Modules switched off are off entirely: use_dfs=False neither counts frequencies nor
  scales; use_mts=False neither updates the bank nor shifts.
- In eval mode, or with num_produce=0, inputs come back unchanged and no state changes.
- Labels must be integers in 0..num_classes-1 (the harness maps a run's labels there).
  CPU labels are checked eagerly (ValueError); CUDA labels with `torch._assert_async`, so the
  step never waits for the device (a bad label then fails as a device-side assertion);
  other devices except "meta" (no data) are checked eagerly.
- Exact duplicates among a class's rows are found by comparing exact integer hashes of the
  rows' bit patterns (float64 arithmetic that cannot round): equal rows always match; two
  different rows match with probability <= 2^-60, which would drop one of their differences.

No per-sample Python loops and no host synchronisation in the step.

One concern, the DAS method (the sampler module, its loss wrapper and their registration);
over 400 lines because the frequency matrix, bank and generation share state in one module.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import BaseLossWrapper
from torch import nn

from dmlbench.methods.registry import MethodSpec, get_method, register


def _hash_shape(embedding_size: int) -> tuple[int, int]:
    """(multiplier bound R, number of hashes) for exact float64 row hashes: |int32 bits| < 2^31,
    so d * 2^31 * R <= 2^53 keeps every partial sum an exact integer; each hash of two
    different rows collides with probability <= 1/R, all of them with <= 2^-60."""
    bits = 22 - max(0, math.ceil(math.log2(embedding_size)))
    return 2 ** bits, math.ceil(60 / bits)


@lru_cache(maxsize=64)
def _max_kept(batch: int, bank_size: int) -> int:
    """Most differences one batch can leave in the banks: sum over classes of
    min(Z, m_c (m_c - 1)) with sum m_c = batch, bounded by batch * max_m min(Z, m(m-1)) / m."""
    best = max((min(bank_size, m * (m - 1)) / m for m in range(2, batch + 1)), default=0.0)
    return max(1, min(batch * (batch - 1), math.ceil(batch * best - 1e-9)))


class DAS(nn.Module):
    """Densely-anchored sampling: DFS (frequency-masked scaling) + MTS (memorised shifts).

    `das(embeddings, labels) -> (embeddings_all, labels_all)` with B*(T+1) rows in training.
    State (buffers, so a parent's state_dict carries them): `frequency` (C x d counts, int64),
    `bank` (C x Z x d fp32), `bank_pos` and `bank_fill` (C, int64).
    """

    def __init__(self, num_classes: int, embedding_size: int, num_produce: int = 3,
                 topk: int = 4, bank_size: int = 10,
                 scale_range: tuple[float, float] = (0.99, 1.01), shift_scale: float = 0.01,
                 detach: bool = True, normalize: bool = True, use_dfs: bool = True,
                 use_mts: bool = True) -> None:
        super().__init__()
        num_classes, embedding_size = int(num_classes), int(embedding_size)
        num_produce, topk, bank_size = int(num_produce), int(topk), int(bank_size)
        lo, hi = (float(x) for x in scale_range)
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        if not 1 <= embedding_size <= 2 ** 16:
            raise ValueError(f"embedding_size={embedding_size} must be in 1..65536")
        hash_range, hashes = _hash_shape(embedding_size)
        if num_produce < 0:
            raise ValueError(f"num_produce={num_produce} must be >= 0")
        if topk < 1 or (use_dfs and topk > embedding_size):
            raise ValueError(f"topk={topk} must be in 1..embedding_size ({embedding_size})")
        if bank_size < 1:
            raise ValueError(f"bank_size={bank_size} must be >= 1")
        if not lo <= hi:
            raise ValueError(f"scale_range={scale_range!r} must satisfy low <= high")
        if not float(shift_scale) >= 0:
            raise ValueError(f"shift_scale={shift_scale!r} must be >= 0")
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.num_produce = num_produce
        self.topk = topk
        self.bank_size = bank_size
        self.scale_range = (lo, hi)
        self.shift_scale = float(shift_scale)
        self.detach = bool(detach)
        self.normalize = bool(normalize)
        self.use_dfs = bool(use_dfs)
        self.use_mts = bool(use_mts)
        self.register_buffer("frequency",
                             torch.zeros(num_classes, embedding_size, dtype=torch.long))
        self.register_buffer("bank", torch.zeros(num_classes, bank_size, embedding_size))
        self.register_buffer("bank_pos", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("bank_fill", torch.zeros(num_classes, dtype=torch.long))
        gen = torch.Generator().manual_seed(20220723)
        hash_mult = torch.randint(0, hash_range, (embedding_size, hashes), generator=gen)
        self.register_buffer("_hash_mult", hash_mult.double(), persistent=False)
        self._generated = 0                          # rows generated at the last step
        self._fill_host: torch.Tensor | None = None  # host copy of bank_fill.sum()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
                f"num_produce={self.num_produce}, topk={self.topk}, bank_size={self.bank_size}, "
                f"scale_range={self.scale_range}, shift_scale={self.shift_scale}, "
                f"detach={self.detach}, normalize={self.normalize}, use_dfs={self.use_dfs}, "
                f"use_mts={self.use_mts}")

    @property
    def memory_bytes(self) -> int:
        """Bytes of state: bank (C*Z*d fp32) + frequency (C*d int64) + positions (2*C int64)."""
        return sum(b.numel() * b.element_size()
                   for b in (self.bank, self.frequency, self.bank_pos, self.bank_fill))

    def reset_memory(self) -> None:
        """Zero the frequency matrix and empty every class's bank."""
        self.frequency.zero_()
        self.bank.zero_()
        self.bank_pos.zero_()
        self.bank_fill.zero_()
        if self._fill_host is not None:
            self._fill_host.zero_()

    def stats(self) -> dict[str, float]:
        """Training signals of the last training step: `das_generated_rows` (T*B) and, with
        MTS, `das_bank_fill`, the share of the C*Z bank slots filled (0..1). No device work:
        the fill is a host copy the step made without waiting (`non_blocking`), read after
        the training loop's own synchronisation (on CUDA, a read before the step's work has
        finished may return the previous step's fill)."""
        out = {"das_generated_rows": float(self._generated)}
        if self.use_mts:
            filled = 0 if self._fill_host is None else int(self._fill_host)
            out["das_bank_fill"] = filled / (self.num_classes * self.bank_size)
        return out

    @torch.no_grad()
    def _copy_fill_to_host(self) -> None:
        if self.bank_fill.device.type == "meta":   # no data to copy
            return
        host = self._fill_host
        if host is None:
            host = torch.zeros((), dtype=torch.long, pin_memory=self.bank_fill.is_cuda)
            self._fill_host = host
        host.copy_(self.bank_fill.sum(), non_blocking=True)

    # ---- checks ---------------------------------------------------------------------------

    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"DAS expects embeddings of shape (B, {self.embedding_size}), "
                             f"got {tuple(embeddings.shape)}")
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"DAS expects labels of shape ({embeddings.shape[0]},), "
                             f"got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"DAS expects integer class labels, got dtype {labels.dtype}")
        msg = (f"DAS labels must be class indices in 0..{self.num_classes - 1} "
               f"(num_classes={self.num_classes}); map the run's labels to 0..C-1 first")
        if labels.numel() == 0:
            return
        in_range = ((labels >= 0) & (labels < self.num_classes)).all()
        if labels.device.type == "cuda":
            torch._assert_async(in_range, msg)   # no host sync; fails at a later launch
        elif labels.device.type != "meta" and not bool(in_range):
            lo, hi = int(labels.min()), int(labels.max())
            raise ValueError(f"{msg} (got labels in {lo}..{hi})")

    # ---- DFS ------------------------------------------------------------------------------

    @torch.no_grad()
    def _update_frequency(self, real: torch.Tensor, labels: torch.Tensor) -> None:
        d = self.embedding_size
        top = real.topk(self.topk, dim=1).indices                       # B x K
        flat = (labels.unsqueeze(1) * d + top).reshape(-1)
        self.frequency.view(-1).index_add_(0, flat, torch.ones_like(flat))

    @torch.no_grad()
    def class_mask(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Top-K channel indices of the frequency rows of `labels` (all classes if None),
        largest count first, ties to the lower channel index."""
        rows = self.frequency if labels is None else self.frequency.index_select(0, labels)
        d = self.embedding_size
        key = rows * d + (d - 1 - torch.arange(d, device=rows.device))
        return key.topk(self.topk, dim=1).indices

    # ---- MTS ------------------------------------------------------------------------------

    @torch.no_grad()
    def _row_hash(self, real: torch.Tensor) -> torch.Tensor:
        bits = (real.float() + 0.0).contiguous().view(torch.int32)     # -0.0 -> +0.0
        return bits.double() @ self._hash_mult                          # exact integer sums

    @torch.no_grad()
    def _update_bank(self, real: torch.Tensor, labels: torch.Tensor) -> None:
        B, Z, d = labels.shape[0], self.bank_size, self.embedding_size
        dev = labels.device
        ar = torch.arange(B, device=dev)
        same = labels.unsqueeze(1) == labels.unsqueeze(0)                  # B x B
        h = self._row_hash(real)
        equal = (h.unsqueeze(1) == h.unsqueeze(0)).all(-1)                # includes i == j
        valid = same & ~equal                                             # non-zero differences
        vl = valid.long()
        within = vl.cumsum(1) - vl                                        # rank inside row i
        row_count = vl.sum(1)
        earlier = same & (ar.unsqueeze(0) < ar.unsqueeze(1))              # [i, i']: i' < i
        rank = (earlier.long() * row_count).sum(1, keepdim=True) + within  # rank inside class
        count = (same.long() * row_count).sum(1)                          # per row: its class's
        pos = self.bank_pos[labels]
        kept = valid & (rank >= (count - Z).unsqueeze(1))                 # the last Z per class
        target = (labels.unsqueeze(1) * Z + (pos.unsqueeze(1) + rank) % Z).reshape(-1)
        # compact the kept pairs into a static-size list (no host sync), row-major order
        n = _max_kept(B, Z)
        flat = kept.reshape(-1)
        slot_in_list = torch.where(flat, flat.long().cumsum(0) - 1, n)
        pairs = torch.full((n + 1,), -1, dtype=torch.long, device=dev)
        pairs.scatter_reduce_(0, slot_in_list, torch.arange(B * B, device=dev), "amax")
        pairs = pairs[:n]
        # unused list entries repeat entry 0 (identical duplicate writes); if nothing is kept,
        # every entry rewrites flat bank row 0 with its old value (extra source rows B, B+1)
        pairs = torch.where(pairs >= 0, pairs, pairs[:1])
        ok = pairs >= 0
        pair = pairs.clamp(min=0)
        dest = torch.where(ok, target.index_select(0, pair), 0)
        bank = self.bank.view(-1, d)
        src = torch.cat([real.float(), bank[:1], bank.new_zeros(1, d)])
        first = torch.where(ok, pair // B, B)
        second = torch.where(ok, pair % B, B + 1)
        values = src.index_select(0, first) - src.index_select(0, second)
        bank.index_copy_(0, dest, values)
        self.bank_pos[labels] = (pos + count) % Z
        self.bank_fill[labels] = (self.bank_fill[labels] + count).clamp(max=Z)

    def _draw_shift(self, labels: torch.Tensor, T: int) -> torch.Tensor:
        Z = self.bank_size
        pos = self.bank_pos[labels]
        fill = self.bank_fill[labels]
        u = torch.rand(T, labels.shape[0], device=labels.device)
        k = (u * fill).floor().long().clamp(max=fill - 1).clamp(min=0)
        slot = torch.remainder(pos - fill + k, Z)                          # T x B
        rows = self.bank.view(-1, self.embedding_size).index_select(0, (labels * Z + slot).view(-1))
        t = rows.view(T, labels.shape[0], self.embedding_size)              # T x B x d
        return t * (self.shift_scale * (fill > 0)).unsqueeze(-1)

    # ---- step -----------------------------------------------------------------------------

    def forward(self, embeddings: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[real; gen_1; ...; gen_T] and labels repeated; unchanged inputs in eval / T=0."""
        T = self.num_produce
        if not self.training or T == 0:
            return embeddings, labels
        self._check_inputs(embeddings, labels)
        if embeddings.shape[0] == 0:
            return embeddings, labels
        labels = labels.to(embeddings.device, torch.long)
        B, d = embeddings.shape
        dev = embeddings.device
        real = embeddings.detach()
        base = real if self.detach else embeddings
        gen = base.float().unsqueeze(0).expand(T, B, d)       # generated in fp32, cast back
        if self.use_dfs:
            self._update_frequency(real, labels)
            mask = self.class_mask(labels)                                # B x K
            lo, hi = self.scale_range
            gamma = torch.rand(T, B, self.topk, device=dev) * (hi - lo) + lo
            scale = torch.ones(T, B, d, device=dev)
            scale.scatter_(2, mask.unsqueeze(0).expand(T, B, -1), gamma)
            gen = gen * scale
        if self.use_mts:
            self._update_bank(real, labels)
            self._copy_fill_to_host()
            gen = gen + self._draw_shift(labels, T)
        if self.normalize:
            gen = F.normalize(gen, p=2, dim=-1)
        gen = gen.reshape(T * B, d).to(embeddings.dtype)
        self._generated = T * B
        return torch.cat([embeddings, gen], dim=0), labels.repeat(T + 1)


# PML losses whose weights are per-class proxies / classifiers: DAS is meant for pair losses.
_PROXY_LOSSES = ("ArcFaceLoss", "CosFaceLoss", "LargeMarginSoftmaxLoss", "NormalizedSoftmaxLoss",
                 "ProxyAnchorLoss", "ProxyNCALoss", "SoftTripleLoss", "SphereFaceLoss",
                 "SubCenterArcFaceLoss", "ManifoldLoss", "P2SGradLoss", "SoftmaxLoss")


class DASLoss(BaseLossWrapper):
    """loss [+ miner] over DAS's real and generated rows, + aux_weight * loss on real rows.

    `objective(embeddings, labels) -> scalar`. The miner (if any) sees all rows; the auxiliary
    term re-runs it on the real rows alone.
    """

    def __init__(self, loss: nn.Module, das: DAS, miner: nn.Module | None = None,
                 aux_weight: float = 0.0) -> None:
        super().__init__(loss=loss)
        if not float(aux_weight) >= 0:
            raise ValueError(f"aux_weight={aux_weight!r} must be >= 0")
        self.loss = loss
        self.das = das
        self.miner = miner
        self.aux_weight = float(aux_weight)

    @staticmethod
    def supported_losses() -> list[str]:
        """The PML pair-based losses DAS is known to work with (custom losses are allowed)."""
        return ["AngularLoss", "CircleLoss", "ContrastiveLoss", "FastAPLoss",
                "GeneralizedLiftedStructureLoss", "IntraPairVarianceLoss",
                "LiftedStructureLoss", "MarginLoss", "MultiSimilarityLoss", "NCALoss",
                "NPairsLoss", "NTXentLoss", "SignalToNoiseRatioContrastiveLoss", "SupConLoss",
                "TripletMarginLoss", "TupletMarginLoss"]

    @classmethod
    def check_loss_support(cls, loss_name: str) -> None:
        if loss_name in _PROXY_LOSSES:
            raise ValueError(f"DASLoss needs a pair-based loss, not the proxy/classifier loss "
                             f"{loss_name}; supported: {', '.join(cls.supported_losses())}")

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.miner is None:
            return self.loss(embeddings, labels)
        return self.loss(embeddings, labels, self.miner(embeddings, labels))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb_all, labels_all = self.das(embeddings, labels)
        value = self._loss(emb_all, labels_all)
        if self.aux_weight:
            value = value + self.aux_weight * self._loss(embeddings, labels.to(embeddings.device))
        return value


# ---- registry ------------------------------------------------------------------------------

BASES = ("triplet-semihard", "triplet-distance", "contrastive", "contrastive-distance", "margin",
         "ms", "ms+miner", "npair", "genlifted", "triplet")

# CUB / CARS settings (specs/das.md). `scale_radius` r_s, when not None, replaces
# (scale_lo, scale_hi) by (1 - r_s, 1 + r_s); the search space searches r_s. `normalize`
# L2-normalises the generated rows; runs whose model output is not normalised either
# (`model.normalize_train: false`, the authors' `--das_not_normalize` runs) set it false.
DAS_DEFAULTS: dict[str, Any] = {
    "num_produce": 3, "topk": 4, "bank_size": 10, "scale_lo": 0.99, "scale_hi": 1.01,
    "scale_radius": None, "shift_scale": 0.01, "detach": True, "normalize": True,
    "aux_weight": 0.0,
}

# Per-dataset overrides of DAS_DEFAULTS by base method: the authors' table-2 script
# (lizhaoliu-Lec/DAS table2.sh; its defaults in scripts/parameters.py: scale 0.5-2.0,
# r_b 0.01, no detach, normalised).
_SOP_WIDE = {"scale_lo": 0.5, "scale_hi": 2.0, "shift_scale": 0.1}
_RAW = {"normalize": False}   # lifted / n-pair: `--das_not_normalize` on every dataset
DAS_DATASET_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "cub": {"genlifted": _RAW, "npair": _RAW},
    "cars": {"genlifted": _RAW, "npair": _RAW},
    "sop": {
        "triplet-semihard": {**_SOP_WIDE, "detach": True, "aux_weight": 1.0},
        "triplet-distance": {**_SOP_WIDE, "detach": True, "aux_weight": 1.0},
        "triplet": {**_SOP_WIDE, "detach": True, "aux_weight": 1.0},
        "contrastive": {**_SOP_WIDE, "detach": False},
        "contrastive-distance": {**_SOP_WIDE, "detach": False},
        "ms": {**_SOP_WIDE, "detach": False},
        "ms+miner": {**_SOP_WIDE, "detach": False},
        "margin": {"scale_lo": 0.5, "scale_hi": 2.0, "shift_scale": 0.01, "detach": False},
        "genlifted": {**_RAW, "shift_scale": 0.1, "detach": False},
        "npair": {**_RAW, "shift_scale": 0.1, "detach": False},
    },
}
_DATASET_ALIASES = {"cars196": "cars", "cub200": "cub"}


def das_defaults(dataset: str, base: str) -> dict[str, Any]:
    """DAS parameters of the authors' runs for `dataset` (cub/cars/cars196/sop) and base
    method; bases the authors do not list for a dataset get the CUB/CARS settings."""
    key = _DATASET_ALIASES.get(dataset.lower(), dataset.lower())
    return {**DAS_DEFAULTS, **DAS_DATASET_DEFAULTS.get(key, {}).get(base, {})}


_SEARCH = {
    "num_produce": ("int", 1, 5), "topk": ("int", 1, 32), "bank_size": ("int", 1, 50),
    "scale_radius": ("log", 1e-3, 1.0), "shift_scale": ("log", 1e-3, 1.0),
}
_VARIANTS = {  # suffix -> (use_dfs, use_mts, searched DAS parameters)
    "das": (True, True, ("num_produce", "topk", "bank_size", "scale_radius", "shift_scale")),
    "das-dfs": (True, False, ("num_produce", "topk", "scale_radius")),
    "das-mts": (False, True, ("num_produce", "bank_size", "shift_scale")),
}


def _make_components(base: str, use_dfs: bool, use_mts: bool):
    def components(num_classes: int, embedding_size: int, *, num_produce: int, topk: int,
                   bank_size: int, scale_lo: float, scale_hi: float, scale_radius: float | None,
                   shift_scale: float, detach: bool, normalize: bool, aux_weight: float,
                   **base_params: Any) -> tuple[DASLoss, None]:
        loss, miner = get_method(base).components(num_classes, embedding_size, **base_params)
        scale_range = ((scale_lo, scale_hi) if scale_radius is None
                       else (1.0 - scale_radius, 1.0 + scale_radius))
        das = DAS(num_classes, embedding_size, num_produce=num_produce, topk=topk,
                  bank_size=bank_size, scale_range=scale_range, shift_scale=shift_scale,
                  detach=detach, normalize=normalize, use_dfs=use_dfs, use_mts=use_mts)
        return DASLoss(loss, das, miner=miner, aux_weight=aux_weight), None
    return components


def register_das(base: str) -> None:
    """Register `BASE+das`, `BASE+das-dfs` and `BASE+das-mts` over a registered pair loss
    (a third-party package calls this for its own loss)."""
    spec = get_method(base)
    clash = set(spec.defaults) & set(DAS_DEFAULTS)
    if clash:
        raise ValueError(f"method {base!r} parameters {sorted(clash)} clash with DAS's")
    for suffix, (use_dfs, use_mts, searched) in _VARIANTS.items():
        part = {"das": "DFS + MTS", "das-dfs": "DFS only", "das-mts": "MTS only"}[suffix]
        register(MethodSpec(
            name=f"{base}+{suffix}",
            components=_make_components(base, use_dfs, use_mts),
            defaults={**spec.defaults, **DAS_DEFAULTS},
            search_space={**spec.search_space, **{k: _SEARCH[k] for k in searched}},
            family=spec.family,
            m_per_class=max(2, spec.m_per_class),
            base=base,
            description=f"{base} with densely-anchored sampling ({part})",
        ))


for _base in BASES:
    register_das(_base)
