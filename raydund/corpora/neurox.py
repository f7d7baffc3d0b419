"""NeuroX style token data: ``<name>.txt`` holds one sentence per line, words separated
by spaces; ``<name><labels_suffix>`` (default ``.labels``) holds, line for line, the
labels of those words."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from raydund.corpora.table import sentences_table
from raydund.errors import CorpusError


def read_neurox(path: str | Path, labels_suffix: str = ".labels", label: str = "label") -> pa.Table:
    """Read a sentences file and its parallel labels file.

    Parameters
    ----------
    path : str or Path
        The ``.txt`` file of sentences.
    labels_suffix : str
        The labels file is ``path`` with its last suffix replaced by this one.
    label : str
        Name of the label column.

    Returns
    -------
    pyarrow.Table
        ``sentence_id, words, <label>, lines``.

    Raises
    ------
    CorpusError
        A missing labels file, different line counts, an empty sentence, a line whose
        label count differs from its word count, or an empty file.
    """
    path = Path(path)
    labels_path = path.with_suffix(labels_suffix)
    if not labels_path.is_file():
        raise CorpusError(labels_path, None, f"labels file missing (expected beside {path.name})")
    sentences, tags = _lines(path), _lines(labels_path)
    if not sentences:
        raise CorpusError(path, None, "no sentences (empty file)")
    if len(sentences) != len(tags):
        raise CorpusError(labels_path, min(len(sentences), len(tags)) + 1,
                          f"{len(tags)} label lines for {len(sentences)} sentences in {path.name}")
    words, labels, lines = [], [], []
    for lineno, (sentence, tag_line) in enumerate(zip(sentences, tags), start=1):
        w, t = sentence.split(), tag_line.split()
        if not w:
            raise CorpusError(path, lineno, "empty sentence")
        if len(w) != len(t):
            raise CorpusError(labels_path, lineno,
                              f"{len(t)} labels for {len(w)} tokens (line {lineno} of {path.name})")
        words.append(w)
        labels.append(t)
        lines.append([lineno] * len(w))
    return sentences_table(words, {label: labels}, lines)


def _lines(path: Path) -> list[str]:
    """The file's lines without newlines, trailing blank lines dropped."""
    with open(path, encoding="utf-8") as fh:
        lines = [line.rstrip("\r\n") for line in fh]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines
