"""Pruning criteria on planted residual streams, against direct NumPy computations."""

import numpy as np
import pytest

from raydund.errors import UserError
from raydund.prune import criteria


def _stream(L=8, tokens=300, d=12, seed=0, identical=()):
    """A random residual stream; blocks in ``identical`` leave it unchanged (H[l+1] = H[l])."""
    rng = np.random.default_rng(seed)
    H = [rng.normal(size=(tokens, d))]
    for l in range(L):
        H.append(H[-1].copy() if l in identical else H[-1] + rng.normal(scale=0.3 + 0.1 * l, size=(tokens, d)))
    return H


def _cos_np(a, b):
    return np.array([x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b)])


def test_block_influence_and_angular_distance_against_numpy():
    H = _stream(identical=(3, 4))
    bi = criteria.block_influence(H)
    ref = [1 - _cos_np(H[l], H[l + 1]).mean() for l in range(8)]
    np.testing.assert_allclose(bi, ref, atol=1e-12)
    assert bi[3] == pytest.approx(0, abs=1e-12) and bi[4] == pytest.approx(0, abs=1e-12)
    assert criteria.shortgpt(H, 2) == [3, 4]
    for n in (1, 2, 3):
        d = criteria.angular_distance(H, n)
        ref = [np.mean(np.arccos(np.clip(_cos_np(H[l], H[l + n]), -1, 1))) / np.pi for l in range(9 - n)]
        np.testing.assert_allclose(d, ref, atol=1e-7)
    assert criteria.angular_distance(H, 2)[3] == pytest.approx(0, abs=1e-6)
    assert criteria.gromov(H, 2) == [3, 4]


def test_gromov_prefers_a_consecutive_run():
    H = _stream(L=10, identical=(1, 6, 7))  # BI picks 1 and 6; a run of 2 exists only at 6-7
    assert criteria.gromov(H, 2) == [6, 7]
    assert criteria.shortgpt(H, 3) == [1, 6, 7]


def _linear_cka(X, Y):
    X, Y = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(X.T @ Y) ** 2 / np.linalg.norm(X.T @ X) / np.linalg.norm(Y.T @ Y)


def _debiased_cka(X, Y):
    """Debiased CKA via the unbiased HSIC estimator on Gram matrices (Song et al. 2007)."""
    def hsic(K, M):
        n = len(K)
        K, M = K.copy(), M.copy()
        np.fill_diagonal(K, 0)
        np.fill_diagonal(M, 0)
        one = np.ones(n)
        return (np.trace(K @ M) + (one @ K @ one) * (one @ M @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ K @ M @ one) / (n * (n - 3))
    X, Y = X - X.mean(0), Y - Y.mean(0)
    K, M = X @ X.T, Y @ Y.T
    return hsic(K, M) / np.sqrt(hsic(K, K) * hsic(M, M))


def test_adjacent_cka_against_numpy():
    H = _stream(L=4, tokens=80, d=6, identical=(2,))
    got = criteria.adjacent_cka(H)
    np.testing.assert_allclose(got, [_linear_cka(H[l], H[l + 1]) for l in range(4)], rtol=1e-9)
    deb = criteria.adjacent_cka(H, debiased=True)
    np.testing.assert_allclose(deb, [_debiased_cka(H[l], H[l + 1]) for l in range(4)], rtol=1e-6)
    assert got[2] == pytest.approx(1) and criteria.by_states("cka", H, [1]) == {1: [2]}
    assert criteria.by_states("cka-debiased", H, [1, 2])[1] == [2]


def test_last_and_bad_n():
    assert criteria.last(30, 4) == [26, 27, 28, 29]
    assert criteria.by_states("last", _stream(L=5), [2]) == {2: [3, 4]}
    with pytest.raises(UserError, match="n must be"):
        criteria.last(4, 4)
    with pytest.raises(UserError, match="unknown criterion"):
        criteria.by_states("nope", _stream(L=3), [1])


def test_greedy_search_finds_planted_optimum():
    cost = {0: 5.0, 1: 1.0, 2: 3.0, 3: 0.5, 4: 9.0}  # additive costs: greedy is optimal
    seen = []

    def score(dropped):
        return 10 + sum(cost[b] for b in dropped)

    def mapper(f, sets):
        seen.append(len(sets))
        return [f(s) for s in sets]

    order, trace = criteria.greedy_search(score, 5, 3, mapper=mapper)
    assert order == [3, 1, 2] and trace == [10.5, 11.5, 14.5]
    assert seen == [5, 4, 3]  # one candidate per remaining block
    order, _ = criteria.greedy_search(score, 5, 3, start=[4])
    assert order == [4, 3, 1]


def test_probe_greedy_drops_blocks_the_readout_ignores():
    rng = np.random.default_rng(1)
    tokens, d, L = 400, 8, 6
    y = rng.integers(0, 3, tokens)
    H = [rng.normal(size=(tokens, d))]
    for l in range(L):
        upd = rng.normal(scale=0.05, size=(tokens, d))
        if l in (1, 4):  # these blocks write the label into dimension 0
            upd[:, 0] += 1.5 * y
        H.append(H[-1] + upd)
    order, acc, within = criteria.probe_greedy(H, y, 4, threshold=0.05)
    assert set(order[:4]) == {0, 2, 3, 5} and within == 4
    assert acc[0] > 0.9
    np.testing.assert_allclose(criteria.skip_block(H, [2, 3]), H[6] - (H[3] - H[2]) - (H[4] - H[3]))


def test_windows_are_the_consecutive_runs_of_smallest_angular_distance():
    H = _stream(L=9, identical=(5, 6))
    d = criteria.angular_distance(H, 2)
    wins = criteria.windows(H, 2, 3)
    assert wins[0] == [5, 6] == criteria.gromov(H, 2)
    assert [w[0] for w in wins] == list(np.argsort(d, kind="stable")[:3])
    assert all(w == list(range(w[0], w[0] + 2)) for w in wins)


def _counted(f):
    calls = []

    def score_many(sets):
        calls.append(list(sets))
        return [f(tuple(s)) for s in sets]

    return score_many, calls


def test_refine_walks_to_a_planted_optimum_one_move_at_a_time():
    target = {10, 11, 12}  # score: distance of the set from the target window

    def f(s):
        return sum(min(abs(b - t) for t in target) for b in s) + 0.001 * sum(s)

    score_many, calls = _counted(f)
    best, seen = criteria.refine(score_many, (6, 7, 8), 20, rounds=20)
    assert best == (10, 11, 12)
    assert seen[best] == pytest.approx(f(best))
    # every round scores all single-block moves of the incumbent at once, never a set twice
    flat = [s for c in calls for s in c]
    assert len(flat) == len(set(flat))
    # a round budget stops the walk early
    best2, _ = criteria.refine(_counted(f)[0], (6, 7, 8), 20, rounds=1)
    assert best2 != best and f(best2) < f((6, 7, 8))


def test_hybrid_picks_by_the_final_score_among_the_search_finalists():
    search = {(1, 2): 5.0, (2, 3): 4.0, (7, 8): 4.5, (0, 9): 9.0}

    def f(s):
        return search.get(s, 6.0 + 0.01 * sum(s))

    score_many, _ = _counted(f)
    final_calls = []

    def score_final(sets):
        final_calls.append(list(sets))
        return [1.0 if s == (7, 8) else 2.0 for s in sets]

    blocks, d = criteria.hybrid(score_many, score_final, [[1, 2], [2, 3], [8, 7], [0, 9], [3, 2]], 10,
                                rounds=2, finalists=3)
    # the search's three best sets go to the final scoring; its best there wins even if not the search's best
    assert sorted(final_calls[0]) == [(1, 2), (2, 3), (7, 8)]
    assert blocks == [7, 8]
    assert d["search"][(2, 3)] == 4.0 and set(d["final"]) == {(1, 2), (2, 3), (7, 8)}
    # the search's best started a refinement (its moves were scored)
    assert (1, 3) in d["search"] and (2, 4) in d["search"]
    with pytest.raises(UserError, match="same number"):
        criteria.hybrid(score_many, score_final, [[1], [1, 2]], 10)
    with pytest.raises(UserError, match="no candidate"):
        criteria.hybrid(score_many, score_final, [], 10)
