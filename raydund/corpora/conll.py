"""Column formats, one token per line and a blank line after each sentence.

* CoNLL-2000 chunking: ``word POS chunk`` separated by single spaces.
* Parallel Meaning Bank semtag CoNLL: 7 tab-separated columns (token, token, lemma,
  semtag, CCG category, WordNet sense, VerbNet roles); lines starting with ``# `` or
  ``###`` are comments (a bare ``#`` token is not).
* PTB ``WORD TAG`` files (the NLTK WSJ sample's ``.pos.txt``).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from raydund.corpora.table import sentences_table
from raydund.errors import CorpusError

#: format -> (separator, column count, {label name: column}, comment prefixes)
LAYOUTS = {
    "conll2000": (" ", 3, {"pos": 1, "chunk": 2}, ()),
    "pmb": ("\t", 7, {"semtag": 3, "ccg": 4}, ("# ", "###")),
    "ptb_pos": (" ", 2, {"pos": 1}, ()),
}


def read_columns(path: str | Path, sep: str, ncols: int, label_cols: dict[str, int],
                 comments: tuple[str, ...] = ()) -> pa.Table:
    """Read a one-token-per-line file into a sentences table (see :mod:`raydund.corpora.table`)."""
    words, lines = [], []
    labels = {name: [] for name in label_cols}
    cur_words, cur_lines, cur_labels = [], [], {name: [] for name in label_cols}

    def close():
        if cur_words:
            words.append(list(cur_words))
            lines.append(list(cur_lines))
            for name in label_cols:
                labels[name].append(list(cur_labels[name]))
            cur_words.clear(), cur_lines.clear()
            for name in label_cols:
                cur_labels[name].clear()

    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                close()
                continue
            if comments and line.startswith(comments):
                continue
            fields = line.split(sep)
            if len(fields) != ncols:
                raise CorpusError(path, lineno, f"expected {ncols} columns separated by {sep!r}, found {len(fields)}")
            if not fields[0]:
                raise CorpusError(path, lineno, "empty token")
            cur_words.append(fields[0])
            cur_lines.append(lineno)
            for name, col in label_cols.items():
                cur_labels[name].append(fields[col])
    close()
    if not words:
        raise CorpusError(path, None, "no sentences (empty file)")
    return sentences_table(words, labels, lines)


def read_conll(path: str | Path, fmt: str) -> pa.Table:
    """Read one of the column formats in :data:`LAYOUTS`."""
    sep, ncols, label_cols, comments = LAYOUTS[fmt]
    return read_columns(path, sep, ncols, label_cols, comments)
