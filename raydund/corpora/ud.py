"""CoNLL-U (Universal Dependencies) with the ``conllu`` library: words, UPOS and XPOS.

Multiword-token ranges (``3-4``) and empty nodes (``8.1``) are skipped: the words are
the syntactic words with integer ids.
"""

from __future__ import annotations

from pathlib import Path

import conllu
import pyarrow as pa

from raydund.corpora.table import sentences_table
from raydund.errors import CorpusError


def _blocks(path):
    """(first line number, [(line number, text)]) per sentence block."""
    block = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if line.strip():
                block.append((lineno, line))
            elif block:
                yield block
                block = []
    if block:
        yield block


def read_conllu(path: str | Path) -> pa.Table:
    """Read a CoNLL-U file into a sentences table with ``upos`` and ``xpos`` columns."""
    words, upos, xpos, lines = [], [], [], []
    for block in _blocks(path):
        token_lines = [n for n, text in block if not text.startswith("#")]
        for n, text in block:
            if not text.startswith("#") and len(text.split("\t")) != 10:
                raise CorpusError(path, n, f"expected 10 tab-separated columns, found {len(text.split(chr(9)))}")
        try:
            sentence = conllu.parse("\n".join(text for _, text in block) + "\n\n")[0]
        except conllu.exceptions.ParseException as exc:
            raise CorpusError(path, block[0][0], f"CoNLL-U parse error: {exc}") from None
        w, u, x, ln = [], [], [], []
        for token, n in zip(sentence, token_lines):
            if not isinstance(token["id"], int):
                continue
            w.append(token["form"])
            u.append(token["upos"] or "_")
            x.append(token["xpos"] or "_")
            ln.append(n)
        if w:
            words.append(w), upos.append(u), xpos.append(x), lines.append(ln)
    if not words:
        raise CorpusError(path, None, "no sentences (empty file)")
    return sentences_table(words, {"upos": upos, "xpos": xpos}, lines)
