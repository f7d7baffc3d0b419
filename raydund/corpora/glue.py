"""GLUE TSV files: a header row, tab-separated fields, no quoting.

Single sentences or sentence pairs; a classification label (a string from the task's
label set) or an STS-B regression score. Column names come from the catalog entry's
``options``, so one reader serves every task. MRPC files start with a UTF-8 BOM, so
files are read as ``utf-8-sig``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from raydund.corpora.table import sentences_table
from raydund.errors import CorpusError


@dataclasses.dataclass(frozen=True)
class _Columns:
    """Indices of the needed columns in the header, and how to read the label."""

    width: int
    a: int
    b: int | None
    label: int
    allowed: frozenset | None
    regression: bool


def read_glue(path: str | Path, text_a: str, label: str, text_b: str | None = None,
              label_set: list | None = None, task: str = "classification") -> pa.Table:
    """Read a GLUE TSV.

    Parameters
    ----------
    path : str or Path
        The ``.tsv`` file.
    text_a, text_b : str
        Header names of sentence 1 and (pair tasks only) sentence 2.
    label : str
        Header name of the label (or score) column.
    label_set : list, optional
        Allowed classification labels, compared as strings.
    task : {"classification", "regression"}
        ``regression`` reads the label as a float (STS-B).

    Returns
    -------
    pyarrow.Table
        ``sentence_id, words[, words_b], label, lines``; words are split on whitespace,
        ``label`` is string (classification) or float64 (regression).

    Raises
    ------
    CorpusError
        An empty file, a header without a named column, a row with the wrong number of
        fields, an empty sentence, a label outside ``label_set``, a non-numeric score.
    """
    rows = _rows(path)
    header = next(rows, None)
    if header is None or not header[1].strip():
        raise CorpusError(path, None, "empty file")
    cols = _columns(path, header[1].split("\t"), text_a, text_b, label, label_set, task)
    words, words_b, labels, lines = [], [], [], []
    for lineno, row in rows:
        fields = _fields(path, lineno, row, cols)
        words.append(_sentence(path, lineno, fields[cols.a], text_a, "empty sentence"))
        if cols.b is not None:
            words_b.append(_sentence(path, lineno, fields[cols.b], text_b, "sentence pair with a missing side"))
        labels.append(_label(path, lineno, fields[cols.label].strip(), cols))
        lines.append(lineno)
    if not words:
        raise CorpusError(path, None, "no rows after the header")
    return _table(words, words_b if cols.b is not None else None, labels, lines, cols.regression)


def _rows(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the header and every non-blank row."""
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if lineno == 1 or line.strip():
                yield lineno, line


def _columns(path, header: list[str], text_a: str, text_b: str | None, label: str,
             label_set: list | None, task: str) -> _Columns:
    """Find the named columns in the header (line 1)."""
    for name in filter(None, (text_a, text_b, label)):
        if name not in header:
            raise CorpusError(path, 1, f"no column {name!r} in header {header}")
    return _Columns(
        width=len(header), a=header.index(text_a), b=header.index(text_b) if text_b else None,
        label=header.index(label), allowed=frozenset(str(x) for x in label_set) if label_set else None,
        regression=task == "regression",
    )


def _fields(path, lineno: int, row: str, cols: _Columns) -> list[str]:
    """Split one row, checking its field count against the header."""
    fields = row.split("\t")
    if len(fields) != cols.width:
        hint = " (a sentence pair with a missing side?)" if cols.b is not None and len(fields) < cols.width else ""
        raise CorpusError(path, lineno, f"expected {cols.width} tab-separated columns (as in the header), "
                                        f"found {len(fields)}{hint}")
    return fields


def _sentence(path, lineno: int, text: str, column: str, problem: str) -> list[str]:
    """The words of one sentence field; an empty one is an error."""
    words = text.split()
    if not words:
        raise CorpusError(path, lineno, f"{problem} (column {column!r} is empty)")
    return words


def _label(path, lineno: int, value: str, cols: _Columns) -> str | float:
    """A classification label from the label set, or a regression score."""
    if cols.regression:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise CorpusError(path, lineno, f"score {value!r} is not a number")
        return score
    if cols.allowed is not None and value not in cols.allowed:
        raise CorpusError(path, lineno, f"label {value!r} is not one of {sorted(cols.allowed)}")
    if not value:
        raise CorpusError(path, lineno, "empty label")
    return value


def _table(words: list, words_b: list | None, labels: list, lines: list, regression: bool) -> pa.Table:
    """``sentence_id, words[, words_b], label, lines``."""
    columns = {} if words_b is None else {"words_b": pa.array(words_b, pa.list_(pa.string()))}
    columns["label"] = pa.array(labels, pa.float64() if regression else pa.string())
    return sentences_table(words, columns, lines)
