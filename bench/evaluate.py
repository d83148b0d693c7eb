"""Retrieval and clustering metrics of an embedded set compared to itself.

Definitions follow specs/mlrc.md ("Metrics") and agree with pytorch-metric-learning's
``AccuracyCalculator(k="max_bin_count")`` for P@1, R-Precision, MAP@R and NMI.
Memory is O(n * k): the kNN comes from an exact blocked search (``knn``), never from an
n x n matrix, and labels are handled by counting (``np.unique``) and (n, k) array reductions.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import faiss
import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from dmlbench.bench.knn import DEFAULT_BUDGET_BYTES, self_knn

RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
CLUSTERING_KEYS = ("nmi", "f1")
KMEANS_ITERATIONS = 20
# How k-means picks its starting centroids: k-means++ (default), or "random", the single random
# start of the papers and of pytorch-metric-learning's FaissKMeans (for published NMI / F1).
KMEANS_INITS = ("kmeans++", "random")
# faiss's GPU brute-force search supports k up to this value.
_GPU_MAX_K = 2048


def metric_keys(recall_ks: Sequence[int] = (1, 2, 4, 8)) -> list[str]:
    """All keys ``compute_metrics`` can return for these ``recall_ks``, in output order."""
    return [*RETRIEVAL_KEYS, *(f"recall_at_{k}" for k in recall_ks), *CLUSTERING_KEYS]


def _to_numpy(x: Any, *, float32: bool = False) -> np.ndarray:
    """numpy array from a numpy array / sequence or a torch tensor on any device."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if float32:
            x = x.float()  # also covers half / bfloat16, which numpy cannot take
        x = x.numpy()
    return np.ascontiguousarray(x, dtype=np.float32) if float32 else np.asarray(x)


def l2_normalize(x: Any) -> np.ndarray:
    """Rows scaled to unit L2 norm, as a C-contiguous float32 array (zero rows stay zero)."""
    x = _to_numpy(x, float32=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, np.finfo(np.float32).tiny))


def _use_gpu() -> bool:
    return faiss.get_num_gpus() > 0


def drop_self(indices: np.ndarray) -> np.ndarray:
    """Remove each row's own index from an (n, k+1) self-search result, giving (n, k).

    Rows where the query is missing (many identical vectors crowd it out) lose their last
    column instead, so duplicates of the query are kept as neighbours.
    """
    n = indices.shape[0]
    is_self = indices == np.arange(n, dtype=indices.dtype)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return indices[~is_self].reshape(n, indices.shape[1] - 1)


KNN_BACKENDS = ("auto", "torch", "faiss")


def knn(x: Any, k: int, *, use_gpu: bool | None = None, backend: str = "auto",
        budget_bytes: int | None = None) -> np.ndarray:
    """Indices (n, k) of each row's k nearest other rows (Euclidean), nearest first.

    Exact search for k+1 neighbours, then the query itself is dropped (see ``drop_self``);
    ``k`` is clipped to n - 1. ``backend``:
    ``"torch"``: blocked matrix products with a fused selection (``dmlbench.bench.knn``: on
    the CPU a numba scan of cache-resident tiles, on CUDA group maxima and a partial top-k):
    exact order (float64 re-ranking of float32 near-ties), equal distances in increasing
    index, memory O(n * k) plus one block (``budget_bytes``, default 1 GiB);
    ``"faiss"``: one faiss flat L2 search (float32 distances; exact float32 ties in
    increasing index, as faiss's heaps break them);
    ``"auto"``: faiss when faiss sees a GPU (its GPU flat search: not measured against torch
    here, kept as before), else torch (on the CPU at SOP size, faster than faiss's flat
    search and than the plain blocked matrix product alone, see BENCHMARKS.md), which runs
    on CUDA when ``use_gpu`` (default: torch sees a GPU).
    """
    if backend not in KNN_BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; valid: {', '.join(KNN_BACKENDS)}")
    x = _to_numpy(x, float32=True)
    n, d = x.shape
    k = min(int(k), n - 1)
    if k <= 0:
        return np.empty((n, 0), dtype=np.int64)
    if backend == "auto":
        backend = "faiss" if _use_gpu() and k + 1 <= _GPU_MAX_K else "torch"
    if backend == "torch":
        gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
        _, indices = self_knn(x, k + 1, device="cuda" if gpu else "cpu",
                              budget_bytes=budget_bytes or DEFAULT_BUDGET_BYTES)
        return drop_self(indices)
    if use_gpu is None:
        use_gpu = _use_gpu()
    index: Any = faiss.IndexFlatL2(d)
    if use_gpu and k + 1 <= _GPU_MAX_K:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    _, indices = index.search(x, k + 1)
    return drop_self(indices)


def kmeans_plusplus(x: np.ndarray, n_clusters: int, rng: np.random.Generator,
                    *, batch: int = 256) -> np.ndarray:
    """Row indices of ``n_clusters`` k-means++ seeds (D² sampling) of ``x``, in pick order.

    Exact k-means++: each seed is drawn with probability proportional to its squared distance
    to the nearest earlier seed. Seeds are drawn in batches by rejection from the distances at
    the batch start (an upper bound), accepted with probability current / stale distance; the
    distances are then updated by one (n, batch) product. Memory O(n * batch). When every row
    already coincides with a seed, the remaining seeds are distinct rows drawn uniformly.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k = int(n_clusters)
    if not 1 <= k <= n:
        raise ValueError(f"cannot pick {k} k-means++ seeds among {n} rows")
    sq_norms = np.einsum("ij,ij->i", x, x)
    first = int(rng.integers(n))
    picked = [first]
    nearest = np.maximum(sq_norms - 2 * (x @ x[first]) + sq_norms[first], 0)
    nearest[first] = 0
    seeds = np.empty((min(batch, k), d), dtype=np.float32)  # this batch's seeds
    seed_sq = np.empty(len(seeds), dtype=np.float32)
    while len(picked) < k:
        cumulative = np.cumsum(nearest, dtype=np.float64)
        total = float(cumulative[-1])
        if total <= 0:  # every row coincides with a seed
            rest = np.setdiff1d(np.arange(n), picked)
            picked += rng.choice(rest, size=k - len(picked), replace=False).tolist()
            break
        b = rejected = 0
        while len(picked) < k and b < len(seeds) and rejected < 64:
            i = min(int(np.searchsorted(cumulative, rng.random() * total, side="right")), n - 1)
            current = float(nearest[i])
            if b:
                d2 = float(np.min(seed_sq[:b] - 2 * (seeds[:b] @ x[i]))) + float(sq_norms[i])
                current = min(current, max(d2, 0.0))
            if rng.random() * float(nearest[i]) < current:
                picked.append(i)
                seeds[b], seed_sq[b] = x[i], sq_norms[i]
                b += 1
                rejected = 0
            else:
                rejected += 1
        if b:
            d2 = x @ seeds[:b].T
            d2 *= -2
            d2 += seed_sq[:b]
            closest = d2.min(axis=1)
            closest += sq_norms
            np.minimum(nearest, np.maximum(closest, 0), out=nearest)
            nearest[picked[-b:]] = 0
    return np.asarray(picked, dtype=np.int64)


def _check_init(init: str) -> None:
    if init not in KMEANS_INITS:
        raise ValueError(f"unknown k-means init {init!r}; valid: {', '.join(KMEANS_INITS)}")


def kmeans(x: np.ndarray, n_clusters: int, *, seed: int = 0,
           init: str = "kmeans++") -> tuple[np.ndarray, float]:
    """Cluster id of each row after seeded faiss k-means, and the clustering's inertia.

    ``KMEANS_ITERATIONS`` Lloyd iterations (Euclidean) from ``init``: ``"kmeans++"`` seeds
    (``kmeans_plusplus`` with ``np.random.default_rng(seed)``), which finds well-separated
    clusters; ``"random"``: faiss's own random start, the papers' procedure. Inertia: the sum
    of squared distances of the rows to their centroids. Deterministic for a given seed.
    """
    _check_init(init)
    x = np.ascontiguousarray(x, dtype=np.float32)
    start = None
    if init == "kmeans++":
        start = x[kmeans_plusplus(x, n_clusters, np.random.default_rng(seed))]
    # min_points_per_centroid only silences faiss's "please provide at least ..." warning.
    km = faiss.Kmeans(
        x.shape[1],
        int(n_clusters),
        niter=KMEANS_ITERATIONS,
        seed=int(seed) % 2**31,  # faiss takes a C int; a negative one means "from the clock"
        gpu=_use_gpu(),
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(x, init_centroids=start)
    dist, assign = km.index.search(x, 1)
    return assign[:, 0], float(np.sum(dist, dtype=np.float64))


def kmeans_assign(x: np.ndarray, n_clusters: int, *, seed: int = 0,
                  init: str = "kmeans++") -> np.ndarray:
    """Cluster id of each row after seeded k-means (see ``kmeans``)."""
    return kmeans(x, n_clusters, seed=seed, init=init)[0]


def _pairs(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float(np.sum(counts * (counts - 1) / 2))


def pair_f1(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Clustering F1 over pairs of items, from the class x cluster contingency counts.

    nan when no two items share a class; 0 when no true-positive pair exists.
    """
    _, classes, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    _, cells, cluster_sizes = np.unique(clusters, return_inverse=True, return_counts=True)
    cell_ids = classes.reshape(-1).astype(np.int64) * len(cluster_sizes) + cells.reshape(-1)
    joint = np.unique(cell_ids, return_counts=True)[1]
    tp, same_class, same_cluster = _pairs(joint), _pairs(class_sizes), _pairs(cluster_sizes)
    if same_class == 0:
        return float("nan")
    if tp == 0:
        return 0.0
    precision, recall = tp / same_cluster, tp / same_class
    return 2 * precision * recall / (precision + recall)


def _resolve_include(include: Iterable[str] | None, recall_ks: Sequence[int]) -> list[str]:
    valid = metric_keys(recall_ks)
    if include is None:
        return valid
    wanted = set(include)
    unknown = sorted(wanted - set(valid))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid metrics: {', '.join(valid)}")
    return [key for key in valid if key in wanted]


def compute_metrics(
    embeddings: Any,
    labels: Any,
    *,
    include: Iterable[str] | None = None,
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    seed: int = 0,
    kmeans_init: str = "kmeans++",
    knn_backend: str = "auto",
) -> dict[str, float]:
    """Retrieval and clustering metrics of one embedded set compared to itself.

    Keys: ``precision_at_1``, ``r_precision``, ``mean_average_precision_at_r``,
    ``recall_at_{K}`` for K in ``recall_ks``, ``nmi``, ``f1`` (``include`` picks a subset;
    only what the picked keys need is computed). Retrieval metrics average over queries whose
    class has another item and are nan when there is none; NMI and F1 use every item.
    ``seed`` seeds k-means; ``kmeans_init`` is its start, ``"kmeans++"`` or the papers'
    ``"random"`` (see ``kmeans``); ``knn_backend``: see ``knn``.
    Inputs: numpy arrays or torch tensors on any device.
    """
    _check_init(kmeans_init)
    if knn_backend not in KNN_BACKENDS:
        raise ValueError(f"unknown kNN backend {knn_backend!r}; valid: {', '.join(KNN_BACKENDS)}")
    recall_ks = tuple(int(k) for k in recall_ks)
    if any(k < 1 for k in recall_ks):
        raise ValueError(f"recall_ks must be positive integers, got {recall_ks}")
    keys = _resolve_include(include, recall_ks)
    x = _to_numpy(embeddings, float32=True)
    y = _to_numpy(labels)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            f"expected embeddings (n, d) and labels (n,), got {x.shape} and {y.shape}"
        )
    if len(x) == 0:
        raise ValueError("cannot compute metrics of an empty set")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    x = l2_normalize(x)

    _, codes, class_sizes = np.unique(y, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    out: dict[str, float] = {}
    out.update(_retrieval(x, codes, class_sizes, keys, recall_ks, knn_backend))
    if "nmi" in keys or "f1" in keys:
        clusters = kmeans_assign(x, len(class_sizes), seed=seed, init=kmeans_init)
        if "nmi" in keys:
            out["nmi"] = float(
                normalized_mutual_info_score(codes, clusters, average_method="arithmetic")
            )
        if "f1" in keys:
            out["f1"] = pair_f1(codes, clusters)
    return {key: out[key] for key in keys}


def _retrieval(
    x: np.ndarray,
    codes: np.ndarray,
    class_sizes: np.ndarray,
    keys: list[str],
    recall_ks: Sequence[int],
    knn_backend: str = "auto",
) -> dict[str, float]:
    """P@1, R-Precision, MAP@R and Recall@K from one kNN search (those in ``keys``)."""
    wanted_recall = [k for k in recall_ks if f"recall_at_{k}" in keys]
    needed = [1] if "precision_at_1" in keys else []
    if "r_precision" in keys or "mean_average_precision_at_r" in keys:
        needed.append(int(class_sizes.max()) - 1)
    needed += wanted_recall
    if not needed:
        return {}

    n_relevant = class_sizes[codes] - 1  # R of each query
    queries = n_relevant > 0
    n_queries = int(queries.sum())
    k = min(max(needed), len(x) - 1)
    if n_queries == 0 or k <= 0:
        return {key: float("nan") for key in keys if key not in CLUSTERING_KEYS}

    neighbours = knn(x, k, backend=knn_backend)[queries]
    relevant = codes[neighbours] == codes[queries][:, None]  # (queries, k) bool
    r = n_relevant[queries]
    out: dict[str, float] = {}
    if "precision_at_1" in keys:
        out["precision_at_1"] = float(relevant[:, 0].mean())
    if "r_precision" in keys or "mean_average_precision_at_r" in keys:
        ranks = np.arange(1, k + 1)
        relevant_in_r = relevant & (ranks[None, :] <= r[:, None])
        if "r_precision" in keys:
            out["r_precision"] = float(np.mean(relevant_in_r.sum(axis=1) / r))
        if "mean_average_precision_at_r" in keys:
            hits_so_far = np.cumsum(relevant_in_r, axis=1, dtype=np.int64)
            precision_at_i = np.where(relevant_in_r, hits_so_far / ranks, 0.0)
            out["mean_average_precision_at_r"] = float(np.mean(precision_at_i.sum(axis=1) / r))
    for kk in wanted_recall:
        out[f"recall_at_{kk}"] = float(relevant[:, :kk].any(axis=1).mean())
    return out
