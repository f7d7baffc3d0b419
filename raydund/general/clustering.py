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

#: The paper's sweep: 0.0 to 0.9 by 0.1.
DEFAULT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))
REPRESENTATIVES = ("random", "central")
SPANS = ("same layer", "adjacent layers", "within 3 layers", "more than 3 apart")


def average_linkage(d: np.ndarray) -> np.ndarray:
    """Average linkage of the condensed distances ``d`` (float64, C-contiguous), overwriting ``d``.

    ``fastcluster.linkage(d, preserve_input=False)`` is meant to work in place, but
    fastcluster 1.3 starts with ``array(X, subok=True)``, which under NumPy 2 copies:
    8.5 GB more at 46,080 neurons (measured: an OOM kill on 24 GB). This calls its
    extension the way ``linkage`` does after that copy; any other input goes through
    ``fastcluster.linkage`` (which may copy).
    """
    wrap = getattr(fastcluster, "linkage_wrap", None)
    if wrap is None or d.ndim != 1 or d.dtype != np.float64 or not d.flags.c_contiguous or not d.flags.writeable:
        return fastcluster.linkage(d, method="average", preserve_input=False)
    n = int(np.ceil(np.sqrt(2 * len(d))))
    if n * (n - 1) // 2 != len(d):
        raise ValueError(f"{len(d)} distances is no condensed matrix")
    Z = np.empty((n - 1, 4))
    if n > 1:
        wrap(n, d, Z, fastcluster.mthidx["average"])
    return Z


def condensed_distance(r: np.ndarray, index: np.ndarray | None = None, block: int = 512) -> np.ndarray:
    """Condensed ``1 - |r|`` (clipped to [0, 1], symmetric, zero diagonal) for linkage.

    Built straight into one float64 vector (``n (n - 1) / 2`` values), ``block`` rows at
    a time: no square copy of ``r``. ``index`` selects the neurons (rows and columns of
    ``r``; default all). ``r`` may be float32 (as stored); every value is taken to float64
    before ``1 - |r|``, and the pair ``(i, j)`` gets ``((1 - |r_ij|) + (1 - |r_ji|)) / 2``,
    what symmetrising the square ``1 - |r|`` gives. Raises ``ValueError`` on NaN.
    """
    n = len(r) if index is None else len(index)
    out = np.empty(n * (n - 1) // 2)
    start = 0
    for a in range(0, n, block):
        b = min(n, a + block)
        if index is None:
            rows, cols = r[a:b], r[:, a:b].T
        else:
            rows, cols = r[np.ix_(index[a:b], index)], r[np.ix_(index, index[a:b])].T
        d = 1.0 - np.abs(np.asarray(rows, dtype=np.float64))
        d += 1.0 - np.abs(np.asarray(cols, dtype=np.float64))
        d /= 2
        if np.isnan(d).any():
            raise ValueError("correlations contain NaN outside the constant neurons")
        np.clip(d, 0.0, 1.0, out=d)
        for i in range(a, b):
            stop = start + n - i - 1
            out[start:stop] = d[i - a, i + 1 :]
            start = stop
    return out


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


def pick_representatives(labels: np.ndarray, how: str, r: np.ndarray | None = None, seed: int = 0,
                         index: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask with exactly one True per cluster.

    Parameters
    ----------
    how : {"random", "central"}
        ``random``: a uniformly drawn member (seeded); ``central``: the member with the
        highest mean |r| to the other members (ties: lowest index).
    r : numpy.ndarray
        Correlations among the clustered neurons (needed for ``central``), or, with
        ``index``, among all neurons (``index[i]`` is the row of ``labels[i]``'s neuron).
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
            rows = members if index is None else index[members]
            score = np.abs(r[np.ix_(rows, rows)].astype(np.float64)).mean(axis=1)
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
        index = None if len(self.neurons_) == len(r) else self.neurons_  # no gather when all are clustered
        layers = np.asarray(layer_of)[self.neurons_]
        if len(self.neurons_) < 2:
            raise ValueError("need at least two non-constant neurons to cluster")
        # the condensed float64 distances are the only big array here; linkage works on them in place
        self.linkage_ = average_linkage(condensed_distance(r, index))
        self.labels_ = np.stack([fcluster(self.linkage_, t, criterion="distance") for t in self.thresholds])
        self.keep_ = np.stack([
            pick_representatives(labels, self.representative, r, seed=self.seed, index=self.neurons_)
            for labels in self.labels_])
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
