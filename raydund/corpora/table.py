"""The one shape every reader returns: an Arrow table of sentences.

Columns: ``sentence_id`` (int64, order in the file), ``words`` (list<string>), one
list<string> column per token label kind (or a scalar ``label`` for sentence-level
tasks, and ``words_b`` for sentence pairs), plus ``lines`` (the 1-based file line of
every token, or of the row) which validation uses for its messages and ingest drops.
"""

from __future__ import annotations

import pyarrow as pa

LINES = "lines"


def sentences_table(words: list[list[str]], labels: dict[str, list], lines: list) -> pa.Table:
    """Assemble the reader output; ``labels`` maps column name -> per-sentence values."""
    columns = {
        "sentence_id": pa.array(range(len(words)), pa.int64()),
        "words": pa.array(words, pa.list_(pa.string())),
    }
    for name, values in labels.items():
        columns[name] = pa.array(values)
    token_level = bool(lines) and isinstance(lines[0], list)
    columns[LINES] = pa.array(lines, pa.list_(pa.int64()) if token_level else pa.int64())
    return pa.table(columns)
