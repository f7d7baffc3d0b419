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
    assert got[2] == pytest.approx(1) and criteria.cka_blocks(H, 1) == [2]
    assert criteria.by_states("cka-debiased", H, 1) == [2]


def test_last_and_bad_n():
    assert criteria.last(30, 4) == [26, 27, 28, 29]
    assert criteria.by_states("last", _stream(L=5), 2) == [3, 4]
    with pytest.raises(UserError, match="n must be"):
        criteria.last(4, 4)
    with pytest.raises(UserError, match="unknown criterion"):
        criteria.by_states("nope", _stream(L=3), 1)


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
