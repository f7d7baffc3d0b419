"""From subword tokens back to words: spans, aggregation, and windows for long sentences.

Pure functions on lists and arrays; no model, no Ray. The fast tokenizer's
``word_ids()`` (one entry per token: the index of the word it came from, or None
for special tokens) is the only alignment input: words are never re-tokenized
one by one.
"""

from __future__ import annotations

import numpy as np

from raydund.errors import UserError

AGGREGATIONS = ("first", "last", "mean")


def word_token_counts(word_ids: list[int | None], n_words: int) -> np.ndarray:
    """Number of subword tokens of each word (0 for a word the tokenizer dropped)."""
    counts = np.zeros(n_words, dtype=np.int64)
    for w in word_ids:
        if w is not None:
            counts[w] += 1
    return counts


def word_spans(word_ids: list[int | None], n_words: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last token position of every word; -1 for a word with no token.

    Parameters
    ----------
    word_ids : list of int or None
        ``encoding.word_ids()`` of one sequence (special and pad tokens are None).
    n_words : int
        Number of words the sequence was built from.
    """
    first = np.full(n_words, -1, dtype=np.int64)
    last = np.full(n_words, -1, dtype=np.int64)
    for pos, w in enumerate(word_ids):
        if w is None:
            continue
        if first[w] < 0:
            first[w] = pos
        last[w] = pos
    return first, last


def plan_windows(token_counts: np.ndarray, max_tokens: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Split a sentence that is too long into overlapping word windows.

    Windows hold at most ``max_tokens`` subword tokens each and advance by about half
    a window, so every word is seen with context on both sides. Each word is owned by
    the window in which it sits farthest from an edge; its vector is taken from there.

    Parameters
    ----------
    token_counts : numpy.ndarray
        Subword tokens per word.
    max_tokens : int
        Room for word tokens in one model input (max length minus special tokens).

    Returns
    -------
    windows : list of (start, end)
        Word ranges, end exclusive; a single ``(0, n)`` when the sentence fits.
    owner : numpy.ndarray
        For each word, the index of the window its vector comes from.
    """
    n = len(token_counts)
    if int(token_counts.sum()) <= max_tokens:
        return [(0, n)], np.zeros(n, dtype=np.int64)
    if token_counts.max(initial=0) > max_tokens:
        raise UserError(f"a single word has {int(token_counts.max())} subword tokens, "
                        f"more than the model's {max_tokens}")
    cum = np.concatenate([[0], np.cumsum(token_counts)])
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end = int(np.searchsorted(cum, cum[start] + max_tokens, side="right")) - 1
        windows.append((start, end))
        if end >= n:
            break
        # next window starts about half a window later, always moving forward
        nxt = int(np.searchsorted(cum, cum[start] + max_tokens // 2, side="right")) - 1
        start = max(nxt, start + 1)
    owner = np.zeros(n, dtype=np.int64)
    best = np.full(n, -1.0)
    for i, (s, e) in enumerate(windows):
        pos = np.arange(s, e)
        margin = np.minimum(cum[pos] - cum[s], cum[e] - cum[pos + 1])
        better = margin > best[pos]
        owner[pos[better]] = i
        best[pos[better]] = margin[better]
    return windows, owner



def check_aggregation(aggregation: str) -> str:
    """Validate an aggregation name."""
    if aggregation not in AGGREGATIONS:
        raise UserError(f"unknown aggregation {aggregation!r}; use one of {', '.join(AGGREGATIONS)}")
    return aggregation
