"""Layer similarity that survives massive activations: outlier report, robust CKA variants, mutual kNN.

Decoder LLMs' residual streams carry a few dimensions whose values on a few tokens
(the first token, delimiters) are hundreds to thousands of times the typical magnitude
("massive activations", Sun et al. 2024, arXiv:2402.17762). Linear CKA is a ratio of
squared Frobenius norms of covariances, so those few dimensions dominate it: adjacent
layers of a real LLM score ~1.000 whatever the rest of the stream computes. The
variants here are computed on a token sample held in memory (``X [tokens x neurons]``
per layer, rows aligned across layers), in Gram form (``tokens x tokens``), which on a
few thousand tokens costs far less than the feature-space products of wide layers:

* :func:`massive_dimensions` names the outlier dimensions of a layer (largest ``|x|``
  at least ``ratio`` times the layer's median ``|x|``) and :func:`massive_tokens` the
  rows they fire on;
* :func:`cka` is linear CKA (Kornblith et al. 2019), biased or debiased (unbiased HSIC,
  Song et al. 2007, centred as in the google-research CKA notebook);
* "CKA without outliers" is :func:`cka` after each layer's own massive dimensions are
  dropped; "CKA without outlier tokens" after the tokens on which any layer has a massive
  activation are dropped (on SmolLM2 these are the first word of each sentence, the
  attention sink, and they dominate every dimension of the late layers, so dropping
  dimensions alone is not enough); "debiased CKA on standardised neurons" is :func:`cka`
  with ``debiased=True`` on z-scored neurons (every neuron weighs the same, whatever its
  scale);
* :func:`mutual_knn` is the mutual nearest-neighbour alignment of Huh et al. 2024
  (arXiv:2405.07987): the share of each token's ``k`` nearest neighbours (cosine) that
  two layers agree on, which no single dimension can dominate once rows are normalised.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: A dimension is massive when its largest |x| is at least this many times the layer's median |x|
#: (Sun et al. 2024 report values ~1,000x the median; 100x leaves room for smaller models).
MASSIVE_RATIO = 100.0


def massive_dimensions(X: np.ndarray, ratio: float = MASSIVE_RATIO) -> np.ndarray:
    """Indices of the columns of ``X`` whose largest ``|x|`` is at least ``ratio`` x the median ``|x|`` of ``X``."""
    A = np.abs(np.asarray(X, dtype=np.float64))
    median = np.median(A)
    if median == 0:
        return np.flatnonzero(A.max(axis=0) > 0) if ratio > 0 else np.arange(A.shape[1])
    return np.flatnonzero(A.max(axis=0) >= ratio * median)


def massive_tokens(X: np.ndarray, dims: np.ndarray, ratio: float = MASSIVE_RATIO) -> np.ndarray:
    """Rows of ``X`` where any of ``dims`` reaches ``ratio`` x the median ``|x|`` of ``X``."""
    if len(dims) == 0:
        return np.zeros(0, dtype=np.int64)
    A = np.abs(np.asarray(X, dtype=np.float64))
    return np.flatnonzero((A[:, dims] >= ratio * np.median(A)).any(axis=1))


def standardize(X: np.ndarray) -> np.ndarray:
    """Z-scored columns (float64, a new array); constant columns become 0."""
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def gram(X: np.ndarray) -> np.ndarray:
    """Linear Gram matrix ``X X^T`` (float64) of the centred rows."""
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0)
    return X @ X.T


def center_gram(K: np.ndarray, unbiased: bool = False) -> np.ndarray:
    """Double-centred Gram (a new array); ``unbiased`` gives the U-statistic form of Song et al. 2007."""
    K = np.array(K, dtype=np.float64)
    n = len(K)
    if unbiased:
        if n < 4:
            raise ValueError("debiased CKA needs at least 4 tokens")
        np.fill_diagonal(K, 0)
        means = K.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
    else:
        means = K.mean(axis=0)
        means -= means.mean() / 2
    K -= means[:, None]
    K -= means[None, :]
    if unbiased:
        np.fill_diagonal(K, 0)
    return K


def cka_from_grams(Kc: np.ndarray, Lc: np.ndarray) -> float:
    """CKA of two already centred Grams (:func:`center_gram`)."""
    hsic = float(np.vdot(Kc, Lc))
    norm = np.sqrt(float(np.vdot(Kc, Kc)) * float(np.vdot(Lc, Lc)))
    return hsic / norm if norm > 0 else float("nan")


def cka(X: np.ndarray, Y: np.ndarray, debiased: bool = False) -> float:
    """Linear CKA between two layers' token matrices (same rows)."""
    return cka_from_grams(center_gram(gram(X), debiased), center_gram(gram(Y), debiased))


def knn(X: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest other rows of each row by cosine similarity (``n x k`` indices)."""
    X = np.asarray(X, dtype=np.float64)
    if not 0 < k < len(X):
        raise ValueError(f"k must be between 1 and {len(X) - 1}, got {k}")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    U = X / np.where(norms > 0, norms, 1.0)
    S = U @ U.T
    np.fill_diagonal(S, -np.inf)
    return np.argpartition(-S, k - 1, axis=1)[:, :k]


def mutual_knn(A: np.ndarray, B: np.ndarray) -> float:
    """Mean share of shared neighbours between two ``n x k`` neighbour lists (:func:`knn`)."""
    k = A.shape[1]
    shared = (A[:, :, None] == B[:, None, :]).any(axis=2).sum(axis=1)
    return float(shared.mean() / k)


@dataclasses.dataclass
class RobustSimilarity:
    """Layer-by-layer similarity of one token sample under each variant (all ``L x L``).

    Attributes
    ----------
    cka, cka_debiased : numpy.ndarray
        Linear CKA as the paper computes it (the variant massive activations dominate).
    cka_no_outliers : numpy.ndarray
        Linear CKA after dropping each layer's massive dimensions.
    cka_no_outlier_tokens : numpy.ndarray
        Linear CKA on the tokens where no layer has a massive activation.
    cka_standardized : numpy.ndarray
        Debiased linear CKA on z-scored neurons.
    mknn : numpy.ndarray
        Mutual k-nearest-neighbour alignment (1 on the diagonal).
    outliers : list of numpy.ndarray
        Each layer's massive dimensions.
    outlier_tokens : list of numpy.ndarray
        The sample rows they fire on, per layer.
    tokens, k, ratio : int, int, float
        Sample size and settings.
    """

    cka: np.ndarray
    cka_debiased: np.ndarray
    cka_no_outliers: np.ndarray
    cka_no_outlier_tokens: np.ndarray
    cka_standardized: np.ndarray
    mknn: np.ndarray
    outliers: list
    outlier_tokens: list
    tokens: int
    k: int
    ratio: float

    VARIANTS = ("cka", "cka_debiased", "cka_no_outliers", "cka_no_outlier_tokens", "cka_standardized", "mknn")

    def adjacent(self, variant: str) -> np.ndarray:
        """Similarity of each layer with the next one (``L - 1`` values)."""
        M = getattr(self, variant)
        return np.array([M[i, i + 1] for i in range(len(M) - 1)])


def robust_similarity(layers: list[np.ndarray], k: int = 10, ratio: float = MASSIVE_RATIO) -> RobustSimilarity:
    """Every variant for every pair of layers of one token sample.

    Parameters
    ----------
    layers : list of numpy.ndarray
        ``X [tokens x neurons]`` per layer, rows aligned across layers.
    k : int
        Neighbours for :func:`mutual_knn`.
    ratio : float
        Massive-dimension threshold (:func:`massive_dimensions`).
    """
    n = len(layers[0])
    if any(len(X) != n for X in layers):
        raise ValueError("every layer needs the same token rows")
    outliers = [massive_dimensions(X, ratio) for X in layers]
    tokens = [massive_tokens(X, d, ratio) for X, d in zip(layers, outliers)]
    L = len(layers)
    keep = np.setdiff1d(np.arange(n), np.concatenate(tokens + [np.zeros(0, np.int64)]))
    if len(keep) < 4:
        raise ValueError("fewer than 4 tokens are free of massive activations: raise the ratio or the sample")
    out = {name: np.eye(L) for name in RobustSimilarity.VARIANTS}
    grams = {}
    for name, prepare, unbiased in (
        ("cka", lambda i: layers[i], False),
        ("cka_debiased", lambda i: layers[i], True),
        ("cka_no_outliers", lambda i: np.delete(layers[i], outliers[i], axis=1), False),
        ("cka_no_outlier_tokens", lambda i: layers[i][keep], False),
        ("cka_standardized", lambda i: standardize(layers[i]), True),
    ):
        grams = [center_gram(gram(prepare(i)), unbiased) for i in range(L)]
        for a in range(L):
            for b in range(a + 1, L):
                out[name][a, b] = out[name][b, a] = cka_from_grams(grams[a], grams[b])
    del grams
    neighbours = [knn(X, k) for X in layers]
    for a in range(L):
        for b in range(a + 1, L):
            out["mknn"][a, b] = out["mknn"][b, a] = mutual_knn(neighbours[a], neighbours[b])
    return RobustSimilarity(**out, outliers=outliers, outlier_tokens=tokens, tokens=n, k=k, ratio=ratio)
