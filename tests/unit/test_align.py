"""Word alignment and windowing, checked against brute force on hand-made inputs."""

import numpy as np
import pytest

from raydund.errors import UserError
from raydund.extract.align import plan_windows, word_spans, word_token_counts


def test_word_spans_and_counts():
    # [CLS] w0 w0 w1 [SEP] -- w2 dropped by the tokenizer
    word_ids = [None, 0, 0, 1, None]
    first, last = word_spans(word_ids, 3)
    assert first.tolist() == [1, 3, -1]
    assert last.tolist() == [2, 3, -1]
    assert word_token_counts(word_ids, 3).tolist() == [2, 1, 0]


def test_sentence_that_fits_is_one_window():
    windows, owner = plan_windows(np.array([1, 2, 3]), max_tokens=6)
    assert windows == [(0, 3)]
    assert owner.tolist() == [0, 0, 0]


@pytest.mark.parametrize("seed", range(20))
def test_windows_cover_every_word_within_budget(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, size=rng.integers(10, 80))
    max_tokens = int(rng.integers(8, 30))
    windows, owner = plan_windows(counts, max_tokens)
    assert windows[0][0] == 0 and windows[-1][1] == len(counts)
    for (s, e), (s2, _) in zip(windows, windows[1:]):
        assert s2 > s and s2 < e, "windows advance and overlap"
    for s, e in windows:
        assert counts[s:e].sum() <= max_tokens
    for w, i in enumerate(owner):
        s, e = windows[i]
        assert s <= w < e, "a word's vector comes from a window that contains it"
    # the owner window gives the word the largest distance (in tokens) to a window edge
    cum = np.concatenate([[0], np.cumsum(counts)])
    for w, i in enumerate(owner):
        margins = [min(cum[w] - cum[s], cum[e] - cum[w + 1]) for s, e in windows if s <= w < e]
        s, e = windows[i]
        assert min(cum[w] - cum[s], cum[e] - cum[w + 1]) == max(margins)


def test_word_longer_than_model_is_a_clear_error():
    with pytest.raises(UserError, match="subword tokens"):
        plan_windows(np.array([1, 40, 1]), max_tokens=10)
