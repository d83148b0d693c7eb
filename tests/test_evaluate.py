"""dmlbench.bench.evaluate: numbers against pytorch-metric-learning, brute force and a hand-worked case.

NMI is compared with PML's AccuracyCalculator given the same k-means (PML's FaissKMeans with
our seed and iteration count, and our `kmeans_init="random"`, the papers' single random start;
PML's default k-means uses faiss's default seed), so the two cluster assignments are the same
faiss run. The default k-means++ start is checked against an exact enumeration of k-means++
probabilities and on perfectly separated clusters.
"""
from __future__ import annotations

import math
from collections import Counter
from itertools import combinations, permutations

import faiss
import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKMeans
from sklearn.metrics import normalized_mutual_info_score

from dmlbench.bench import evaluate
from dmlbench.bench.config import SCHEMA, load_config
from dmlbench.bench.errors import UserError
from dmlbench.bench.evaluate import (KMEANS_INITS, compute_metrics, drop_self, kmeans, kmeans_assign,
                            kmeans_plusplus, knn, l2_normalize, pair_f1)

TOL = 1e-6
PML_KEYS = {
    "precision_at_1": "precision_at_1",
    "r_precision": "r_precision",
    "mean_average_precision_at_r": "mean_average_precision_at_r",
    "nmi": "NMI",
}


def _data(kind: str, n: int, n_classes: int, dim: int = 16, seed: int = 0):
    """Raw (unnormalised) embeddings and labels; a few lone labels appended to the classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    labels[:4] = n_classes + np.arange(4)  # lone labels
    x = rng.standard_normal((n, dim))
    if kind == "clustered":
        x = 2.0 * rng.standard_normal((n_classes + 4, dim))[labels] + x
    return (x * rng.uniform(0.5, 3.0, (n, 1))).astype(np.float32), labels


def _pml(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    calc = AccuracyCalculator(
        include=tuple(PML_KEYS.values()),
        k="max_bin_count",
        device=torch.device("cpu"),
        kmeans_func=FaissKMeans(
            niter=20, seed=seed, gpu=faiss.get_num_gpus() > 0, min_points_per_centroid=1
        ),
    )
    return calc.get_accuracy(torch.from_numpy(l2_normalize(x)), torch.from_numpy(y))


@pytest.mark.parametrize("kind,n,n_classes", [("random", 600, 80), ("clustered", 1500, 250)])
def test_agrees_with_pml_accuracy_calculator(kind, n, n_classes):
    x, y = _data(kind, n, n_classes)
    ours = compute_metrics(x, y, seed=3, kmeans_init="random")
    theirs = _pml(x, y, seed=3)
    for key, pml_key in PML_KEYS.items():
        assert ours[key] == pytest.approx(theirs[pml_key], abs=TOL), key
    assert 0 < ours["precision_at_1"] < 1


def _brute_force_ranking(x: np.ndarray) -> np.ndarray:
    sim = l2_normalize(x).astype(np.float64) @ l2_normalize(x).astype(np.float64).T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")


def test_recall_at_k_matches_brute_force():
    x, y = _data("clustered", 300, 70, dim=8, seed=1)  # classes of about 4: K=16 > k
    ks = (1, 2, 4, 8, 16)
    ours = compute_metrics(x, y, recall_ks=ks, include=[f"recall_at_{k}" for k in ks])
    order = _brute_force_ranking(x)
    hit = y[order] == y[:, None]
    _, codes, sizes = np.unique(y, return_inverse=True, return_counts=True)
    queries = sizes[codes] > 1
    for k in ks:
        expected = hit[queries, :k].any(axis=1).mean()
        assert ours[f"recall_at_{k}"] == pytest.approx(expected, abs=TOL)
    assert ours["recall_at_16"] > ours["recall_at_1"]


def _brute_force_f1(y: np.ndarray, clusters: np.ndarray) -> float:
    tp = same_cluster = same_class = 0
    for i, j in combinations(range(len(y)), 2):
        same_class += y[i] == y[j]
        same_cluster += clusters[i] == clusters[j]
        tp += y[i] == y[j] and clusters[i] == clusters[j]
    precision, recall = tp / same_cluster, tp / same_class
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("init", KMEANS_INITS)
def test_f1_and_nmi_match_brute_force_on_the_same_clustering(init):
    x, y = _data("clustered", 120, 15, dim=8, seed=2)
    ours = compute_metrics(x, y, include=["nmi", "f1"], seed=5, kmeans_init=init)
    clusters = kmeans_assign(l2_normalize(x), len(np.unique(y)), seed=5, init=init)
    assert ours["f1"] == pytest.approx(_brute_force_f1(y, clusters), abs=1e-12)
    nmi = normalized_mutual_info_score(y, clusters, average_method="arithmetic")
    assert ours["nmi"] == pytest.approx(nmi, abs=1e-12)
    assert 0 < ours["f1"] < 1 and 0 < ours["nmi"] < 1


def _separated(seed: int, n_clusters: int = 20, per_cluster: int = 10, dim: int = 16):
    """Perfectly separated clusters: noise 0.01 around random centres of scale 50."""
    rng = np.random.default_rng(seed)
    centres = 50 * rng.standard_normal((n_clusters, dim))
    y = rng.permutation(np.repeat(np.arange(n_clusters), per_cluster))
    return (centres[y] + 0.01 * rng.standard_normal((len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_default_kmeans_finds_separated_clusters(data_seed):
    x, y = _separated(data_seed)
    for seed in (0, 1, 2, 3):
        out = compute_metrics(x, y, include=["nmi", "f1"], seed=seed)
        assert out["f1"] == 1.0
        assert out["nmi"] == pytest.approx(1.0, abs=1e-12)
        clusters = kmeans_assign(l2_normalize(x), 20, seed=seed)
        # one cluster per class, exactly
        assert len(set(zip(y.tolist(), clusters.tolist()))) == 20 == len(set(clusters.tolist()))


def test_random_init_is_faiss_single_start():
    """kmeans_init="random" is unchanged: one faiss k-means from faiss's random start."""
    found_all = []
    for data_seed, seed in [(0, 0), (1, 4), (2, 9)]:
        x, y = _separated(data_seed)
        xn = l2_normalize(x)
        km = faiss.Kmeans(16, 20, niter=20, seed=seed, min_points_per_centroid=1,
                          gpu=faiss.get_num_gpus() > 0)
        km.train(xn)
        direct = km.index.search(xn, 1)[1][:, 0]
        assert np.array_equal(kmeans_assign(xn, 20, seed=seed, init="random"), direct)
        out = compute_metrics(x, y, include=["nmi", "f1"], seed=seed, kmeans_init="random")
        assert out["nmi"] == pytest.approx(
            normalized_mutual_info_score(y, direct, average_method="arithmetic"), abs=1e-12)
        assert out["f1"] == pytest.approx(_brute_force_f1(y, direct), abs=1e-12)
        found_all.append(out["f1"] == 1.0)
    assert not all(found_all)  # the papers' procedure misses separated clusters


def _exact_kmeanspp(x: np.ndarray, k: int, power: int = 2) -> dict[tuple, float]:
    """Probability of each ordered seed sequence under k-means++ (distance**power sampling)."""
    x = x.astype(np.float64)
    out = {}
    for seq in permutations(range(len(x)), k):
        p = 1 / len(x)
        for j in range(1, k):
            d2 = ((x[:, None, :] - x[list(seq[:j])][None]) ** 2).sum(-1).min(axis=1)
            w = d2 ** (power / 2)
            p *= w[seq[j]] / w.sum()
        out[seq] = p
    return out


@pytest.mark.parametrize("batch", [1, 256])
def test_kmeans_plusplus_draws_the_exact_distribution(batch):
    # batch=1 updates distances after every pick; 256 takes every pick by rejection
    x = np.array([[0, 0], [0.3, 0], [1, 0], [1, 1.5], [4, 0]], dtype=np.float32)
    exact = _exact_kmeanspp(x, 3)
    plain_distance = _exact_kmeanspp(x, 3, power=1)
    assert 0.5 * sum(abs(exact[s] - plain_distance[s]) for s in exact) > 0.2
    rng = np.random.default_rng(0)
    draws = 8000
    counts = Counter(tuple(kmeans_plusplus(x, 3, rng, batch=batch).tolist())
                     for _ in range(draws))
    assert set(counts) <= set(exact)
    total_variation = 0.5 * sum(abs(counts[s] / draws - p) for s, p in exact.items())
    assert total_variation < 0.05


def test_kmeans_plusplus_with_duplicate_rows():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct rows, 12 rows
    seeds = kmeans_plusplus(x, 5, np.random.default_rng(1))
    assert len(set(seeds.tolist())) == 5
    assert len({tuple(r) for r in x[seeds[:3]].tolist()}) == 3  # the distinct rows come first
    with pytest.raises(ValueError, match="13 k-means"):
        kmeans_plusplus(x, 13, np.random.default_rng(0))


def test_kmeans_is_deterministic_and_keeps_faiss_seed_in_range():
    x, y = _data("clustered", 400, 60)
    xn = l2_normalize(x)
    for init in KMEANS_INITS:
        first, inertia = kmeans(xn, 64, seed=7, init=init)
        again, inertia_again = kmeans(xn, 64, seed=7, init=init)
        assert np.array_equal(first, again) and inertia == inertia_again
        other, _ = kmeans(xn, 64, seed=8, init=init)
        assert not np.array_equal(first, other)
        # inertia is the sum of squared distances to the clusters' means (20 iterations:
        # close to, not exactly at, the means)
        means = np.stack([xn[first == c].mean(axis=0) for c in np.unique(first)])
        at_means = ((xn - means[np.searchsorted(np.unique(first), first)]) ** 2).sum()
        assert at_means <= inertia * (1 + 1e-5)
        assert inertia == pytest.approx(at_means, rel=0.05)
        big = compute_metrics(x, y, include=["nmi", "f1"], seed=2**32 - 1, kmeans_init=init)
        assert 0 < big["nmi"] < 1


def test_kmeans_init_setting():
    default, check = SCHEMA["eval"]["kmeans_init"]
    assert default == "kmeans++" == compute_metrics.__kwdefaults__["kmeans_init"]
    assert all(check(v) is None for v in KMEANS_INITS)
    assert check("restarts") is not None
    assert load_config(overrides=["eval.kmeans_init=random"])["eval"]["kmeans_init"] == "random"
    with pytest.raises(UserError, match="eval.kmeans_init='single'"):
        load_config(overrides=["eval.kmeans_init=single"])
    x, y = _data("random", 50, 5)
    with pytest.raises(ValueError, match="valid: kmeans\\+\\+, random"):
        compute_metrics(x, y, kmeans_init="single")


def test_pair_f1_on_random_partitions():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y, clusters = rng.integers(0, 6, 50), rng.integers(0, 9, 50)
        assert pair_f1(y, clusters) == pytest.approx(_brute_force_f1(y, clusters), abs=1e-12)
    assert pair_f1(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])) == 1.0
    assert pair_f1(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3])) == 0.0
    assert math.isnan(pair_f1(np.array([0, 1, 2]), np.array([0, 0, 0])))


def test_map_at_r_hand_worked_example():
    # Unit vectors at these angles; class "a" has 4 items, each x is a lone label.
    #   a1@0  a2@10  x1@22  a3@35  x2@62  a4@90            R = 3 for every a query
    # a1: a2 (hit), x1, a3 (hit)  AP = (1/1 + 2/3) / 3 = 5/9   RP = 2/3  P@1 = 1
    # a2: a1 (hit), x1, a3 (hit)  AP = 5/9                     RP = 2/3  P@1 = 1
    # a3: x1, a2 (hit), x2        AP = (1/2) / 3 = 1/6         RP = 1/3  P@1 = 0
    # a4: x2, a3 (hit), x1        AP = 1/6                     RP = 1/3  P@1 = 0
    # MAP@R = (5/9 + 5/9 + 1/6 + 1/6) / 4 = 13/36 (x queries are lone, so excluded)
    angles = np.radians([0, 10, 22, 35, 62, 90])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = np.array(["a", "a", "x1", "a", "x2", "a"])
    out = compute_metrics(x, y, recall_ks=(1, 2), include=None)
    assert out["mean_average_precision_at_r"] == pytest.approx(13 / 36, abs=1e-12)
    assert out["r_precision"] == pytest.approx(0.5, abs=1e-12)
    assert out["precision_at_1"] == pytest.approx(0.5, abs=1e-12)
    assert out["recall_at_1"] == pytest.approx(0.5, abs=1e-12)
    assert out["recall_at_2"] == pytest.approx(1.0, abs=1e-12)


def test_lone_labels_are_excluded_from_retrieval_metrics():
    rng = np.random.default_rng(3)
    base = np.abs(rng.standard_normal((40, 16)))  # all pairwise similarities > 0
    base[:, 8:] = 0
    y = rng.integers(0, 8, 40)
    lone = np.eye(16)[8:]  # orthogonal to every base row: never a top-k neighbour
    keys = evaluate.RETRIEVAL_KEYS
    lone_y = 100 + np.arange(8)
    with_lone = compute_metrics(np.vstack([base, lone]), np.concatenate([y, lone_y]), include=keys)
    assert with_lone == compute_metrics(base, y, include=keys)
    all_lone = compute_metrics(base[:5], np.arange(5), include=["precision_at_1", "recall_at_1"])
    assert all(math.isnan(v) for v in all_lone.values())


def test_numpy_and_torch_inputs_agree():
    x, y = _data("clustered", 300, 40)
    ref = compute_metrics(x, y, seed=1)
    assert compute_metrics(torch.from_numpy(x).double(), torch.from_numpy(y), seed=1) == ref
    if torch.cuda.is_available():
        got = compute_metrics(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), seed=1)
        assert got == pytest.approx(ref, abs=TOL)


def test_same_seed_same_clustering_metrics():
    x, y = _data("clustered", 400, 60)
    first = compute_metrics(x, y, include=["nmi", "f1"], seed=7)
    assert compute_metrics(x, y, include=["nmi", "f1"], seed=7) == first


def test_include_selects_and_validates(monkeypatch):
    x, y = _data("random", 100, 10)

    def no_kmeans(*args, **kwargs):
        raise AssertionError("k-means ran although neither nmi nor f1 was requested")

    monkeypatch.setattr(evaluate, "kmeans_assign", no_kmeans)
    out = compute_metrics(x, y, include=["recall_at_2", "precision_at_1"])
    assert list(out) == ["precision_at_1", "recall_at_2"]
    with pytest.raises(ValueError, match="valid metrics: .*recall_at_8.*f1"):
        compute_metrics(x, y, include=["recall_at_3"])


def test_knn_excludes_self_even_among_duplicates():
    x = l2_normalize(np.vstack([np.ones((6, 4)), np.eye(4)]))
    nn = knn(x, 3)
    assert nn.shape == (10, 3)
    assert not (nn == np.arange(10)[:, None]).any()
    assert set(nn[:6].ravel()) <= set(range(6))  # a duplicate's neighbours are its duplicates
    # the query absent from its own result: the last column goes instead
    assert drop_self(np.array([[0, 5, 6], [3, 4, 5]])).tolist() == [[5, 6], [3, 4]]
    y = np.array([0] * 6 + [1, 2, 3, 4])
    assert compute_metrics(x, y, include=["precision_at_1"])["precision_at_1"] == 1.0


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="labels"):
        compute_metrics(np.ones((3, 2)), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(np.full((3, 2), np.nan), np.zeros(3))


# --- the blocked torch kNN (dmlbench.bench.knn) ---------------------------------------------

from dmlbench.bench import knn as knn_module  # noqa: E402
from dmlbench.bench import knn_scan  # noqa: E402
from dmlbench.bench.knn import block_bytes_per_row, block_rows, self_knn  # noqa: E402


def _brute_force_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 squared distances and indices of the k nearest rows (self included), ordered
    by distance then index, from the full n x n matrix."""
    x = x.astype(np.float64)
    n = len(x)
    d = np.zeros((n, n))
    for j in range(x.shape[1]):
        d += (x[:, None, j] - x[None, :, j]) ** 2
    order = np.lexsort((np.broadcast_to(np.arange(n), (n, n)), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), order


def _tie_data(kind: str, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal((n, dim)).astype(np.float32)
    if kind == "integer":  # many exactly equal distances, exactly computed in float32
        return rng.integers(-2, 3, (n, dim)).astype(np.float32)
    x = l2_normalize(rng.standard_normal((n, dim)))  # unit rows: inner-product proxy
    x[rng.integers(0, n, max(n // 10, 3))] = x[0]  # a tenth are duplicates of row 0
    x[rng.integers(0, n, 5)] = x[1]
    return x


@pytest.mark.parametrize("path", ["rows", "groups", "scan"])
@pytest.mark.parametrize("kind", ["gaussian", "integer", "duplicates"])
def test_torch_knn_equals_brute_force(kind, path, monkeypatch):
    # the selection forced, so that small data takes every path: whole rows (no groups),
    # group maxima over a (block, n) buffer, and the fused scan of small tiles (several
    # column tiles, a partial last one, several row tiles per block)
    monkeypatch.setattr(knn_module, "GROUPS_PER_PICK", 1 if path != "rows" else 10**9)
    monkeypatch.setattr(knn_scan, "SYM_TILE", 300)  # several blocks, a partial last one
    rng = np.random.default_rng(len(path) * 10 + len(kind))
    cases = [(700, 6, 9, 128), (300, 3, 40, 300), (90, 2, 90, 7), (5, 4, 2, 2)]
    if kind != "integer":  # (integer rows: the group path is taken at n=700 already)
        cases.append((3000, 2, 2, 1024))
    taken, by_columns = [], []
    real_scan, real_cols = knn_scan.scan, knn_scan.scan_cols
    monkeypatch.setattr(knn_scan, "scan", lambda *a: taken.append(a[0].shape) or real_scan(*a))
    monkeypatch.setattr(knn_scan, "scan_cols",
                        lambda *a: by_columns.append(a[0].shape) or real_cols(*a))
    for n, dim, k, rows in cases:
        x = _tie_data(kind, n, dim, rng)
        dist, idx = self_knn(x, k, rows=rows, select="scan" if path == "scan" else "groups")
        expected_dist, expected_idx = _brute_force_knn(x, k)
        assert np.array_equal(idx, expected_idx), (n, k)
        np.testing.assert_allclose(dist, expected_dist, atol=1e-5)
    assert bool(taken) == bool(by_columns) == (path == "scan")  # the path ran
    if taken:  # 300 x 300 tiles scanned by rows and (above the diagonal) by columns
        assert max(max(shape) for shape in taken + by_columns) == 300
        assert any(c % knn_scan.LANES for _, c in taken)  # a tail of fewer than LANES columns
        assert any(c % knn_scan.COL_CHUNK for _, c in by_columns)  # a partial chunk


def test_scan_keeps_the_best_scores_of_every_row():
    # the kernel alone, against a full sort: random tiles merged into best-lists in turn,
    # with ties (values rounded to 1/8) and columns not a multiple of LANES
    rng = np.random.default_rng(3)
    for cols, t in [(4096, 15), (100, 3), (17, 17), (3, 5)]:
        scores = (np.round(rng.standard_normal((11, 3 * cols)) * 8) / 8).astype(np.float32)
        bias = (np.round(rng.standard_normal(3 * cols) * 4) / 8).astype(np.float32)
        for b in (None, bias):  # (rows not of unit norm: a bias per column)
            vals, ids = knn_scan.new_best(11, t)
            maxima = np.empty((11, cols // knn_scan.LANES + 1), dtype=np.float32)
            for a in range(0, 3 * cols, cols):
                knn_scan.scan(np.ascontiguousarray(scores[:, a : a + cols]), a, vals, ids,
                              maxima, 2, None if b is None else b[a : a + cols])
            want = scores if b is None else scores + b
            assert np.array_equal(vals, -np.sort(-want, axis=1)[:, :t])
            assert np.array_equal(np.take_along_axis(want, ids, 1), vals)  # the right columns
            assert all(len(set(row)) == t for row in ids)


def test_column_scan_keeps_the_best_scores_of_every_column():
    # the transposed merge alone, against a full sort of each column, ties included
    rng = np.random.default_rng(4)
    for rows, cols, t in [(500, 2 * knn_scan.COL_CHUNK + 5, 15), (40, 3, 4), (7, 130, 7)]:
        scores = (np.round(rng.standard_normal((3 * rows, cols)) * 8) / 8).astype(np.float32)
        bias = (np.round(rng.standard_normal(3 * rows) * 4) / 8).astype(np.float32)
        for b in (None, bias):  # (rows not of unit norm: a bias per tile row)
            vals, ids = knn_scan.new_best(cols, t)
            for a in range(0, 3 * rows, rows):
                knn_scan.scan_cols(np.ascontiguousarray(scores[a : a + rows]), a, vals, ids, 2,
                                   None if b is None else b[a : a + rows])
            want = scores.T if b is None else (scores + b[:, None]).T
            assert np.array_equal(vals, -np.sort(-want, axis=1)[:, :t])
            assert np.array_equal(np.take_along_axis(want, ids, 1), vals)
            assert all(len(set(row)) == t for row in ids)


def test_torch_knn_default_path_and_knn_wrapper():
    rng = np.random.default_rng(7)
    x = _tie_data("duplicates", 1200, 8, rng)
    assert knn_module._grouped(1200, 6)  # the default path groups (scans) columns
    cpu = torch.device("cpu")
    assert knn_module._scan_module("auto", cpu) is knn_scan  # numba is a dependency
    assert knn_module._scan_module("groups", cpu) is None
    _, expected = _brute_force_knn(x, 6)
    assert np.array_equal(self_knn(x, 6)[1], expected)
    # knn drops the query itself, keeping its duplicates as neighbours
    assert np.array_equal(knn(x, 5, backend="torch"), drop_self(expected))
    assert np.array_equal(knn(torch.from_numpy(x), 5, backend="torch", budget_bytes=1 << 20),
                          drop_self(expected))
    gaussian = _tie_data("gaussian", 500, 8, rng)  # no ties: faiss agrees
    assert np.array_equal(knn(gaussian, 7, backend="torch"), knn(gaussian, 7, backend="faiss"))
    with pytest.raises(ValueError, match="valid: auto, torch, faiss"):
        knn(x, 3, backend="numpy")
    with pytest.raises(ValueError, match="valid: auto, scan, groups"):
        self_knn(x, 3, select="heap")
    with pytest.raises(ValueError, match="NaN or infinite"):
        self_knn(np.array([[0.0, np.inf], [1.0, 2.0]]), 1)


def test_unnormalised_rows_rank_by_distance_not_inner_product():
    # y is nearer to q than z, but <q, z> > <q, y>: ranking must use -2<q, .> + |.|^2
    x = np.array([[1, 0], [1.1, 0.1], [3, 0], [-1, 0]], dtype=np.float32)
    assert self_knn(x, 4)[1][0].tolist() == [0, 1, 2, 3]
    assert not knn_module._Search(torch.from_numpy(x), 2).unit


@pytest.mark.parametrize("kind,n,n_classes", [("random", 600, 80), ("clustered", 1500, 250)])
def test_torch_backend_agrees_with_pml(kind, n, n_classes):
    x, y = _data(kind, n, n_classes, seed=4)
    keys = [*evaluate.RETRIEVAL_KEYS, "nmi"]
    ours = compute_metrics(x, y, seed=3, kmeans_init="random", knn_backend="torch", include=keys)
    theirs = _pml(x, y, seed=3)
    for key in keys:
        assert ours[key] == pytest.approx(theirs[PML_KEYS[key]], abs=TOL), key
    assert ours == compute_metrics(x, y, seed=3, kmeans_init="random", knn_backend="faiss",
                                   include=keys)


def test_block_size_bounds_the_largest_temporary(monkeypatch):
    n, k, d = 60_502, 13, 128
    per_row = block_bytes_per_row(n, k, d)
    assert per_row >= 4 * n  # at least the float32 score row
    for budget in (1 << 20, 256 << 20, 1 << 30):
        rows = block_rows(n, k, d, budget)
        assert rows * per_row <= budget < (rows + 1) * per_row
    assert block_rows(n, k, d, 1) == 1 and block_rows(100, 5, 4, 1 << 30) == 100
    # the score buffer of a search is (block rows, width) with width < n + GROUP
    shapes = []
    real_empty = torch.empty

    def spy(*size, **kw):
        shapes.append(tuple(size[0]) if len(size) == 1 and isinstance(size[0], tuple) else size)
        return real_empty(*size, **kw)

    monkeypatch.setattr(knn_module.torch, "empty", spy)
    x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    budget = 2 << 20
    self_knn(x, 5, budget_bytes=budget, select="groups")  # its (block, n) buffer
    rows = block_rows(3000, 5, 16, budget)
    assert 1 < rows < 3000
    biggest = max(shapes, key=lambda s: s[0] * s[1] if len(s) == 2 else 0)
    assert biggest[0] == rows and 3000 <= biggest[1] < 3000 + knn_module.GROUP
