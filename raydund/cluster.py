"""Correlation clustering (the paper's CC, section 5.2): one linkage, many cuts.

Neurons are clustered by average linkage on the distance ``1 - |r|`` (fastcluster,
the same algorithm as scipy's, faster); the tree is built ONCE and cut at every
threshold of the sweep (``fcluster(criterion="distance")``: members of a cluster
have average distance at most ``t``). One representative per cluster survives:
a seeded random member (the paper's choice) or the most central one (highest mean
|r| to its cluster). Constant neurons have no correlation and are left out.
"""

from __future__ import annotations

import dataclasses

import fastcluster
import numpy as np
from scipy.cluster.hierarchy import fcluster
from scipy.spatial.distance import squareform

#: The paper's sweep: 0.0 to 0.9 by 0.1.
DEFAULT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))
REPRESENTATIVES = ("random", "central")
SPANS = ("same layer", "adjacent layers", "within 3 layers", "more than 3 apart")


def condensed_distance(r: np.ndarray) -> np.ndarray:
    """Condensed ``1 - |r|`` (clipped to [0, 1], symmetric, zero diagonal) for linkage."""
    d = 1.0 - np.abs(r)
    d = (d + d.T) / 2
    np.clip(d, 0.0, 1.0, out=d)
    np.fill_diagonal(d, 0.0)
    return squareform(d, checks=False)


def span_class(layers: np.ndarray) -> int:
    """Index into :data:`SPANS` for a cluster whose members sit in ``layers``."""
    span = int(layers.max() - layers.min())
    return 0 if span == 0 else 1 if span == 1 else 2 if span <= 3 else 3


def composition(labels: np.ndarray, layer_of: np.ndarray) -> dict[str, float]:
    """Figure 3: share of multi-neuron clusters by how far apart their members' layers are."""
    counts = np.zeros(len(SPANS))
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if len(members) > 1:
            counts[span_class(layer_of[members])] += 1
    total = counts.sum()
    return {name: (c / total if total else 0.0) for name, c in zip(SPANS, counts)}


def pick_representatives(labels: np.ndarray, how: str, r: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Boolean mask with exactly one True per cluster.

    Parameters
    ----------
    how : {"random", "central"}
        ``random``: a uniformly drawn member (seeded); ``central``: the member with the
        highest mean |r| to the other members (ties: lowest index).
    r : numpy.ndarray
        Correlations among the clustered neurons (needed for ``central``).
    """
    if how not in REPRESENTATIVES:
        raise ValueError(f"unknown representative choice {how!r}; use one of {REPRESENTATIVES}")
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), dtype=bool)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, bounds):
        if how == "random" or len(members) == 1:
            keep[members[rng.integers(len(members))] if how == "random" else members[0]] = True
        else:
            score = np.abs(r[np.ix_(members, members)]).mean(axis=1)
            keep[members[int(np.argmax(score))]] = True
    return keep


@dataclasses.dataclass
class CorrelationClustering:
    """Average-linkage clustering on ``1 - |r|`` cut at a sweep of thresholds (scikit-learn style).

    Parameters
    ----------
    thresholds : sequence of float
        Distance cuts; ``t = 0`` keeps every neuron, larger ``t`` merges more.
    representative : {"random", "central"}
    seed : int
        Seeds the random representative choice.

    Attributes (after :meth:`fit`)
    ----------
    neurons_ : numpy.ndarray
        Indices (into the full neuron axis) of the clustered, non-constant neurons.
    linkage_ : numpy.ndarray
        The scipy-format linkage matrix over ``neurons_``.
    labels_ : numpy.ndarray
        ``[thresholds x len(neurons_)]`` cluster ids (1-based, per threshold).
    keep_ : numpy.ndarray
        ``[thresholds x len(neurons_)]`` representative flags.
    summary_ : list of dict
        Per threshold: clusters, neurons kept, reduction, composition.
    """

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    representative: str = "random"
    seed: int = 0

    def fit(self, r: np.ndarray, layer_of: np.ndarray, constant: np.ndarray | None = None):
        """Cluster the neurons whose correlation matrix is ``r`` (NaN rows = constant)."""
        constant = np.isnan(np.diag(r)) if constant is None else np.asarray(constant, dtype=bool)
        self.neurons_ = np.flatnonzero(~constant)
        sub = r[np.ix_(self.neurons_, self.neurons_)]
        if np.isnan(sub).any():
            raise ValueError("correlations contain NaN outside the constant neurons")
        layers = np.asarray(layer_of)[self.neurons_]
        if len(self.neurons_) < 2:
            raise ValueError("need at least two non-constant neurons to cluster")
        self.linkage_ = fastcluster.linkage(condensed_distance(sub), method="average", preserve_input=False)
        self.labels_ = np.stack([fcluster(self.linkage_, t, criterion="distance") for t in self.thresholds])
        self.keep_ = np.stack([
            pick_representatives(labels, self.representative, sub, seed=self.seed) for labels in self.labels_])
        total = len(r)
        self.summary_ = [
            {
                "threshold": float(t), "clusters": int(labels.max()), "neurons_kept": int(keep.sum()),
                "neurons_total": total, "constant": int(constant.sum()),
                "reduction": 1.0 - keep.sum() / total, **composition(labels, layers),
            }
            for t, labels, keep in zip(self.thresholds, self.labels_, self.keep_)
        ]
        return self

    def kept(self, threshold_index: int) -> np.ndarray:
        """Full-axis indices of the neurons kept at one threshold of the sweep."""
        return self.neurons_[self.keep_[threshold_index]]
