"""Streaming moments, Pearson r and CKA against independent NumPy references."""

import itertools

import numpy as np
import pytest
from references import ref_cka, ref_debiased

from raydund.general.moments import Moments
from raydund.general.similarity import cka, constant_neurons, debiased_cka, pearson, similarity

WIDTHS = (5, 7, 4)


def data(T=400, seed=0, mean=5.0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((T, 3))
    Z = rng.standard_normal((T, sum(WIDTHS))) + mean * rng.uniform(0.5, 2, sum(WIDTHS))
    Z[:, :3] += 2 * base  # shared structure across layers
    Z[:, 6:9] += 1.5 * base
    return Z


def stream(Z, chunk=57, shift=None):
    m = Moments.empty(WIDTHS, Z[:chunk].mean(0) if shift is None else shift)
    for s in range(0, len(Z), chunk):
        m.update(Z[s : s + chunk])
    return m


def layers(Z):
    off = np.cumsum((0,) + WIDTHS)
    return [Z[:, off[i] : off[i + 1]] for i in range(len(WIDTHS))]


def test_pearson_matches_numpy_corrcoef():
    Z = data()
    R = pearson(stream(Z).covariance())
    np.testing.assert_allclose(R, np.corrcoef(Z.T), atol=1e-9)


def test_cka_biased_and_debiased_match_gram_form_references():
    Z = data()
    m = stream(Z)
    C = m.covariance()
    got, got_d = cka(C, m), debiased_cka(C, m)
    Ls = layers(Z)
    for a, b in itertools.product(range(3), repeat=2):
        assert abs(got[a, b] - ref_cka(Ls[a], Ls[b])) < 1e-9
        assert abs(got_d[a, b] - ref_debiased(Ls[a], Ls[b])) < 1e-9


def test_large_mean_neuron_keeps_its_correlation():
    """A neuron with mean 300 and sd 1: the shift before the product keeps r exact."""
    rng = np.random.default_rng(1)
    T = 150_000
    x = rng.standard_normal(T)
    y = 0.6 * x + 0.8 * rng.standard_normal(T)
    Z = np.column_stack([x + 300, y, rng.standard_normal((T, 14))]).astype(np.float32)
    m = Moments.empty(WIDTHS, Z[:4096].mean(0))
    for s in range(0, T, 4096):
        m.update(Z[s : s + 4096])
    r = pearson(m.covariance())[0, 1]
    ref = np.corrcoef(Z[:, 0].astype(np.float64), Z[:, 1].astype(np.float64))[0, 1]
    assert abs(r - ref) < 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_merging_in_any_order_and_any_shift_gives_the_same_state(seed):
    Z = data(T=300, seed=seed)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, 300), 3, replace=False))
    parts = np.split(Z, cuts)
    full = stream(Z)
    # different shifts per part (Chan merge), merged in a random order
    states = [stream(p, chunk=31, shift=p[:5].mean(0)) for p in parts]
    order = rng.permutation(len(states))
    merged = states[order[0]]
    for i in order[1:]:
        merged = merged.merge(states[i])
    for a, b in ((merged, full),):
        np.testing.assert_allclose(pearson(a.covariance()), pearson(b.covariance()), atol=1e-9)
        np.testing.assert_allclose(debiased_cka(a.covariance(), a), debiased_cka(b.covariance(), b), atol=1e-9)
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-9)
    # same shift: states add, in any order
    shared = [stream(p, chunk=31, shift=full.shift) for p in parts]
    total = shared[3].add(shared[1]).add(shared[0]).add(shared[2])
    np.testing.assert_allclose(total.covariance(), full.covariance(), rtol=1e-10, atol=1e-8)


def test_block_rows_split_across_tasks_add_up():
    Z = data()
    full = stream(Z)
    parts = [Moments.empty(WIDTHS, full.shift) for _ in range(3)]
    for s in range(0, len(Z), 50):
        parts[0].update(Z[s : s + 50], blocks=[0], with_extras=True)
        parts[1].update(Z[s : s + 50], blocks=[1], with_extras=False)
        parts[2].update(Z[s : s + 50], blocks=[2], with_extras=False)
    total = parts[0].add(parts[1]).add(parts[2])
    np.testing.assert_allclose(total.covariance(), full.covariance(), atol=1e-8)
    np.testing.assert_allclose(total.U, full.U, rtol=1e-12)


def test_constant_neuron_is_flagged_and_nan():
    Z = data()
    Z[:, 4] = 3.25
    sim = similarity(stream(Z))
    assert sim.constant.tolist() == [i == 4 for i in range(16)]
    assert np.isnan(sim.r[4]).all() and np.isnan(sim.r[:, 4]).all()
    assert np.isfinite(np.delete(np.delete(sim.r, 4, 0), 4, 1)).all()
    assert constant_neurons(np.diag([1.0, 0.0, 2.0])).tolist() == [False, True, False]


def test_debiased_cka_removes_the_floor_on_unrelated_data():
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((2000, 16))
    sim = similarity(stream(Z, chunk=500))
    assert sim.cka[0, 1] > 0.001            # biased: a floor near width / tokens
    assert abs(sim.cka_debiased[0, 1]) < 0.002
