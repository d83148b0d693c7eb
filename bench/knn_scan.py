"""The CPU kNN's selection kernel (numba): a fused pass over one cache-resident score tile.

`bench.knn` makes the float32 inner products a tile at a time (``torch.mm`` into one reused
buffer of ``SYM_TILE`` x ``SYM_TILE``, 16 MB, which stays in the cache) and calls ``scan``
on each tile before the next product overwrites it. ``scan`` keeps, per query row,
the best ``T`` scores seen so far, sorted descending, with their columns. It first takes the
maxima of lane groups (group i: columns i, i + w, ... of the tile, ``LANES`` of them: an
elementwise max of contiguous runs, which the compiler vectorises), and looks at a group's
members only when its maximum beats the row's T-th best, so almost every score costs one
vector max. The list holds the exact T best values; among equal scores the members kept
need not be the lowest columns (equal scores are near-ties, which `bench.knn` re-ranks or
re-does from the whole row). This replaces a second pass over the whole (block, n) score
matrix in main memory, which is what kept the pure-torch path at 1.5x the matrix product's
own cost.

The inner products x x^T are symmetric, so each pair of row blocks is multiplied once and
``scan_cols`` merges the same tile column-wise into the other block's best-lists (a
vectorised "does any column gain this row" test per chunk of columns, then per 16 columns):
half the multiply-adds of the plain product. Rows not of unit norm rank by the proxy
``<x, y> - |y|^2 / 2``: each kernel adds that bias itself (a vector per column in ``scan``,
a number per tile row in ``scan_cols``).

Importing this module imports numba and compiles nothing; the first call compiles the
kernels (cached on disk by numba: about 4 s once, then 0.5 s to load per process). Scores must be finite (the caller checks its input).
"""
from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np
from numba import njit, prange

SYM_TILE = 2048  # rows and columns per tile (each pair of row blocks multiplied once)
LANES = 16  # columns per lane group, whose maximum is tested first
COL_CHUNK = 128  # query columns per task of the column scan (a multiple of COL_SUB)
COL_SUB = 16  # columns tested together once a chunk has a hit
FLOOR = np.float32(-3.0e38)  # below every finite proxy score: the initial "best so far"
# no 'ninf': the kernel compares against FLOOR, never against an infinity
_FASTMATH = {"nnan", "nsz", "reassoc", "contract", "arcp"}
_LOCK = threading.Lock()  # numba's default (workqueue) threading layer is not thread-safe


@njit(inline="always", fastmath=_FASTMATH)
def _insert(vals: np.ndarray, ids: np.ndarray, x: np.float32, col: int) -> np.float32:
    """Insert score x of column col into the sorted best-list; returns the new T-th best."""
    p = len(vals) - 1
    while p > 0 and vals[p - 1] < x:  # equal scores: the one seen first stays ahead
        vals[p] = vals[p - 1]
        ids[p] = ids[p - 1]
        p -= 1
    vals[p] = x
    ids[p] = col
    return vals[len(vals) - 1]


@njit(fastmath=_FASTMATH)
def _tth_largest(a: np.ndarray, t: int) -> np.float32:
    """The t-th largest value of a (len(a) >= t): a lower bound of the t-th best score, since
    the t largest group maxima are t distinct scores."""
    best, cols = np.full(t, FLOOR, dtype=np.float32), np.empty(t, dtype=np.int64)
    for x in a:
        if x > best[t - 1]:
            _insert(best, cols, x, 0)
    return best[t - 1]


@njit(parallel=True, fastmath=_FASTMATH, nogil=True, cache=True)
def _scan(s: np.ndarray, first_col: int, vals: np.ndarray, ids: np.ndarray,
          maxima: np.ndarray, bias: np.ndarray) -> None:
    m, c = s.shape
    w = c // LANES  # lane group i: columns i, i + w, ..., i + (LANES - 1) w
    biased = len(bias) > 0
    for r in prange(m):
        row, v, ix, mx = s[r], vals[r], ids[r], maxima[r]
        worst = v[len(v) - 1]
        if biased:  # vectorised: LANES contiguous runs, elementwise max
            for i in range(w):
                top = row[i] + bias[i]
                for g in range(1, LANES):
                    x = row[g * w + i] + bias[g * w + i]
                    top = x if x > top else top
                mx[i] = top
        else:
            for i in range(w):
                top = row[i]
                for g in range(1, LANES):
                    x = row[g * w + i]
                    top = x if x > top else top
                mx[i] = top
        bound = worst
        if worst == FLOOR and w >= len(v):  # an empty list: start from the T-th group max
            bound = _tth_largest(mx[:w], len(v))
        for i in range(w):
            if mx[i] >= bound:
                for g in range(LANES):
                    j = g * w + i
                    x = row[j] + bias[j] if biased else row[j]
                    if x > worst and x >= bound:
                        worst = _insert(v, ix, x, first_col + j)
        for j in range(w * LANES, c):
            x = row[j] + bias[j] if biased else row[j]
            if x > worst:
                worst = _insert(v, ix, x, first_col + j)


@njit(parallel=True, fastmath=_FASTMATH, nogil=True, cache=True)
def _scan_cols(s: np.ndarray, first_row: int, vals: np.ndarray, ids: np.ndarray,
               bias: np.ndarray) -> None:
    m, c = s.shape
    t = vals.shape[1]
    biased = len(bias) > 0
    for chunk in prange((c + COL_CHUNK - 1) // COL_CHUNK):
        a = chunk * COL_CHUNK
        w = min(COL_CHUNK, c - a)
        worst = np.empty(COL_CHUNK, dtype=np.float32)
        for j in range(w):
            worst[j] = vals[a + j, t - 1]
        for i in range(m):
            row = s[i, a : a + w]
            b = bias[i] if biased else np.float32(0.0)  # the score of column j: row[j] + b
            if w == COL_CHUNK:
                hit = False
                for j in range(COL_CHUNK):  # vectorised: does any column gain this row?
                    hit |= row[j] + b > worst[j]
                if not hit:
                    continue
            for a2 in range(0, w, COL_SUB):
                sub = False
                for j in range(a2, min(a2 + COL_SUB, w)):
                    sub |= row[j] + b > worst[j]
                if sub:
                    for j in range(a2, min(a2 + COL_SUB, w)):
                        if row[j] + b > worst[j]:
                            worst[j] = _insert(vals[a + j], ids[a + j], row[j] + b,
                                               first_row + i)


def new_best(rows: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty best-lists for ``rows`` query rows: (rows, t) scores at FLOOR and columns -1."""
    return np.full((rows, t), FLOOR, dtype=np.float32), np.full((rows, t), -1, dtype=np.int64)


_NO_BIAS = np.empty(0, dtype=np.float32)


def _run(kernel: Any, threads: int, *args: Any) -> None:
    """A parallel kernel on ``threads`` threads, one call at a time (see ``_LOCK``)."""
    with _LOCK:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        kernel(*args)


def scan(s: np.ndarray, first_col: int, vals: np.ndarray, ids: np.ndarray,
         maxima: np.ndarray, threads: int, bias: np.ndarray | None = None) -> None:
    """Merge score tile ``s`` (rows, cols; column j is column ``first_col + j`` of the row,
    its score ``s[:, j] + bias[j]``, or ``s[:, j]`` without a bias) into the rows'
    best-lists ``vals``/``ids`` (rows, T), in place, on ``threads`` threads; ``maxima``:
    scratch of at least (rows, cols // LANES)."""
    _run(_scan, threads, s, first_col, vals, ids, maxima, _NO_BIAS if bias is None else bias)


def scan_cols(s: np.ndarray, first_row: int, vals: np.ndarray, ids: np.ndarray,
              threads: int, bias: np.ndarray | None = None) -> None:
    """Merge the columns of score tile ``s`` (rows, cols; row i is column ``first_row + i``
    of the query rows that are its columns, its score ``s[i] + bias[i]``) into those query
    rows' best-lists ``vals``/``ids`` (cols, T): the tile's transpose, scanned without being
    transposed. With ``scan`` on the same tile, the scores of a symmetric product serve both
    of its row blocks."""
    _run(_scan_cols, threads, s, first_row, vals, ids, _NO_BIAS if bias is None else bias)
