"""NeuroX style: ``<name>.txt`` (one sentence per line, words separated by spaces) and a
parallel labels file (one line of space-separated labels per sentence)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from raydund.corpora.table import sentences_table
from raydund.errors import CorpusError


def read_neurox(path: str | Path, labels_suffix: str = ".labels", label: str = "label") -> pa.Table:
    """Read ``path`` (.txt) and its labels file (same stem + ``labels_suffix``)."""
    path = Path(path)
    labels_path = path.with_suffix(labels_suffix)
    if not labels_path.is_file():
        raise CorpusError(labels_path, None, f"labels file missing (expected beside {path.name})")
    with open(path, encoding="utf-8") as fh:
        sentences = [line.rstrip("\r\n") for line in fh]
    with open(labels_path, encoding="utf-8") as fh:
        tags = [line.rstrip("\r\n") for line in fh]
    if not any(s.strip() for s in sentences):
        raise CorpusError(path, None, "no sentences (empty file)")
    if len(sentences) != len(tags):
        line = min(len(sentences), len(tags)) + 1
        raise CorpusError(labels_path, line, f"{len(tags)} label lines for {len(sentences)} sentences in {path.name}")
    words, labels, lines = [], [], []
    for lineno, (sentence, tag_line) in enumerate(zip(sentences, tags), start=1):
        w, t = sentence.split(), tag_line.split()
        if not w:
            raise CorpusError(path, lineno, "empty sentence")
        if len(w) != len(t):
            raise CorpusError(labels_path, lineno, f"{len(t)} labels for {len(w)} tokens")
        words.append(w), labels.append(t), lines.append([lineno] * len(w))
    return sentences_table(words, {label: labels}, lines)
