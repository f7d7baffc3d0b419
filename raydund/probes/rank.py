"""Neuron rankings: Linguistic Correlation Analysis (probe weights) and the probeless ranker.

LCA follows NeuroX's ``get_neuron_ordering``: for a growing share ``p`` of each class's
weight mass, take per class the smallest prefix of neurons by descending ``|w|`` that
reaches ``p`` of the mass, union over classes, and append the neurons that are new at
this step. NeuroX leaves the order inside a step to a Python set; here it is by
descending largest ``|w|`` over classes, so the ranking is deterministic and the steps
(``cutoffs``) are the same as NeuroX's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def top_neurons(weights: np.ndarray, share: float) -> np.ndarray:
    """Union over classes of the neurons holding ``share`` of each class's |weight| mass.

    Parameters
    ----------
    weights : numpy.ndarray
        ``[classes x neurons]`` probe weights (signed; absolute values are used).
    """
    return np.flatnonzero(_MassPrefixes(weights).chosen(share))


class _MassPrefixes:
    """Each class's neurons by descending ``|w|`` and their running weight mass, sorted once.

    ``chosen(share)`` marks the neurons in the smallest prefix of each class's order that
    reaches ``share`` of the class's mass (all neurons where none does).
    """

    def __init__(self, weights: np.ndarray):
        W = np.abs(weights)
        order = np.argsort(W, axis=1, kind="stable")[:, ::-1]
        self.cum = np.cumsum(np.take_along_axis(W, order, axis=1), axis=1)  # [classes x neurons]
        self.total = W.sum(axis=1)
        self.position = np.empty_like(order)  # position[c, n]: where neuron n is in class c's order
        np.put_along_axis(self.position, order, np.arange(W.shape[1])[None, :], axis=1)

    def chosen(self, share: float) -> np.ndarray:
        # the first position whose running mass reaches the share: the count of those below it
        count = np.minimum((self.cum < (self.total * share)[:, None]).sum(axis=1) + 1, self.cum.shape[1])
        return (self.position < count[:, None]).any(axis=0)


def lca_ordering(weights: np.ndarray, search_stride: int = 100) -> tuple[np.ndarray, list[int]]:
    """Global neuron ordering from probe weights, and the cutoff after each step.

    Returns
    -------
    ordering : numpy.ndarray
        Every neuron that gets selected, most important first.
    cutoffs : list of int
        ``len(ordering)`` after each of the ``search_stride + 1`` steps.
    """
    strength = np.abs(weights).max(axis=0)
    prefixes = _MassPrefixes(weights)
    seen = np.zeros(weights.shape[1], dtype=bool)
    ordering, cutoffs = [], []
    for step in range(search_stride + 1):
        new = np.flatnonzero(prefixes.chosen(step / search_stride) & ~seen)
        new = new[np.argsort(-strength[new], kind="stable")]
        seen[new] = True
        ordering.extend(new.tolist())
        cutoffs.append(len(ordering))
    return np.asarray(ordering, dtype=np.int64), cutoffs


def probeless_scores(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per neuron, the summed absolute difference of class means over all class pairs (no probe).

    ``sum_{a<b} |mu_a - mu_b|`` per neuron, computed from sorted class means in
    ``O(C log C)`` per neuron instead of ``O(C^2)``. Column by column: a block of
    neurons' scores needs only that block.
    """
    classes = np.unique(y[y >= 0])
    means = np.stack([X[y == c].mean(axis=0) for c in classes])  # [C x N]
    means.sort(axis=0)
    C = len(classes)
    coef = (2 * np.arange(C) - (C - 1))[:, None]  # sum_{a<b}|m_a - m_b| = sum_i (2i - C + 1) m_(i)
    return (coef * means).sum(axis=0)


def probeless_ordering(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Neurons by :func:`probeless_scores`, highest first."""
    return np.argsort(-probeless_scores(X, y), kind="stable")


def percent_grid() -> list[float]:
    """The paper's grid of percentages of all neurons for the minimal-set search."""
    grid = [0.1, 0.2, 0.3, 0.4, 0.5] + list(range(1, 11)) + list(range(15, 55, 5)) + list(range(60, 100, 10))
    return [float(p) for p in grid]


def percent_to_k(n: int, percent: float) -> int:
    """Neurons in ``percent`` % of ``n``: ``round(n * percent / 100)``, at least 1.

    Parameters
    ----------
    n : int
        The neurons the percentage is of (all neurons, or the ones a stage kept).
    percent : float
        A percentage, 0-100.

    Returns
    -------
    int
        ``k``; Python's ``round`` (halves to even), so 0.5% of 100 neurons is 1 and 2.5% is 2.
    """
    return max(1, int(round(n * percent / 100)))


def top_k_grid(n: int, percents: Sequence[float] | None = None, limit: int | None = None) -> list[int]:
    """The distinct ``k`` of a percentage grid over ``n`` neurons, ascending.

    Parameters
    ----------
    n : int
        The neurons the percentages are of.
    percents : sequence of float, optional
        Percentages (default: :func:`percent_grid`).
    limit : int, optional
        Leave out every ``k`` above it (the length of the ordering the top-k are taken from).

    Returns
    -------
    list of int
        Sorted, without duplicates (small percentages of few neurons all round to 1).
    """
    ks = {percent_to_k(n, p) for p in (percents or percent_grid())}
    return sorted(k for k in ks if limit is None or k <= limit)
