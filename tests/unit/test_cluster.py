"""Correlation clustering: NeuroX-identical clusters, planted groups recovered, composition."""

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from raydund.general.clustering import (
    CorrelationClustering,
    average_linkage,
    composition,
    condensed_distance,
    pick_representatives,
)


def planted(T=3000, seed=0):
    """12 neurons in 3 layers of 4: groups {0,1,5} and {2,6,10} are strongly correlated."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((T, 12))
    a, b = rng.standard_normal(T), rng.standard_normal(T)
    for i in (0, 1, 5):
        Z[:, i] = a + 0.1 * rng.standard_normal(T)
    for i in (2, 6, 10):
        Z[:, i] = -b + 0.1 * rng.standard_normal(T) if i == 6 else b + 0.1 * rng.standard_normal(T)
    return Z, np.repeat([0, 1, 2], 4)


def neurox_clusters(X, t):
    """NeuroX 1.0.9 create_correlation_clusters, written out (np.corrcoef + scipy average)."""
    corr = np.nan_to_num(np.corrcoef(X.T))
    corr = (corr + corr.T) / 2
    np.fill_diagonal(corr, 1)
    dist = 1 - np.abs(corr)
    return fcluster(linkage(squareform(dist, checks=False), "average"), t, criterion="distance")


def same_partition(a, b):
    return len(set(zip(a, b))) == len(set(a)) == len(set(b))


@pytest.mark.parametrize("seed", range(3))
def test_clusters_equal_neurox_at_every_threshold(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((500, 30)) @ rng.standard_normal((30, 30)) * 0.3 + rng.standard_normal((500, 30))
    cc = CorrelationClustering().fit(np.corrcoef(X.T), np.zeros(30, int))
    for t, labels in zip(cc.thresholds, cc.labels_):
        assert same_partition(labels, neurox_clusters(X, t))


def test_planted_groups_are_recovered():
    Z, layer_of = planted()
    cc = CorrelationClustering(thresholds=(0.0, 0.3), representative="central").fit(np.corrcoef(Z.T), layer_of)
    labels = cc.labels_[1]
    groups = {frozenset(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    assert frozenset({0, 1, 5}) in groups and frozenset({2, 6, 10}) in groups
    assert sum(len(g) == 1 for g in groups) == 6
    assert cc.summary_[0]["neurons_kept"] == 12 and cc.summary_[1]["neurons_kept"] == 8
    # group {0,1,5} spans layers 0-1 (adjacent); {2,6,10} spans 0-2 (within 3)
    assert cc.summary_[1]["adjacent layers"] == 0.5 and cc.summary_[1]["within 3 layers"] == 0.5


def test_constant_neurons_are_left_out():
    Z, layer_of = planted()
    Z[:, 3] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(Z.T)
    cc = CorrelationClustering(thresholds=(0.3,)).fit(r, layer_of)
    assert 3 not in cc.neurons_
    assert cc.summary_[0]["constant"] == 1 and 3 not in cc.kept(0)


def test_representatives_one_per_cluster_and_seeded():
    labels = np.array([1, 1, 2, 3, 3, 3, 2])
    a = pick_representatives(labels, "random", seed=7)
    b = pick_representatives(labels, "random", seed=7)
    assert (a == b).all()
    for c in (1, 2, 3):
        assert a[labels == c].sum() == 1
    r = np.eye(7)
    r[3, 4] = r[4, 3] = r[4, 5] = r[5, 4] = 0.9
    assert np.flatnonzero(pick_representatives(labels, "central", r))[2] == 4


def test_composition_spans():
    labels = np.array([1, 1, 2, 2, 3, 3, 4])
    layer_of = np.array([0, 0, 0, 1, 0, 5, 3])
    shares = composition(labels, layer_of)
    assert shares == {"same layer": 1 / 3, "adjacent layers": 1 / 3, "within 3 layers": 0.0,
                      "more than 3 apart": 1 / 3}


def test_average_linkage_works_in_place():
    """The tree of scipy's average linkage, with no second copy of the distances (fastcluster 1.3's
    ``linkage`` copies them under NumPy 2 whatever ``preserve_input`` says: 8.5 GB at 46,080 neurons)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 1500)) + rng.standard_normal((200, 1)) * rng.uniform(0, 2, 1500)
    r = np.corrcoef(X.T)
    ref = linkage(condensed_distance(r), method="average")
    d = condensed_distance(r)  # 9 MB
    tracemalloc.start()
    Z = average_linkage(d)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < d.nbytes / 4
    np.testing.assert_allclose(Z[:, 2], ref[:, 2], rtol=1e-12)
    for t in (0.3, 0.6, 0.9):
        np.testing.assert_array_equal(fcluster(Z, t, criterion="distance"), fcluster(ref, t, criterion="distance"))
    with pytest.raises(ValueError, match="no condensed matrix"):
        average_linkage(np.zeros(4))
