"""Out-of-core correlation clustering against exact average linkage (fastcluster on the whole matrix)."""

import fastcluster
import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score

from raydund.general.clustering import CorrelationClustering
from raydund.general.sparse_cluster import (
    DenseSource,
    OutOfCoreClustering,
    cut_merges,
    sparse_average_linkage,
    weighted_average_linkage,
)

THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))


def planted(N=300, T=2000, k=30, common=0.3, seed=0):
    """Neurons driven by one of ``k`` factors with random loadings, plus a weak common factor."""
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((T, k))
    X = F[:, rng.integers(0, k, N)] * rng.uniform(0.2, 1.5, N) + rng.standard_normal((T, N))
    X += common * rng.standard_normal((T, 1))
    X[:, 5] = 1.0  # a constant neuron
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(X.T).astype(np.float32)


def test_weighted_average_linkage_continues_exact_linkage():
    """Starting from the clusters of a cut, linkage with sizes gives the rest of the exact tree."""
    rng = np.random.default_rng(1)
    D = squareform(rng.uniform(0.1, 1, 60 * 59 // 2))
    tree = fastcluster.linkage(squareform(D), method="average")
    start = fcluster(tree, 0.45, criterion="distance") - 1
    K = start.max() + 1
    M = np.eye(K)[start]
    merges = weighted_average_linkage(M.T @ D @ M, np.bincount(start))
    for t in (0.5, 0.6, 0.7, 0.8):
        want = fcluster(tree, t, criterion="distance")
        got = cut_merges(merges, K, t)[start]
        assert adjusted_rand_score(want, got) == 1.0


@pytest.mark.parametrize("seed, per_neuron", [(0, False), (1, False), (0, True), (1, True)])
def test_sparse_average_linkage_is_exact_linkage_on_the_filled_matrix(seed, per_neuron):
    """Pairs below the bound known, the rest filled (one value, or ``(f_i + f_j) / 2`` from each
    neuron's own missing pairs): the cut equals fastcluster's on that matrix.

    Started from single neurons and from the clusters of a lower cut (the continuation).
    """
    from raydund.general.sparse_cluster import missing_fill

    r = planted(N=240, k=12, common=0.4, seed=seed)[6:, 6:].astype(np.float64)
    N = len(r)
    D = 1.0 - np.abs(r)
    bound = 0.8  # pairs with d <= bound known
    i, j = np.nonzero(np.triu(D <= bound, 1))
    missing = (D > bound) & ~np.eye(N, dtype=bool)
    if per_neuron:
        fill = missing_fill(DenseSource(r.astype(np.float32)), i, j, D[i, j], np.ones(N, bool), 1.0 - bound)
        np.testing.assert_allclose(fill, (D * missing).sum(1) / missing.sum(1), rtol=1e-6)  # NumPy's means
        filled = np.where(D <= bound, D, (fill[:, None] + fill[None, :]) / 2)
        assert filled[missing].min() > bound  # no filled pair can merge below the bound
    else:
        fill = float(D[np.triu(missing, 1)].mean())
        filled = np.where(D <= bound, D, fill)
    np.fill_diagonal(filled, 0.0)
    tree = fastcluster.linkage(squareform(filled, checks=False), method="average")
    pairs = (i, j, D[i, j])
    for t in (0.3, 0.5, 0.7, 0.8):
        want = fcluster(tree, t, criterion="distance")
        got = sparse_average_linkage(pairs, np.arange(N), N, np.ones(N, np.int64), fill, t)
        assert adjusted_rand_score(want, got) == 1.0, t
        start = fcluster(tree, t - 0.15, criterion="distance") - 1
        K = start.max() + 1
        got = sparse_average_linkage(pairs, start, K, np.bincount(start), fill, t)[start]
        assert adjusted_rand_score(want, got) == 1.0, t
    assert len(np.unique(got)) < len(np.unique(start)) < N  # the cuts merged something


@pytest.mark.parametrize("max_exact", [1000, 40])
def test_out_of_core_equals_exact_when_components_or_continuations_fit(max_exact):
    r = planted()
    layers = np.arange(len(r)) // 50
    ref = CorrelationClustering(THRESHOLDS).fit(r, layers)
    oc = OutOfCoreClustering(THRESHOLDS, max_exact=max_exact).fit(DenseSource(r), layers)
    np.testing.assert_array_equal(oc.neurons_, ref.neurons_)
    for t, a, b in zip(THRESHOLDS, ref.labels_, oc.labels_):
        assert adjusted_rand_score(a, b) == 1.0, t
        assert a.max() == b.max()
    assert [s["clusters"] for s in oc.summary_] == [s["clusters"] for s in ref.summary_]
    assert all(k.sum() == lab.max() for k, lab in zip(oc.keep_, oc.labels_))  # one representative per cluster


def test_approximation_has_high_ari_on_planted_clusters():
    """Components far above max_exact: the sparse approximation runs, and stays close to exact."""
    r = planted(N=400, common=0.6, seed=2)
    layers = np.arange(len(r)) // 50
    ref = CorrelationClustering(THRESHOLDS).fit(r, layers)
    oc = OutOfCoreClustering(THRESHOLDS, max_exact=4).fit(DenseSource(r), layers)
    assert min(oc.exact_) < 1.0  # the approximation ran
    for t, a, b in zip(THRESHOLDS, ref.labels_, oc.labels_):
        assert adjusted_rand_score(a, b) >= 0.95, t


@pytest.mark.parametrize("graph_bound, tokens, want", [(None, None, 0.05), (None, 100_000, 0.05), (None, 400, 0.1),
                                                       (None, 2_500, 0.08), (0.02, 400, 0.02), (0.3, None, 0.1)])
def test_graph_bound_default_and_noise_floor(graph_bound, tokens, want):
    """By default half the loosest bound (0.05 for cuts up to 0.9), never below the noise of r
    (4 / sqrt(tokens)), never above what the exact paths need (1 - 0.9)."""
    seen = []

    class Spy(DenseSource):
        def edges(self, bound):
            seen.append(bound)
            return super().edges(bound)

    r = planted(N=120, seed=2)
    OutOfCoreClustering(THRESHOLDS, max_exact=1000, graph_bound=graph_bound, tokens=tokens).fit(
        Spy(r), np.zeros(len(r), int))
    assert seen == [pytest.approx(want, abs=2e-6)]
