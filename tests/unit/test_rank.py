"""Percentages of neurons as k: one rule for the minimal-set search and CCFS's feature selection."""

import pytest

from raydund.probes.rank import percent_grid, percent_to_k, top_k_grid


@pytest.mark.parametrize("n,percent,k", [(100, 0.1, 1), (100, 0.5, 1), (100, 2.5, 2), (100, 3.5, 4), (7, 50, 4),
                                         (768, 10, 77), (9984, 0.1, 10), (3, 1, 1), (0, 10, 1)])
def test_percent_to_k_rounds_halves_to_even_and_keeps_at_least_one(n, percent, k):
    assert percent_to_k(n, percent) == k


@pytest.mark.parametrize("n", [1, 3, 48, 100, 768, 9984])
def test_grid_is_what_both_callers_computed_before(n):
    old = sorted({max(1, int(round(n * p / 100))) for p in percent_grid()})
    assert top_k_grid(n) == old
    limit = max(1, n // 3)
    assert top_k_grid(n, limit=limit) == sorted(
        {max(1, int(round(n * p / 100))) for p in percent_grid() if int(round(n * p / 100)) <= limit})


def test_grid_takes_its_own_percentages_and_a_limit():
    assert top_k_grid(50, [3, 7, 10, 20, 50]) == [2, 4, 5, 10, 25]
    assert top_k_grid(50, (3, 7, 10, 20, 50), limit=5) == [2, 4, 5]
    assert top_k_grid(4, [0.1, 1, 10]) == [1]  # distinct, ascending
