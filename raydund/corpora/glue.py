"""GLUE TSVs: a header row, tab-separated fields, no quoting; single sentences or pairs,
classification labels or an STS-B regression score. MRPC files start with a UTF-8 BOM."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from raydund.corpora.table import sentences_table
from raydund.errors import CorpusError


def read_glue(path: str | Path, text_a: str, label: str, text_b: str | None = None,
              label_set: list | None = None, task: str = "classification") -> pa.Table:
    """Read a GLUE TSV into ``words`` (sentence 1), ``words_b`` (sentence 2) and ``label``.

    Parameters
    ----------
    text_a, text_b, label : str
        Header names of the columns (``text_b`` only for pair tasks).
    label_set : list, optional
        Allowed labels for classification (as strings).
    task : {"classification", "regression"}
        ``regression`` parses the label as a float (STS-B).
    """
    with open(path, encoding="utf-8-sig") as fh:
        rows = [line.rstrip("\r\n") for line in fh]
    if not rows or not rows[0].strip():
        raise CorpusError(path, None, "empty file")
    header = rows[0].split("\t")
    for name in filter(None, (text_a, text_b, label)):
        if name not in header:
            raise CorpusError(path, 1, f"no column {name!r} in header {header}")
    ia, il = header.index(text_a), header.index(label)
    ib = header.index(text_b) if text_b else None
    allowed = {str(x) for x in label_set} if label_set else None
    words, words_b, labels, lines = [], [], [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row.strip():
            continue
        fields = row.split("\t")
        if len(fields) != len(header):
            raise CorpusError(path, lineno, f"expected {len(header)} tab-separated columns, found {len(fields)}")
        a = fields[ia].split()
        if not a:
            raise CorpusError(path, lineno, f"empty sentence in column {text_a!r}")
        if ib is not None:
            b = fields[ib].split()
            if not b:
                raise CorpusError(path, lineno, f"sentence pair with a missing side (column {text_b!r} is empty)")
            words_b.append(b)
        value = fields[il].strip()
        if task == "regression":
            try:
                labels.append(float(value))
            except ValueError:
                raise CorpusError(path, lineno, f"score {value!r} is not a number") from None
        else:
            if allowed is not None and value not in allowed:
                raise CorpusError(path, lineno, f"label {value!r} is not one of {sorted(allowed)}")
            labels.append(value)
        words.append(a)
        lines.append(lineno)
    if not words:
        raise CorpusError(path, None, "no rows after the header")
    columns = {"words_b": words_b} if ib is not None else {}
    columns["label"] = pa.array(labels, pa.float64() if task == "regression" else pa.string())
    table = sentences_table(words, {}, lines)
    for name, values in columns.items():
        table = table.append_column(name, pa.array(values) if not isinstance(values, pa.Array) else values)
    return table.select(["sentence_id", "words", *columns, "lines"])
