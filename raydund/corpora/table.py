"""The one shape every reader returns, and the line scanning the column formats share.

Public readers return an Arrow table of sentences: ``sentence_id`` (int64, 0-based order
in the file), ``words`` (list<string>), one list<string> column per token label kind (or
a scalar ``label`` for sentence-level tasks, and ``words_b`` for sentence pairs).

Internally each table also carries ``lines``: the 1-based file line of every token (or of
the row, for sentence-level files). Validation across splits uses it to name the line of
a bad label; :func:`strip_lines` removes it before a table leaves the package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

#: Name of the internal bookkeeping column (file line of each token or row).
LINES = "lines"


def sentences_table(words: list[list[str]], labels: dict[str, list | pa.Array], lines: list) -> pa.Table:
    """Assemble a reader's table, with its internal ``lines`` column.

    Parameters
    ----------
    words : list of list of str
        The words of each sentence.
    labels : dict
        Column name -> per-sentence values (a list of labels per sentence for token
        labels; one value per sentence, or a ready ``pyarrow.Array``, for sentence labels).
    lines : list
        Per sentence, the list of token line numbers (token level) or one line number.

    Returns
    -------
    pyarrow.Table
        ``sentence_id, words, <labels...>, lines``.
    """
    columns = {
        "sentence_id": pa.array(range(len(words)), pa.int64()),
        "words": pa.array(words, pa.list_(pa.string())),
    }
    for name, values in labels.items():
        columns[name] = values if isinstance(values, pa.Array) else pa.array(values, _label_type(values))
    token_level = bool(lines) and isinstance(lines[0], list)
    columns[LINES] = pa.array(lines, pa.list_(pa.int64()) if token_level else pa.int64())
    return pa.table(columns)


def _label_type(values: list) -> pa.DataType:
    """list<string> for token labels, string for one label per sentence."""
    return pa.list_(pa.string()) if values and isinstance(values[0], list) else pa.string()


def strip_lines(table: pa.Table) -> pa.Table:
    """The public table: drop the internal ``lines`` column if present.

    Parameters
    ----------
    table : pyarrow.Table

    Returns
    -------
    pyarrow.Table
    """
    return table.drop_columns([LINES]) if LINES in table.column_names else table


def line_blocks(path: str | Path, comments: tuple[str, ...] = ()) -> Iterator[list[tuple[int, str]]]:
    """Blocks of non-blank lines separated by blank lines, comments skipped.

    Parameters
    ----------
    path : str or Path
        A UTF-8 text file.
    comments : tuple of str
        Prefixes of comment lines (dropped; they neither open nor close a block).

    Yields
    ------
    list of (int, str)
        ``(1-based line number, line without its newline)`` for each line of one block.
    """
    block: list[tuple[int, str]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                if block:
                    yield block
                block = []
            elif not (comments and line.startswith(comments)):
                block.append((lineno, line))
    if block:
        yield block
