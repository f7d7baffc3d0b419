"""Robust layer similarity: each variant against an independent reference, and planted massive activations."""

import numpy as np
import pytest
from references import ref_cka, ref_debiased, ref_mutual_knn

from raydund.general.robust import (
    cka,
    knn,
    massive_dimensions,
    massive_tokens,
    mutual_knn,
    robust_similarity,
    standardize,
)


def unrelated_layers_with_a_shared_massive_dimension(n=300, d=24, seed=0):
    """Two independent layers whose dimension 5 is huge on the same 4 tokens (an LLM's first/delimiter tokens)."""
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    for Z in (X, Y):
        Z[:4, 5] = 2000.0
    return X, Y


def test_cka_matches_gram_references():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((80, 6)) + 3
    Y = X @ rng.standard_normal((6, 9)) + 0.5 * rng.standard_normal((80, 9))
    assert cka(X, Y) == pytest.approx(ref_cka(X, Y), rel=1e-10)
    assert cka(X, Y, debiased=True) == pytest.approx(ref_debiased(X, Y), rel=1e-10)
    Z = standardize(X)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(0), 1, atol=1e-12)


def test_mutual_knn_matches_a_set_based_reference_and_sees_rotations_as_identical():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 8))
    Y = X + 0.7 * rng.standard_normal((60, 8))
    assert mutual_knn(knn(X, 5), knn(Y, 5)) == pytest.approx(ref_mutual_knn(X, Y, 5), abs=1e-12)
    Q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    assert mutual_knn(knn(X, 5), knn(X @ Q, 5)) == pytest.approx(1.0)  # cosine neighbours survive a rotation
    with pytest.raises(ValueError, match="k must be"):
        knn(X, 60)


def test_a_planted_massive_dimension_is_found_and_the_robust_variants_see_through_it():
    X, Y = unrelated_layers_with_a_shared_massive_dimension()
    assert list(massive_dimensions(X)) == [5]
    assert list(massive_tokens(X, massive_dimensions(X))) == [0, 1, 2, 3]
    result = robust_similarity([X, Y], k=10)
    # the paper's linear CKA calls two unrelated layers near-identical ...
    assert result.cka[0, 1] > 0.95
    # ... every robust variant does not (unrelated: near the ~d/n floor or below)
    assert result.cka_no_outliers[0, 1] < 0.15
    assert result.cka_no_outlier_tokens[0, 1] < 0.15
    assert abs(result.cka_standardized[0, 1]) < 0.1
    assert result.mknn[0, 1] < 0.15
    assert [list(o) for o in result.outliers] == [[5], [5]]
    np.testing.assert_allclose(np.diag(result.cka), 1.0)
    # the matrices agree with computing each variant by hand
    assert result.cka_no_outliers[0, 1] == pytest.approx(ref_cka(np.delete(X, 5, 1), np.delete(Y, 5, 1)))
    assert result.cka_standardized[0, 1] == pytest.approx(ref_debiased(standardize(X), standardize(Y)))
    assert result.cka_no_outlier_tokens[0, 1] == pytest.approx(ref_cka(X[4:], Y[4:]))


def test_tokens_that_dominate_every_dimension_fool_dimension_removal_but_not_token_removal():
    """The late layers of SmolLM2: a few tokens (the attention sink) are huge in MANY dimensions at once."""
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((300, 24)), rng.standard_normal((300, 24))
    sink = 50.0 * rng.standard_normal(24)
    for Z in (X, Y):
        Z[:6] += sink  # the same direction on the same tokens, none of it 100x the median in one dimension
        Z[:6, 0] = 5000.0  # ... and one massive dimension that names them
    result = robust_similarity([X, Y], k=10)
    assert result.cka_no_outliers[0, 1] > 0.8  # dropping dimension 0 leaves the sink tokens in charge
    assert result.cka_no_outlier_tokens[0, 1] < 0.15


def test_related_layers_stay_similar_under_every_variant():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 16))
    Q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    Y = X @ Q + 0.05 * rng.standard_normal((300, 16))
    result = robust_similarity([X, Y], k=10)
    for variant in result.VARIANTS:
        assert result.adjacent(variant)[0] > 0.8, variant


def test_layers_need_the_same_rows():
    with pytest.raises(ValueError, match="same token rows"):
        robust_similarity([np.zeros((10, 3)), np.zeros((9, 3))])
