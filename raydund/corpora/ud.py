"""CoNLL-U (Universal Dependencies) through the ``conllu`` library: words, UPOS, XPOS.

Multiword-token ranges (``3-4``) and empty nodes (``8.1``) are skipped: the words are
the syntactic words, those with integer ids. Each sentence block is parsed on its own
so that an error can name the line it is on.
"""

from __future__ import annotations

import io
from pathlib import Path

import conllu
import pyarrow as pa

from raydund.corpora.table import line_blocks, sentences_table
from raydund.errors import CorpusError

#: Fields on every CoNLL-U token line: ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC.
NCOLS = 10


def read_conllu(path: str | Path) -> pa.Table:
    """Read a CoNLL-U file.

    Parameters
    ----------
    path : str or Path
        The ``.conllu`` file.

    Returns
    -------
    pyarrow.Table
        ``sentence_id, words, upos, xpos, lines``; an unset tag reads as ``_``.

    Raises
    ------
    CorpusError
        A token line without 10 tab-separated columns, a line ``conllu`` cannot parse,
        or no sentences at all.
    """
    words, upos, xpos, lines = [], [], [], []
    for block in line_blocks(path, ("#",)):
        kept = [(token, lineno) for token, lineno in _parse_block(path, block) if isinstance(token["id"], int)]
        if not kept:
            continue
        words.append([token["form"] for token, _ in kept])
        upos.append([token["upos"] or "_" for token, _ in kept])
        xpos.append([token["xpos"] or "_" for token, _ in kept])
        lines.append([lineno for _, lineno in kept])
    if not words:
        raise CorpusError(path, None, "no sentences (empty file)")
    return sentences_table(words, {"upos": upos, "xpos": xpos}, lines)


def _parse_block(path: str | Path, block: list[tuple[int, str]]) -> list[tuple[dict, int]]:
    """Parse one sentence's token lines; return ``(token, line number)`` pairs."""
    for lineno, line in block:
        found = line.count("\t") + 1
        if found != NCOLS:
            raise CorpusError(path, lineno, f"expected {NCOLS} tab-separated columns, found {found}")
    text = "\n".join(line for _, line in block) + "\n\n"
    try:
        sentence = next(conllu.parse_incr(io.StringIO(text)))
    except conllu.exceptions.ParseException as exc:
        raise CorpusError(path, block[0][0], f"CoNLL-U parse error: {exc}") from None
    return list(zip(sentence, (lineno for lineno, _ in block)))
