"""Statistics of neurons over tokens (pure NumPy/polars; no lake, no Ray).

``word_scores`` / ``type_statistics``
    NeuroX's ``get_top_words`` scores: each token's activation is z-scored over the
    split (population std), the score of a word type is the mean ``|z|`` of its tokens
    divided by the largest such mean, and types scoring at most ``min_score`` (NeuroX:
    0.1) are dropped; ``type_statistics`` does every neuron of a layer at once.
``class_mean_differences``
    ``(mean over the tokens of a class - mean over the other tokens) / std``, per neuron.
``heat_levels``
    activations over a sentence as small integers, the neuron browser's heatmap encoding.

Data convention: ``X [tokens x neurons]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp

from raydund.errors import UserError

#: NeuroX's ``MIN_THRESHOLD``: types scoring at most this share of the best are negligible.
MIN_SCORE = 0.1
SORTS = ("score", "high", "low")


def word_scores(frame: pl.DataFrame | pl.LazyFrame, value: str = "act") -> pl.DataFrame:
    """Per word type: ``count``, ``mean`` activation, ``mean_z`` and the NeuroX ``score``.

    ``score`` is the mean ``|z|`` of the type's tokens (z over all tokens, population
    std) divided by the largest mean ``|z|`` of any type, as in NeuroX's ``get_top_words``.
    """
    act = pl.col(value)
    z = (act - act.mean()) / act.std(ddof=0)
    return (frame.lazy().with_columns(z.alias("_z"))
            .group_by("word").agg(pl.len().alias("count"), act.mean().alias("mean"),
                                  pl.col("_z").mean().alias("mean_z"), pl.col("_z").abs().mean().alias("score"))
            .with_columns(pl.col("score") / pl.col("score").max())
            .collect())


def select_top(scores: pl.DataFrame, top_k: int = 10, min_count: int = 1, min_score: float = MIN_SCORE,
               sort: str = "score") -> pl.DataFrame:
    """Keep types with ``count >= min_count`` and ``score > min_score``, best ``top_k`` first (0: all).

    ``sort``: ``score`` (NeuroX), ``high`` (highest mean activation) or ``low`` (lowest).
    """
    if sort not in SORTS:
        raise UserError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    key, descending = {"score": ("score", True), "high": ("mean", True), "low": ("mean", False)}[sort]
    out = (scores.filter((pl.col("count") >= min_count) & (pl.col("score") > min_score))
           .sort([key, "word"], descending=[descending, False], nulls_last=True))
    return out.head(top_k) if top_k > 0 else out


def type_statistics(X: np.ndarray, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`word_scores` for every neuron of ``X [tokens x neurons]`` at once.

    Returns
    -------
    types : numpy.ndarray
        The word types (sorted).
    counts : numpy.ndarray
        Tokens per type.
    means : numpy.ndarray
        ``[types x neurons]`` mean activation.
    scores : numpy.ndarray
        ``[types x neurons]`` NeuroX score (mean ``|z|`` over the type / its maximum over types).
    """
    types, inverse, counts = np.unique(np.asarray(words, dtype=object).astype(str), return_inverse=True,
                                       return_counts=True)
    X = np.asarray(X, dtype=np.float64)
    std = X.std(axis=0)
    z = np.abs((X - X.mean(axis=0)) / np.where(std > 0, std, np.nan))
    onehot = sp.csr_matrix((np.ones(len(inverse)), (inverse, np.arange(len(inverse)))), shape=(len(types), len(X)))
    means = np.asarray(onehot @ X) / counts[:, None]
    mean_abs_z = np.asarray(onehot @ np.nan_to_num(z)) / counts[:, None]
    peak = mean_abs_z.max(axis=0)
    scores = mean_abs_z / np.where(peak > 0, peak, np.nan)
    return types, counts, means, np.nan_to_num(scores)


def top_types(scores: np.ndarray, counts: np.ndarray, top_k: int, min_count: int = 1,
              min_score: float = MIN_SCORE) -> list[np.ndarray]:
    """Per neuron (column of ``scores``), the indices of its best ``top_k`` types (as :func:`select_top`)."""
    eligible = np.where((counts[:, None] >= min_count) & (scores > min_score), scores, -np.inf)
    order = np.argsort(-eligible, axis=0, kind="stable")[:top_k]
    return [order[:, j][np.isfinite(eligible[order[:, j], j])] for j in range(scores.shape[1])]


def class_mean_differences(X: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Per neuron: (mean of the member rows - mean of the others) / std over all rows (0 when constant)."""
    member = np.asarray(member, dtype=bool)
    if member.all() or not member.any():
        raise UserError("a label value must cover some tokens but not all of them")
    std = X.std(axis=0)
    diff = X[member].mean(axis=0) - X[~member].mean(axis=0)
    return np.divide(diff, std, out=np.zeros_like(diff, dtype=np.float64), where=std > 0)


def heat_levels(values: np.ndarray) -> tuple[list[list[int]], list[float]]:
    """``[neurons x words]`` -> ints in -99..99 scaled by each neuron's peak |value|, and the peaks."""
    peak = np.abs(values).max(axis=1)
    q = np.rint(99 * values / np.where(peak > 0, peak, 1.0)[:, None]).astype(int)
    return q.tolist(), [float(f"{p:.4g}") for p in peak]


__all__ = ["MIN_SCORE", "SORTS", "class_mean_differences", "heat_levels", "select_top", "top_types",
           "type_statistics", "word_scores"]
