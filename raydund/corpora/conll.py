"""Column formats: one token per line, a blank line after each sentence.

* ``conll2000``: CoNLL-2000 chunking, ``word POS chunk`` separated by single spaces.
* ``pmb``: Parallel Meaning Bank layer CoNLL, 7 tab-separated columns (token, token,
  lemma, semtag, CCG category, WordNet sense, VerbNet roles). Lines starting with ``# ``
  or ``###`` are comments; a bare ``#`` token is not.
* ``ptb_pos``: Penn Treebank ``WORD TAG`` lines (the NLTK WSJ sample's ``.pos.txt``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa

from raydund.corpora.table import line_blocks, sentences_table
from raydund.errors import CorpusError


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one column format is laid out.

    Attributes
    ----------
    sep : str
        Field separator (exactly one character between fields).
    ncols : int
        Number of fields on every token line.
    labels : dict
        Label column name -> 0-based field index. The word is field 0.
    comments : tuple of str
        Prefixes of comment lines.
    """

    sep: str
    ncols: int
    labels: dict[str, int]
    comments: tuple[str, ...] = ()


#: Column formats by name.
LAYOUTS = {
    "conll2000": Layout(" ", 3, {"pos": 1, "chunk": 2}),
    "pmb": Layout("\t", 7, {"semtag": 3, "ccg": 4}, ("# ", "###")),
    "ptb_pos": Layout(" ", 2, {"pos": 1}),
}


def read_conll(path: str | Path, fmt: str) -> pa.Table:
    """Read one of the column formats in :data:`LAYOUTS`.

    Parameters
    ----------
    path : str or Path
        The file.
    fmt : {"conll2000", "pmb", "ptb_pos"}
        Its format.

    Returns
    -------
    pyarrow.Table
        ``sentence_id, words, <label columns>, lines`` (see :mod:`raydund.corpora.table`).

    Raises
    ------
    CorpusError
        A line with the wrong number of columns or an empty token, or no sentences at all.
    """
    layout = LAYOUTS[fmt]
    words, lines = [], []
    labels: dict[str, list] = {name: [] for name in layout.labels}
    for block in line_blocks(path, layout.comments):
        rows = [_fields(path, lineno, line, layout) for lineno, line in block]
        words.append([row[0] for row in rows])
        lines.append([lineno for lineno, _ in block])
        for name, col in layout.labels.items():
            labels[name].append([row[col] for row in rows])
    if not words:
        raise CorpusError(path, None, "no sentences (empty file)")
    return sentences_table(words, labels, lines)


def _fields(path: str | Path, lineno: int, line: str, layout: Layout) -> list[str]:
    """Split one token line, checking its column count and its word."""
    fields = line.split(layout.sep)
    if len(fields) != layout.ncols:
        raise CorpusError(path, lineno, f"expected {layout.ncols} columns separated by {layout.sep!r}, "
                                        f"found {len(fields)}")
    if not fields[0]:
        raise CorpusError(path, lineno, "empty token")
    return fields
