"""Which decoder blocks to drop: criteria on the residual stream, and a greedy perplexity search.

Convention: ``H[l]`` (``l = 0..L``) is the residual stream entering block ``l`` for every
calibration token, ``[tokens x hidden]`` (``H[L]``: the last block's output, before the
final norm; see :func:`raydund.prune.evaluate.hidden_states`). Block ``l`` maps ``H[l]``
to ``H[l+1]``. Statistics are float64. Every criterion returns the blocks to drop for a
given ``n``, sorted; the score functions behind them are public for reports and tests.

=================  ==========================================================================
``shortgpt``       Block Influence ``BI_l = 1 - mean_t cos(H[l]_t, H[l+1]_t)`` (Men et al.
                   2024, ShortGPT): drop the ``n`` blocks of lowest BI.
``gromov``         Angular distance ``d(l, n) = mean_t arccos(cos(H[l]_t, H[l+n]_t)) / pi``
                   (Gromov et al. 2024, averaged over tokens rather than the last token
                   only): drop the ``n`` consecutive blocks ``l..l+n-1`` of smallest ``d``.
``cka``            Adjacent-layer linear CKA (Kornblith et al. 2019) between ``H[l]`` and
                   ``H[l+1]``: drop the ``n`` blocks of highest CKA (biased).
``cka-debiased``   The same with debiased CKA (Song et al. 2007 unbiased HSIC).
``last``           Drop the last ``n`` blocks (the baseline).
``probe``          The paper's LayerSelector turned around, see :func:`probe_greedy`.
``sleb``           Greedy removal by calibration perplexity (Song et al. 2024, SLEB), see
                   :func:`greedy_search`: one candidate per Ray task in the study.
``hybrid``         raydund's default, see :func:`hybrid`: every other criterion's set and the
                   best consecutive windows, scored by calibration perplexity, the best one
                   refined by moving single blocks, the finalists re-scored on more text.
=================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from raydund.errors import UserError
from raydund.general.moments import Moments
from raydund.general.similarity import cka, debiased_cka

#: Criteria computed from the hidden states alone (``probe`` also needs word labels).
STATE_CRITERIA = ("shortgpt", "gromov", "cka", "cka-debiased", "last")
ALL_CRITERIA = (*STATE_CRITERIA, "probe", "sleb", "hybrid")


def _cos(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A, B = A.astype(np.float64), B.astype(np.float64)
    num = np.einsum("ij,ij->i", A, B)
    den = np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)
    return np.clip(num / np.where(den > 0, den, 1.0), -1.0, 1.0)


def block_influence(H: list[np.ndarray]) -> np.ndarray:
    """ShortGPT's Block Influence of each block (length ``L``): ``1 - mean_t cos(H[l], H[l+1])``."""
    return np.array([1.0 - _cos(H[l], H[l + 1]).mean() for l in range(len(H) - 1)])


def angular_distance(H: list[np.ndarray], n: int) -> np.ndarray:
    """``d(l, n) = mean_t arccos(cos(H[l]_t, H[l+n]_t)) / pi`` for ``l = 0..L-n`` (Gromov et al. 2024)."""
    L = len(H) - 1
    _check_n(n, L)
    return np.array([np.mean(np.arccos(_cos(H[l], H[l + n]))) / np.pi for l in range(L - n + 1)])


def adjacent_cka(H: list[np.ndarray], debiased: bool = False) -> np.ndarray:
    """Linear CKA (biased or debiased) between ``H[l]`` and ``H[l+1]`` for each block (length ``L``).

    Through :mod:`raydund.general` (the same streamed moments as ``raydund similarity``).
    """
    out = []
    for l in range(len(H) - 1):
        Z = np.hstack([H[l], H[l + 1]]).astype(np.float64)
        d = H[l].shape[1]
        m = Moments.empty((d, H[l + 1].shape[1]), Z[: min(len(Z), 256)].mean(0)).update(Z)
        C = m.covariance()
        out.append((debiased_cka if debiased else cka)(C, m)[0, 1])
    return np.array(out)


def _check_n(n: int, total: int) -> None:
    if not 0 < n < total:
        raise UserError(f"cannot drop {n} of {total} blocks: n must be in 1..{total - 1}")


def lowest(scores: Iterable[float], n: int) -> list[int]:
    """Indices of the ``n`` smallest scores (ties: the lower index), sorted."""
    scores = np.asarray(list(scores), dtype=np.float64)
    _check_n(n, len(scores) + 1)
    return sorted(int(i) for i in np.argsort(scores, kind="stable")[:n])


def shortgpt(H: list[np.ndarray], n: int) -> list[int]:
    """The ``n`` blocks of lowest Block Influence."""
    return lowest(block_influence(H), n)


def gromov(H: list[np.ndarray], n: int) -> list[int]:
    """The ``n`` consecutive blocks starting where the angular distance over ``n`` blocks is smallest."""
    start = int(np.argmin(angular_distance(H, n)))
    return list(range(start, start + n))


def windows(H: list[np.ndarray], n: int, k: int) -> list[list[int]]:
    """The ``k`` windows of ``n`` consecutive blocks of smallest angular distance, best first."""
    d = angular_distance(H, n)
    return [list(range(int(s), int(s) + n)) for s in np.argsort(d, kind="stable")[:k]]


def last(total: int, n: int) -> list[int]:
    """The last ``n`` of ``total`` blocks."""
    _check_n(n, total)
    return list(range(total - n, total))


def by_states(criterion: str, H: list[np.ndarray], ns: Iterable[int]) -> dict[int, list[int]]:
    """Blocks to drop by one of :data:`STATE_CRITERIA`, for each number of blocks in ``ns`` (scores computed once)."""
    ns = list(ns)
    if criterion in ("cka", "cka-debiased"):  # the n blocks whose input and output are most similar
        scores = -adjacent_cka(H, debiased=criterion == "cka-debiased")
        return {n: lowest(scores, n) for n in ns}
    one = {"shortgpt": shortgpt, "gromov": gromov, "last": lambda H, n: last(len(H) - 1, n)}.get(criterion)
    if one is None:
        raise UserError(f"unknown criterion {criterion!r}; known: {', '.join(ALL_CRITERIA)}")
    return {n: one(H, n) for n in ns}


def greedy_search(score: Callable[[tuple[int, ...]], float], total: int, n: int,
                  mapper: Callable = None, start: Iterable[int] = ()) -> tuple[list[int], list[float]]:
    """SLEB-style greedy removal: at each step drop the block whose removal scores lowest.

    Parameters
    ----------
    score : callable
        ``score(dropped_blocks) -> float`` (lower is better: calibration perplexity).
    total, n : int
        Blocks in the model; how many to drop in all (including ``start``).
    mapper : callable, optional
        ``mapper(score, candidates) -> scores``: evaluates the candidates of one step (the
        study passes one Ray task per candidate); default the builtin ``map``.
    start : iterable of int
        Blocks already dropped.

    Returns
    -------
    order : list of int
        Blocks in the order they were dropped (the first ``k`` are the choice for ``k``).
    scores : list of float
        The score after each removal.
    """
    _check_n(n, total)
    mapper = mapper or (lambda f, xs: list(map(f, xs)))
    order = list(start)
    trace: list[float] = []
    while len(order) < n:
        cands = [b for b in range(total) if b not in order]
        sets = [tuple(sorted([*order, b])) for b in cands]
        values = list(mapper(score, sets))
        best = int(np.argmin(values))  # ties: the lowest block
        order.append(cands[best])
        trace.append(float(values[best]))
    return order, trace


def skip_block(H: list[np.ndarray], dropped: Iterable[int], level: int | None = None) -> np.ndarray:
    """First-order estimate of the residual stream at ``level`` (default ``L``) without some blocks.

    ``H[level] - sum_{l in dropped, l < level} (H[l+1] - H[l])``: the blocks' own updates
    are removed; the change they would cause downstream is ignored.
    """
    level = len(H) - 1 if level is None else level
    out = H[level].astype(np.float64).copy()
    for l in dropped:
        if l < level:
            out -= H[l + 1] - H[l]
    return out


def probe_greedy(H: list[np.ndarray], labels: np.ndarray, n: int, threshold: float = 0.01,
                 holdout: float = 0.25, seed: int = 0) -> tuple[list[int], list[float], int]:
    """The paper's LayerSelector turned around: drop blocks a task probe on the last layer does not miss.

    A standardised logistic-regression probe is trained on the full model's last residual
    stream ``H[L]`` (word vectors, ``labels`` per row) and scored on held-out rows. Then,
    greedily, the block whose removal keeps the probe's held-out accuracy highest is dropped,
    the removal estimated by :func:`skip_block` (the block's residual update subtracted from
    ``H[L]``; no model is run). The probe is not retrained: a block whose update the task
    readout does not use can go.

    Returns
    -------
    order : list of int
        Blocks in removal order (the first ``k``: the choice for ``k``).
    accuracy : list of float
        Held-out accuracy after each removal (the full model's is ``accuracy_full``).
    within : int
        How many blocks go before the accuracy falls more than ``threshold`` (relative) below the
        full model's: the answer to "how far can we cut" at this threshold.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    L = len(H) - 1
    _check_n(n, L)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    cut = int(len(labels) * (1 - holdout))
    tr, te = perm[:cut], perm[cut:]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, random_state=seed))
    probe.fit(H[L][tr].astype(np.float64), labels[tr])
    Ht = [h[te] for h in H]
    full = probe.score(Ht[L].astype(np.float64), labels[te])

    def acc(dropped):
        return probe.score(skip_block(Ht, dropped), labels[te])

    order, neg = greedy_search(lambda s: -acc(s), L, n)
    accuracy = [-v for v in neg]
    within = next((k for k, a in enumerate(accuracy) if a < full * (1 - threshold)), len(accuracy))
    return order, accuracy, within


Scores = Callable[[list[tuple[int, ...]]], list[float]]


def refine(score_many: Scores, start: Iterable[int], total: int, rounds: int = 3,
           seen: dict | None = None) -> tuple[tuple[int, ...], dict]:
    """Local search from a block set: swap one dropped block for a kept neighbour of the set while the score falls.

    Each round scores every set made by keeping one dropped block and dropping instead a
    kept block next to the dropped ones (``b - 1`` or ``b + 1`` of some dropped ``b``: a
    window can shift, a gap can close) in ONE call of ``score_many`` (the study: one Ray
    task per set) and takes the best if it beats the incumbent. At most ``rounds`` rounds.

    Returns
    -------
    best : tuple of int
    seen : dict
        Every set scored (including ``seen`` passed in): set -> score.
    """
    seen = {} if seen is None else seen
    best = tuple(sorted(start))
    if best not in seen:
        seen[best] = score_many([best])[0]
    for _ in range(rounds):
        border = {c for b in best for c in (b - 1, b + 1) if 0 <= c < total and c not in best}
        moves = sorted({tuple(sorted((set(best) - {b}) | {c})) for b in best for c in border})
        new = [m for m in moves if m not in seen]
        if new:
            seen.update(zip(new, score_many(new)))
        nxt = min(moves, key=lambda m: (seen[m], m), default=None)
        if nxt is None or seen[nxt] >= seen[best]:
            break
        best = nxt
    return best, seen


def hybrid(score_many: Scores, score_final: Scores, candidates: Iterable[Iterable[int]], total: int,
           rounds: int = 3, finalists: int = 3) -> tuple[list[int], dict]:
    """raydund's default: the best of every criterion's choice, refined, checked on more text.

    1. Every candidate set (the other criteria's choices for this ``n``, SLEB's greedy one
       and the best consecutive windows) is scored by ``score_many`` (calibration
       perplexity on SLEB's sentences).
    2. The best is refined by :func:`refine`.
    3. The ``finalists`` best sets seen are scored by ``score_final`` (perplexity on all
       calibration sentences): a search on a few sentences overfits them (SLEB's
       calibration and held-out perplexities part ways from 6 blocks on, BENCHMARKS.md),
       and the lowest there is the choice.

    Returns
    -------
    blocks : list of int
    details : dict
        ``search``: set -> score of every set scored; ``final``: the finalists' scores.
    """
    cands = sorted({tuple(sorted(c)) for c in candidates})
    if not cands:
        raise UserError("hybrid: no candidate block sets")
    if len({len(c) for c in cands}) != 1:
        raise UserError("hybrid: candidate block sets must all drop the same number of blocks")
    seen = dict(zip(cands, score_many(cands)))
    start = min(cands, key=lambda c: (seen[c], c))
    refine(score_many, start, total, rounds, seen)
    top = sorted(seen, key=lambda c: (seen[c], c))[:finalists]
    final = dict(zip(top, score_final(top)))
    choice = min(top, key=lambda c: (final[c], c))
    return list(choice), {"search": seen, "final": final}
