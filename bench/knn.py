"""Exact k-nearest-neighbour self-search by blocked matrix products (torch, CPU or CUDA).

Matrix products give a float32 proxy score of every pair (the inner product on unit-norm
rows, else ``<x, y> - |y|^2 / 2``: both rank like the squared Euclidean distance). The best
scores of each row are then selected one of two ways:

- **scan** (the CPU; numba): the products are made a tile at a time into one reused,
  cache-sized buffer, and a fused pass over each tile (``bench.knn_scan``) merges it into
  every row's best-list (the best ``k + 5`` scores so far) before the next product
  overwrites it: the scores never reach main memory. x x^T is symmetric, so each pair of
  row blocks is multiplied once and its tile scanned row-wise and column-wise: half the
  multiply-adds of the plain product, so the whole search takes less time than the plain
  blocked product alone (BENCHMARKS.md).
- **groups** (CUDA, or without numba): one product per block of query rows into a (block,
  n) buffer; group maxima (group ``c`` = columns ``c, c + W, ...``) come from one pass over
  it; the top groups hold the top scores, so only their members are ranked (``torch.topk``
  on a few hundred values per row). Small searches rank whole rows.

Either way the float32 proxy is within ``delta`` (a rounding bound) of the exact score: each
run of picked candidates whose consecutive scores are closer than ``2 delta`` (a near-tie
reaching the k best) is re-ranked in float64, and rows where the candidate set cannot be
proven complete are re-done from their whole row.
Peak memory: O(n * k) outputs plus one block of temporaries (``block_rows``, from a byte
budget; the scan's tile is 16 MB).

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
GROUP = 32  # columns per group (one group maximum each)
GROUPS_PER_PICK = 4  # groups are used only with this many groups per group taken
EXTRA_GROUPS = 1  # groups taken beyond k
EXTRA_CANDIDATES = 1  # scores kept beyond k (the k+1-th proves the boundary)
SCAN_EXTRA = 4  # the scan's scores kept beyond k: near-ties past the k-th stay in the list
SCAN_MIN_ROWS = 1024  # "auto" scans from this many rows (below, numba's load time dominates)
SELECTIONS = ("auto", "scan", "groups")  # auto: the scan on the CPU, groups on CUDA
_MATMUL_EPS = {"highest": 2.0**-23, "high": 2.0**-10, "medium": 2.0**-7}  # per precision
_UNIT_NORM_TOL = 1e-5  # rows this close to unit squared norm are ranked by inner product


def _grouped(n: int, k: int) -> bool:
    """Whether the groups path selects through group maxima (else it ranks whole rows)."""
    return -(-n // GROUP) >= GROUPS_PER_PICK * (k + EXTRA_GROUPS)


def _width(n: int, k: int) -> int:
    """Columns of a score row: n, padded to a multiple of GROUP when grouped."""
    return -(-n // GROUP) * GROUP if _grouped(n, k) else n


def block_bytes_per_row(n: int, k: int, d: int) -> int:
    """Bytes of block temporaries per query row of a self-search for k neighbours of n rows."""
    k = min(k, n)
    width = _width(n, k)
    pick = k + EXTRA_GROUPS
    return (4 * width  # float32 scores
            + 4 * (width // GROUP + 1) * _grouped(n, k)  # group maxima
            + 16 * pick * GROUP  # candidates (values, indices, topk)
            + 8 * (k + EXTRA_CANDIDATES) * (d + 4))  # float64 re-ranking of near-ties


def block_rows(n: int, k: int, d: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Query rows per block so that the block's temporaries fit ``budget_bytes`` (1 to n)."""
    return int(max(1, min(n, budget_bytes // block_bytes_per_row(n, k, d))))


def _scan_module(select: str, device: torch.device) -> Any:
    """``bench.knn_scan`` if the scan runs for this (valid) selection and device, else None."""
    if select == "groups" or (select == "auto" and device.type != "cpu"):
        return None
    if device.type != "cpu":
        raise ValueError(f"the kNN scan runs on the CPU only, not on {device}")
    try:
        from dmlbench.bench import knn_scan
    except ImportError:  # numba is a dependency; a broken install falls back to groups
        if select == "scan":
            raise
        log.warning("kNN: numba is not importable, so the kNN takes the slower group path")
        return None
    return knn_scan


def self_knn(
    x: Any,
    k: int,
    *,
    device: str | torch.device | None = None,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    rows: int | None = None,
    select: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances (float32) and indices (int64), (n, k), of each row's k nearest rows.

    The row itself is included (distance 0, after any duplicates of lower index); ``k`` is
    clipped to n. Distances are within ``2 delta`` (float32 rounding of the product, about
    ``1e-7 * d * max |x|^2``) of the exact ones; the order is exact (see the module).
    ``device``: where to compute (default: the tensor's device; the CPU for numpy input).
    ``rows``: query rows per block (default from ``budget_bytes``).
    ``select``: how the best scores are selected (module docstring): ``"scan"`` (CPU),
    ``"groups"``, or ``"auto"`` (the scan on the CPU, groups on CUDA).
    """
    xt = torch.as_tensor(x).detach()
    dev = torch.device(device) if device is not None else xt.device
    xt = xt.to(device=dev, dtype=torch.float32).contiguous()
    if xt.ndim != 2:
        raise ValueError(f"expected a 2-d array (n, d), got shape {tuple(xt.shape)}")
    if select not in SELECTIONS:
        raise ValueError(f"unknown kNN selection {select!r}; valid: {', '.join(SELECTIONS)}")
    if not bool(torch.isfinite(xt).all()):
        raise ValueError("the rows hold NaN or infinite values")
    n, d = xt.shape
    k = min(int(k), n)
    if k <= 0:
        return np.empty((n, 0), dtype=np.float32), np.empty((n, 0), dtype=np.int64)
    scan = None
    if n > k + SCAN_EXTRA and (select == "scan" or n >= SCAN_MIN_ROWS):
        scan = _scan_module(select, dev)
    search = _Search(xt, k, scan)
    b = min(int(rows) if rows else block_rows(n, k, d, budget_bytes), n)
    search.buffers(b)
    if scan is not None:
        search.scan_all()
    dist = torch.empty((n, k), dtype=torch.float64, device=dev)
    idx = torch.empty((n, k), dtype=torch.int64, device=dev)
    proxy = torch.empty((n, k), dtype=torch.float32, device=dev)
    exact = torch.zeros(n, dtype=torch.bool, device=dev)  # rows whose dist is already exact
    for start in range(0, n, b):
        stop = min(start + b, n)
        search.block(start, stop, proxy[start:stop], dist[start:stop], idx[start:stop],
                     exact[start:stop])
    rows_ = (~exact).nonzero()[:, 0]
    dist[rows_] = search.proxy_distances(rows_, proxy[rows_], idx[rows_])
    return dist.float().cpu().numpy(), idx.cpu().numpy()


class _Search:
    """One self-search: the rows, their squared norms, the selection, the rounding bound."""

    def __init__(self, x: torch.Tensor, k: int, scan: Any = None) -> None:
        n, d = x.shape
        self.x, self.n, self.k, self.scan = x, n, k, scan
        self.pick = k + EXTRA_GROUPS
        # candidates ranked per row (the next best score proves the list complete)
        self.n_best = k + SCAN_EXTRA if scan is not None else min(k + EXTRA_CANDIDATES, n)
        self.grouped = _grouped(n, k)
        self.width = _width(n, k)
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
        # members of group c (of W = width / GROUP groups): columns c + i * W, i < GROUP
        self.members = torch.arange(GROUP, device=x.device).view(1, GROUP, 1) * (
            self.width // GROUP)
        self.buf = torch.empty(0)
        self.tile = (0, 0)  # the scan's tile: rows, columns
        self.best: tuple[torch.Tensor, torch.Tensor] = (self.buf, self.buf)

    def buffers(self, rows: int) -> None:
        """The score buffer reused by every block of ``rows`` query rows: (rows, width) for
        the groups path; for the scan, one tile (flat) and the scan's scratch."""
        if self.scan is None:
            self.buf = torch.empty((rows, self.width), dtype=torch.float32, device=self.x.device)
            return
        side = min(self.scan.SYM_TILE, self.n)
        self.tile = (side, side)
        self.buf = torch.empty(side * side, dtype=torch.float32)
        self.maxima = np.empty((side, side // self.scan.LANES + 1), dtype=np.float32)

    def _scores(self, q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Proxy scores of rows q against every row into ``out`` (its columns past n, the
        padding: -inf); returns ``out``."""
        cols = out[:, : self.n]
        if self.bias is None:
            torch.mm(q, self.x.T, out=cols)
        else:
            torch.addmm(self.bias, q, self.x.T, out=cols)
        if out.shape[1] > self.n:
            out[:, self.n :] = -torch.inf
        return out

    def _tiles(self) -> list[tuple[int, int, int, int]]:
        """The scan's tiles in order: (first row, rows, first column, columns). x x^T is
        symmetric, so each pair of row blocks once: the diagonal tiles first (every
        best-list gets a threshold from its own block), then each tile above the diagonal,
        which also serves its columns' rows (scanned by columns)."""
        n, side = self.n, self.tile[0]
        starts = range(0, n, side)
        return ([(a, min(side, n - a), a, min(side, n - a)) for a in starts]
                + [(a, min(side, n - a), b, min(side, n - b))
                   for a in starts for b in starts if b > a])

    def scan_all(self) -> None:
        """Every row's best n_best + 1 proxy scores and their columns (``self.best``), by the
        fused scan of cache-sized tiles of inner products."""
        scan = self.scan
        vals, ids = scan.new_best(self.n, self.n_best + 1)
        threads = torch.get_num_threads()
        bias = None if self.bias is None else self.bias.numpy()
        for a, m, b, w in self._tiles():
            tile = self.buf[: m * w].view(m, w)  # contiguous
            torch.mm(self.x[a : a + m], self.x[b : b + w].T, out=tile)
            scores = tile.numpy()
            scan.scan(scores, b, vals[a : a + m], ids[a : a + m], self.maxima, threads,
                      None if bias is None else bias[b : b + w])
            if b != a:
                scan.scan_cols(scores, a, vals[b : b + w], ids[b : b + w], threads,
                               None if bias is None else bias[a : a + m])
        self.best = (torch.from_numpy(vals), torch.from_numpy(ids))

    def _top_groups(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Best n_best proxy scores of each row of s (descending), their columns, and the
        largest score or group maximum left out, where something was left out."""
        left: list[torch.Tensor] = []
        if not self.grouped:
            vals, ids = self._topk(s, self.n_best, left)
            return vals, ids, left
        m = len(s)
        maxima = torch.amax(s.view(m, GROUP, -1), dim=1)
        _, groups = self._topk(maxima, self.pick, left)
        cand = (groups[:, None, :] + self.members).view(m, -1)
        vals, pos = self._topk(torch.gather(s, 1, cand), self.n_best, left)
        return vals, torch.gather(cand, 1, pos), left

    @staticmethod
    def _topk(v: torch.Tensor, t: int, left: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Top t of each row, appending the best of the rest (if any) to ``left``."""
        if t >= v.shape[1]:
            return torch.topk(v, v.shape[1], dim=1)
        vals, pos = torch.topk(v, t + 1, dim=1)
        left.append(vals[:, t])
        return vals[:, :t], pos[:, :t]

    def block(self, start: int, stop: int, proxy: torch.Tensor, dist: torch.Tensor,
              idx: torch.Tensor, exact: torch.Tensor) -> None:
        """The k nearest rows of rows start..stop: indices into ``idx`` and proxy scores into
        ``proxy``, or exact distances into ``dist`` (flagged in ``exact``) for rows re-ranked
        here."""
        k, m, q = self.k, stop - start, self.x[start:stop]
        if self.scan is not None:
            vals, best = (t[start:stop] for t in self.best)
            vals, best, left = vals[:, :-1], best[:, :-1], [vals[:, -1]]
        else:
            vals, best, left = self._top_groups(self._scores(q, self.buf[:m]))
        threshold = vals[:, k - 1] - self.margin  # every true neighbour scores above this
        incomplete = ~torch.isfinite(threshold)
        for v in left:
            incomplete |= v >= threshold
        near = vals.diff(dim=1) >= -self.margin  # consecutive candidates in a near-tie
        near_tie = near[:, :k].any(dim=1) & ~incomplete  # a near-tie reaching the k best
        idx.copy_(best[:, :k])
        proxy.copy_(vals[:, :k])
        rows = near_tie.nonzero()[:, 0]
        queries = torch.arange(start, stop, device=q.device)
        if len(rows):
            dist[rows], idx[rows] = self._rank(queries[rows], best[rows], vals[rows],
                                               near[rows])
            exact[rows] = True
        rows = incomplete.nonzero()[:, 0]
        if len(rows):
            log.debug("kNN: %d of %d rows ranked from their whole row", len(rows), m)
            made = None if self.scan is not None else self.buf[:m][rows]  # groups: in buf
            dist[rows], idx[rows] = self._whole_rows(queries[rows], made)
            exact[rows] = True

    def proxy_distances(self, rows: torch.Tensor, proxy: torch.Tensor,
                        cols: torch.Tensor) -> torch.Tensor:
        """Squared distances (float64, within the margin) from the proxy scores."""
        out = proxy.double().mul_(-2).add_(self.sq64[rows, None])
        if self.unit:
            out += self.sq64[cols]
        return out.clamp_(min=0)

    def _rank(self, queries: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
              near: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest of each row's candidates (``cols``, ordered by proxy ``vals``;
        ``near``: consecutive ones within the margin). Each run of near-tied candidates is
        re-ordered by exact (distance, index), the rest keep their proxy order (a run's
        members are more than the margin from every other candidate). Distances: exact for
        run members, from the proxy for the rest."""
        real = cols < self.n
        safe = torch.where(real, cols, 0)
        dist = self.proxy_distances(queries, vals, safe)
        member = torch.zeros_like(real)
        member[:, :-1] |= near
        member[:, 1:] |= near
        r, p = member.nonzero(as_tuple=True)
        exact = torch.empty(len(r), dtype=torch.float64, device=cols.device)
        step = max(1, (8 << 20) // (8 * self.x64.shape[1]))  # 8 MB of float64 differences
        for a in range(0, len(r), step):
            rr, pp = r[a : a + step], p[a : a + step]
            diff = self.x64[safe[rr, pp]] - self.x64[queries[rr]]
            torch.sum(diff.square_(), -1, out=exact[a : a + step])
        dist[r, p] = exact
        dist.masked_fill_(~real, torch.inf)
        run = torch.cat([torch.zeros_like(near[:, :1]), ~near], dim=1).cumsum(dim=1)
        order = torch.argsort(cols, dim=1, stable=True)  # the last key first: index,
        for key in (dist, run):  # then distance, then the run
            order = torch.gather(order, 1, torch.argsort(torch.gather(key, 1, order), dim=1,
                                                          stable=True))
        take = order[:, : self.k]
        return torch.gather(dist, 1, take), torch.gather(cols, 1, take)

    def _whole_rows(self, queries: torch.Tensor, made: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank every column of these rows scoring within the margin of their k-th score.
        ``made``: their score rows when already made (the groups path), else they are made
        again, a chunk of rows at a time (the scan, which keeps no score rows)."""
        dev = queries.device
        dist = torch.empty((len(queries), self.k), dtype=torch.float64, device=dev)
        idx = torch.empty((len(queries), self.k), dtype=torch.int64, device=dev)
        # chunks: the boolean mask is 1/16 of the groups path's buffer; the scan's made
        # scores are one tile's worth
        chunk = max(1, len(self.buf) // 16) if made is not None else max(
            1, len(self.buf) // self.n)
        for a in range(0, len(queries), chunk):
            q = queries[a : a + chunk]
            s = made[a : a + chunk] if made is not None else self._scores(
                self.x[q], torch.empty((len(q), self.n), device=dev))
            threshold = torch.topk(s, self.k, dim=1).values[:, -1] - self.margin
            r, c = (s >= threshold[:, None]).nonzero(as_tuple=True)  # c ascending per r
            d = (self.x64[c] - self.x64[q[r]]).square_().sum(-1)
            order = torch.sort(d, stable=True).indices
            order = order[torch.sort(r[order], stable=True).indices]  # by row, distance, column
            counts = torch.bincount(r, minlength=len(q))
            first = torch.cumsum(counts, 0) - counts
            take = order[first[:, None] + torch.arange(self.k, device=dev)]
            dist[a : a + chunk], idx[a : a + chunk] = d[take], c[take]
        return dist, idx
