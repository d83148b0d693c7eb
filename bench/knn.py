"""Exact k-nearest-neighbour self-search by blocked matrix products (torch, CPU or CUDA).

For a block of query rows, one matrix product gives a float32 proxy score of every pair
(the inner product on unit-norm rows, else ``<x, y> - |y|^2 / 2``: both rank like the squared
Euclidean distance). Group maxima over the block (group ``c`` = columns ``c, c + W, ...``,
and groups of groups) come from one pass over it; the top groups hold the top scores, so
only their members are ranked (``torch.topk`` on a few hundred values per row). The float32
proxy is within ``delta`` (a rounding bound) of the exact score; rows whose picked scores are
closer than ``2 delta`` to each other are re-ranked in float64, and rows where the candidate
set cannot be proven complete are re-done from their whole row. Peak memory: the (block, n)
score buffer plus O(block * k * GROUP) candidates, the block chosen from a byte budget
(``block_rows``); outputs are O(n * k).

Order: squared Euclidean distance of the float32 rows evaluated in float64, nearest first;
equal distances (duplicate rows) in increasing row index. faiss's flat index breaks exact
float32 ties the same way (lower id first); near-ties below float32 resolution may be ordered
differently from faiss, which rounds its own distances in float32.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 1 << 30
GROUP = 32  # entries per group, at each level of group maxima
LEVELS = 1  # levels of group maxima at most (a second level measured slower on CPU)
GROUPS_PER_PICK = 4  # a level is added only when it has this many groups per group taken
EXTRA_GROUPS = 1  # groups taken per level beyond k
EXTRA_CANDIDATES = 1  # scores kept beyond k (the k+1-th proves the boundary)
_MATMUL_EPS = {"highest": 2.0**-23, "high": 2.0**-10, "medium": 2.0**-7}  # per precision
_UNIT_NORM_TOL = 1e-5  # rows this close to unit squared norm are ranked by inner product


def _levels(n: int, k: int) -> list[int]:
    """Group sizes of the levels of group maxima for n columns, k neighbours."""
    sizes: list[int] = []
    width = n
    while len(sizes) < LEVELS and -(-width // GROUP) >= GROUPS_PER_PICK * (k + EXTRA_GROUPS):
        sizes.append(GROUP)
        width = -(-width // GROUP)
    return sizes


def block_bytes_per_row(n: int, k: int, d: int) -> int:
    """Bytes of block temporaries per query row of a self-search for k neighbours of n rows."""
    k = min(k, n)
    sizes = _levels(n, k)
    unit = int(np.prod(sizes)) if sizes else 1
    width = -(-n // unit) * unit
    pick = k + EXTRA_GROUPS
    return (4 * width  # float32 scores
            + 4 * (width // GROUP + 1) * bool(sizes)  # group maxima
            + 16 * pick * GROUP * max(len(sizes), 1)  # candidates (values, indices, topk)
            + 8 * (k + EXTRA_CANDIDATES) * (d + 4))  # float64 re-ranking of near-ties


def block_rows(n: int, k: int, d: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Query rows per block so that the block's temporaries fit ``budget_bytes`` (1 to n)."""
    return int(max(1, min(n, budget_bytes // block_bytes_per_row(n, k, d))))


def self_knn(
    x: Any,
    k: int,
    *,
    device: str | torch.device | None = None,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances (float32) and indices (int64), (n, k), of each row's k nearest rows.

    The row itself is included (distance 0, after any duplicates of lower index); ``k`` is
    clipped to n. Distances are within ``2 delta`` (float32 rounding of the product, about
    ``1e-7 * d * max |x|^2``) of the exact ones; the order is exact (see the module).
    ``device``: where to compute (default: the tensor's device; the CPU for numpy input).
    ``rows``: query rows per block (default from ``budget_bytes``).
    """
    xt = torch.as_tensor(x).detach()
    dev = torch.device(device) if device is not None else xt.device
    xt = xt.to(device=dev, dtype=torch.float32).contiguous()
    if xt.ndim != 2:
        raise ValueError(f"expected a 2-d array (n, d), got shape {tuple(xt.shape)}")
    n, d = xt.shape
    k = min(int(k), n)
    if k <= 0:
        return np.empty((n, 0), dtype=np.float32), np.empty((n, 0), dtype=np.int64)
    b = min(int(rows) if rows else block_rows(n, k, d, budget_bytes), n)
    search = _Search(xt, k)
    dist = torch.empty((n, k), dtype=torch.float64, device=dev)
    idx = torch.empty((n, k), dtype=torch.int64, device=dev)
    proxy = torch.empty((n, k), dtype=torch.float32, device=dev)
    exact = torch.zeros(n, dtype=torch.bool, device=dev)  # rows whose dist is already exact
    buf = torch.empty((b, search.width), dtype=torch.float32, device=dev)
    for start in range(0, n, b):
        stop = min(start + b, n)
        search.block(start, buf[: stop - start], proxy[start:stop], dist[start:stop],
                     idx[start:stop], exact[start:stop])
    rows = (~exact).nonzero()[:, 0]
    dist[rows] = search.proxy_distances(rows, proxy[rows], idx[rows])
    return dist.float().cpu().numpy(), idx.cpu().numpy()


class _Search:
    """One self-search: the rows, their squared norms, the levels, the rounding bound."""

    def __init__(self, x: torch.Tensor, k: int) -> None:
        n, d = x.shape
        self.x, self.n, self.k = x, n, k
        self.pick = k + EXTRA_GROUPS
        self.n_best = min(k + EXTRA_CANDIDATES, n)
        self.sizes = _levels(n, k)
        unit = int(np.prod(self.sizes)) if self.sizes else 1
        self.width = -(-n // unit) * unit
        self.x64 = x.double()
        self.sq64 = self.x64.square().sum(1)
        spread = float((self.sq64 - 1).abs().max())
        self.unit = spread <= _UNIT_NORM_TOL
        # proxy: <x, y> on unit rows, else <x, y> - |y|^2 / 2 (one addmm)
        self.bias = None if self.unit else (-self.sq64 / 2).float()
        # |float32 proxy - exact proxy| <= delta for every pair: d-term product rounding,
        # plus the |y|^2 / 2 left out on unit rows
        top = float(self.sq64.max())
        # float32 products may run in TF32 / bfloat16 where the user allowed it
        eps = _MATMUL_EPS.get(torch.get_float32_matmul_precision(), _MATMUL_EPS["medium"])
        delta = (d + 2) * eps * 1.5 * max(top, 1e-30)
        if self.unit:
            delta += spread / 2
        self.margin = 2 * delta
        # offsets of a group's members: group c of a level of w groups holds c + j * w
        self.offsets: list[torch.Tensor] = []
        w = self.width
        for g in self.sizes:
            w //= g
            self.offsets.append(torch.arange(g, device=x.device).view(1, g, 1) * w)

    def _scores(self, q: torch.Tensor, out: torch.Tensor) -> None:
        cols = out[:, : self.n] if self.width > self.n else out
        if self.bias is None:
            torch.mm(q, self.x.T, out=cols)
        else:
            torch.addmm(self.bias, q, self.x.T, out=cols)
        if self.width > self.n:
            out[:, self.n :] = -torch.inf

    def _top(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Best n_best proxy scores of each row (descending), their columns, and the largest
        score (or group maximum) left out, at each level where something was left out."""
        m = len(s)
        maxima = [s]
        for g in self.sizes:
            maxima.append(torch.amax(maxima[-1].view(m, g, -1), dim=1))
        left: list[torch.Tensor] = []
        vals, ids = self._topk(maxima[-1], self.pick if self.sizes else self.n_best, left)
        for level in range(len(self.sizes) - 1, -1, -1):
            cand = (ids[:, None, :] + self.offsets[level]).view(m, -1)
            vals, pos = self._topk(torch.gather(maxima[level], 1, cand),
                                   self.pick if level else self.n_best, left)
            ids = torch.gather(cand, 1, pos)
        return vals, ids, left

    @staticmethod
    def _topk(v: torch.Tensor, t: int, left: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Top t of each row, appending the best of the rest (if any) to ``left``."""
        if t >= v.shape[1]:
            return torch.topk(v, v.shape[1], dim=1)
        vals, pos = torch.topk(v, t + 1, dim=1)
        left.append(vals[:, t])
        return vals[:, :t], pos[:, :t]

    def block(self, start: int, s: torch.Tensor, proxy: torch.Tensor, dist: torch.Tensor,
              idx: torch.Tensor, exact: torch.Tensor) -> None:
        """The k nearest rows of rows start.. (as many as ``s`` has): indices into ``idx``
        and proxy scores into ``proxy``, or exact distances into ``dist`` (flagged in ``exact``)
        for rows re-ranked here."""
        k, m = self.k, len(s)
        self._scores(self.x[start : start + m], s)
        vals, best, left = self._top(s)
        threshold = vals[:, k - 1] - self.margin  # every true neighbour scores above this
        incomplete = ~torch.isfinite(threshold)
        for v in left:
            incomplete |= v >= threshold
        gaps = vals[:, : min(k + 1, vals.shape[1])].diff(dim=1)
        near_tie = (gaps >= -self.margin).any(dim=1) & ~incomplete
        idx.copy_(best[:, :k])
        proxy.copy_(vals[:, :k])
        rows = near_tie.nonzero()[:, 0]
        queries = torch.arange(start, start + m, device=s.device)
        if len(rows):
            dist[rows], idx[rows] = self._rank(queries[rows], best[rows])
            exact[rows] = True
        rows = incomplete.nonzero()[:, 0]
        if len(rows):
            log.debug("kNN: %d of %d rows ranked from their whole row", len(rows), m)
            dist[rows], idx[rows] = self._whole_rows(queries[rows], s[rows])
            exact[rows] = True

    def proxy_distances(self, rows: torch.Tensor, proxy: torch.Tensor,
                        cols: torch.Tensor) -> torch.Tensor:
        """Squared distances (float64, within the margin) from the proxy scores."""
        out = proxy.double().mul_(-2).add_(self.sq64[rows, None])
        if self.unit:
            out += self.sq64[cols]
        return out.clamp_(min=0)

    def _rank(self, queries: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest of each row's candidate columns, by exact (distance, index)."""
        cols, _ = torch.sort(cols, dim=1)
        real = cols < self.n
        diff = self.x64[torch.where(real, cols, 0)] - self.x64[queries][:, None, :]
        dist = diff.square_().sum(-1).masked_fill_(~real, torch.inf)
        dist, order = torch.sort(dist, dim=1, stable=True)
        return dist[:, : self.k], torch.gather(cols, 1, order[:, : self.k])

    def _whole_rows(
        self, queries: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank every column of these rows scoring within the margin of their k-th score."""
        dist = torch.empty((len(queries), self.k), dtype=torch.float64, device=s.device)
        idx = torch.empty((len(queries), self.k), dtype=torch.int64, device=s.device)
        chunk = max(1, len(s) // 16)  # the boolean mask is 1/16 of the score block
        for a in range(0, len(queries), chunk):
            sl = slice(a, a + chunk)
            threshold = torch.topk(s[sl], self.k, dim=1).values[:, -1] - self.margin
            r, c = (s[sl] >= threshold[:, None]).nonzero(as_tuple=True)  # c ascending per r
            q = queries[sl]
            d = (self.x64[c] - self.x64[q[r]]).square_().sum(-1)
            order = torch.sort(d, stable=True).indices
            order = order[torch.sort(r[order], stable=True).indices]  # by row, distance, column
            counts = torch.bincount(r, minlength=len(q))
            first = torch.cumsum(counts, 0) - counts
            take = order[first[:, None] + torch.arange(self.k, device=s.device)]
            dist[sl], idx[sl] = d[take], c[take]
        return dist, idx
