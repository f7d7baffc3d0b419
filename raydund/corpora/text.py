"""Unlabelled text: a user's own sentences as a corpus without labels.

Three inputs, chosen by the file's suffix:

- plain text (any other suffix): one sentence per line, blank lines skipped;
- JSON Lines (``.jsonl``, ``.ndjson``): one object per line, the sentence in ``field``
  (default ``text``);
- Parquet (``.parquet``) or Arrow IPC (``.arrow``, ``.feather``): the string column ``field``.

Sentences become words through a pre-tokenizer: a regular expression whose matches are the
words (:data:`PRETOKENIZERS` names the usual ones; any other value is taken as a pattern).
The default, ``words``, keeps runs of letters and digits together (with inner ``'``, ``-``,
``.`` or ``,`` between them: ``don't``, ``e-mail``, ``3.14``, ``1,000``) and makes every
other non-space character a word of its own (``(``, ``!``, ``%``); ``whitespace`` splits
on white space only. A decoder reads the sentence back as its words joined by single
spaces (:mod:`raydund.extract.text`), so the pre-tokenizer decides where the spaces are.

The result has ``sentence_id`` and ``words`` and no label column: the general analyses
run on it, probes refuse it (:func:`raydund.probes.data.check_labels`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa

from raydund.corpora.table import sentences_table
from raydund.errors import CorpusError, UserError

#: Named pre-tokenizers (regular expressions whose matches are the words).
PRETOKENIZERS = {
    "words": r"\w+(?:['’\-.,]\w+)*|[^\w\s]",
    "whitespace": r"\S+",
}
DEFAULT_PRETOKENIZER = "words"


def pretokenizer(name_or_pattern: str = DEFAULT_PRETOKENIZER) -> re.Pattern:
    """The compiled pre-tokenizer: a name of :data:`PRETOKENIZERS` or a regular expression.

    Raises
    ------
    UserError
        A pattern that does not compile, or one that matches the empty string.
    """
    pattern = PRETOKENIZERS.get(name_or_pattern, name_or_pattern)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UserError(f"pre-tokenizer {name_or_pattern!r} is not a regular expression: {exc}") from None
    if compiled.fullmatch(""):
        raise UserError(f"pre-tokenizer {name_or_pattern!r} matches the empty string; it must match words")
    return compiled


def split_words(text: str, pattern: re.Pattern) -> list[str]:
    """The words of one sentence: every match of the pre-tokenizer, in order."""
    return pattern.findall(text) if pattern.groups == 0 else [m.group(0) for m in pattern.finditer(text)]


def _sentences(path: Path, field: str) -> list[tuple[int, str]]:
    """(1-based line or row number, sentence) of every non-blank sentence of the file."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".arrow", ".feather"):
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.feather as feather

            table = feather.read_table(path)
        if field not in table.column_names:
            raise CorpusError(path, None, f"no column {field!r}; columns: {', '.join(table.column_names)}")
        if not (pa.types.is_string(table.schema.field(field).type)
                or pa.types.is_large_string(table.schema.field(field).type)):
            raise CorpusError(path, None, f"column {field!r} is {table.schema.field(field).type}, not text")
        return [(i + 1, v) for i, v in enumerate(table.column(field).to_pylist()) if v and v.strip()]
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            if suffix in (".jsonl", ".ndjson"):
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise CorpusError(path, lineno, f"not JSON: {exc}") from None
                if not isinstance(row, dict) or not isinstance(row.get(field), str):
                    raise CorpusError(path, lineno, f"no string field {field!r}")
                line = row[field].strip()
                if not line:
                    continue
            out.append((lineno, line))
    return out


def read_text(path: str | Path, field: str = "text", pretokenize: str = DEFAULT_PRETOKENIZER) -> pa.Table:
    """Read unlabelled sentences (text, JSONL, Parquet or Arrow) into the reader table shape.

    Parameters
    ----------
    path : str or Path
        The file; its suffix selects the format (module docstring).
    field : str
        JSONL field or Parquet/Arrow column holding the sentence.
    pretokenize : str
        A name of :data:`PRETOKENIZERS` or a regular expression whose matches are the words.

    Returns
    -------
    pyarrow.Table
        ``sentence_id, words, lines`` (no labels; ``lines`` is the internal column of
        :mod:`raydund.corpora.table`).

    Raises
    ------
    CorpusError
        A missing or malformed file (named with its line).
    UserError
        A bad pre-tokenizer.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(path, None, "no such file")
    pattern = pretokenizer(pretokenize)
    words, lines = [], []
    for lineno, sentence in _sentences(path, field):
        split = split_words(sentence, pattern)
        if split:  # a line of characters the pattern never matches has no words
            words.append(split)
            lines.append([lineno] * len(split))
    return sentences_table(words, {}, lines)
