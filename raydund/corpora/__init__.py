"""Corpus readers: real formats in, Arrow tables of sentences out.

Every reader returns ``sentence_id`` (int64), ``words`` (list<string>) and one
list<string> column per token label kind; GLUE tables have ``words_b`` for pairs and a
scalar ``label`` (string, or float64 for STS-B). :func:`read_corpus` reads the splits a
catalog entry names (the local mirror first, see :mod:`raydund.corpora.fetch`) and checks
them together, so nothing downstream sees a split that is not known to be good.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from raydund.config import Settings
from raydund.corpora.conll import read_conll
from raydund.corpora.fetch import locate
from raydund.corpora.glue import read_glue
from raydund.corpora.neurox import read_neurox
from raydund.corpora.spec import FORMATS, CorpusSpec, SplitSource, load_spec
from raydund.corpora.table import LINES, strip_lines
from raydund.corpora.text import read_text
from raydund.corpora.ud import read_conllu
from raydund.errors import CorpusError, UserError

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "CorpusSpec", "SplitSource", "load_spec", "locate", "read_corpus", "read_file", "read_split"]

#: Readers that take format options, by format.
_OPTION_READERS = {"neurox": read_neurox, "glue": read_glue, "text": read_text}


def read_file(fmt: str, path: str | Path, **options) -> pa.Table:
    """Read one file of a given format.

    Parameters
    ----------
    fmt : str
        ``conll2000``, ``conllu``, ``pmb``, ``ptb_pos``, ``neurox``, ``glue`` or ``text``.
    path : str or Path
        The file (for ``neurox`` the ``.txt``; its labels file lies beside it).
    **options
        Format options: ``neurox`` takes ``labels_suffix, label``; ``glue`` takes
        ``text_a, text_b, label, label_set, task``; ``text`` takes ``field, pretokenize``.

    Returns
    -------
    pyarrow.Table
        ``sentence_id, words, <label columns>`` (GLUE: ``words[, words_b], label``).

    Raises
    ------
    CorpusError
        The file is missing or malformed (the message names file and line).
    UserError
        An unknown format or option.
    """
    return strip_lines(_read_with_lines(fmt, path, options))


def _read_with_lines(fmt: str, path: str | Path, options: dict) -> pa.Table:
    """:func:`read_file`, keeping the internal ``lines`` column for validation."""
    if fmt not in FORMATS:
        raise UserError(f"unknown corpus format {fmt!r}; known: {', '.join(FORMATS)}")
    if not Path(path).is_file():
        raise CorpusError(path, None, "no such file")
    if fmt in _OPTION_READERS:
        reader = _OPTION_READERS[fmt]
        _check_options(fmt, reader, options)
        return reader(path, **options)
    if options:
        raise UserError(f"format {fmt!r} takes no options, got {sorted(options)}")
    return read_conllu(path) if fmt == "conllu" else read_conll(path, fmt)


def _check_options(fmt: str, reader, options: dict) -> None:
    """Refuse options the reader does not take (a typo in a catalog entry)."""
    accepted = set(list(inspect.signature(reader).parameters)[1:])
    unknown = set(options) - accepted
    if unknown:
        raise UserError(f"format {fmt!r} does not take options {sorted(unknown)}; it takes {sorted(accepted)}")


def _options(spec: CorpusSpec) -> dict:
    """The reader options a catalog entry implies."""
    if spec.format == "glue":
        return {**spec.options, "task": spec.task}
    if spec.format == "neurox":
        return {"label": spec.labels[0], **spec.options}
    return dict(spec.options)


def _check_split(spec: CorpusSpec, split: str) -> None:
    """Refuse a split the catalog entry does not name."""
    if split not in spec.splits:
        raise UserError(f"corpus {spec.name!r} has no split {split!r}; splits: {', '.join(spec.splits)}")


def read_split(spec: CorpusSpec, split: str, settings: Settings) -> pa.Table:
    """Locate (mirror, cache or download) and read one split.

    Parameters
    ----------
    spec : CorpusSpec
    split : str
        A split the entry names (``train``, ``dev``, ...).
    settings : Settings

    Returns
    -------
    pyarrow.Table
        As :func:`read_file`. Labels are not checked against train; see :func:`read_corpus`.

    Raises
    ------
    UserError
        An unknown split (the message lists the known ones), or a failed download.
    CorpusError
        A malformed file.
    """
    _check_split(spec, split)
    return read_file(spec.format, locate(spec.splits[split], settings), **_options(spec))


def read_corpus(spec: CorpusSpec, splits: list[str] | None, settings: Settings) -> dict[str, pa.Table]:
    """Read the requested splits and check them together.

    Every label of a non-train split must occur in train (classification only; train
    is read for the check even when not requested). With ``unknown_labels: warn`` in
    the catalog entry such labels are kept and logged instead.

    Parameters
    ----------
    spec : CorpusSpec
    splits : list of str or None
        Splits to read; ``None`` means all the entry names.
    settings : Settings

    Returns
    -------
    dict
        Split name -> table (as :func:`read_file`), in the requested order.

    Raises
    ------
    UserError
        An unknown split.
    CorpusError
        A malformed file, or an unknown label (naming the file and line of its first
        occurrence).
    """
    wanted = list(splits or spec.splits)
    for split in wanted:
        _check_split(spec, split)
    needed = list(wanted)
    if spec.task != "regression" and "train" in spec.splits and "train" not in needed:
        needed.append("train")  # the label set comes from train
    paths = {split: locate(spec.splits[split], settings) for split in needed}
    tables = {split: _read_with_lines(spec.format, paths[split], _options(spec)) for split in needed}
    check_labels(spec, tables, paths)
    return {split: strip_lines(tables[split]) for split in wanted}


def check_labels(spec: CorpusSpec, tables: dict[str, pa.Table], paths: dict[str, Path]) -> None:
    """Check that every label of every non-train split occurs in train.

    Parameters
    ----------
    spec : CorpusSpec
        ``task`` (regression: no check) and ``unknown_labels`` (``error`` or ``warn``).
    tables : dict
        Split -> table with its internal ``lines`` column; no ``train``: no check.
    paths : dict
        Split -> the file it was read from (for messages).

    Raises
    ------
    CorpusError
        The first unknown label of a split, with its file and line (policy ``error``).
    """
    if spec.task == "regression" or "train" not in tables:
        return
    for column in _label_columns(tables["train"]):
        known = pc.unique(_flat(tables["train"].column(column)))
        for split, table in tables.items():
            if split != "train":
                _check_column(spec, table, column, known, paths[split], split)


def _label_columns(table: pa.Table) -> list[str]:
    """The label columns of a reader's table."""
    return [c for c in table.column_names if c not in ("sentence_id", "words", "words_b", LINES)]


def _flat(column: pa.ChunkedArray) -> pa.Array:
    """One value per token (list columns flattened) or per row."""
    array = column.combine_chunks()
    return array.flatten() if pa.types.is_list(array.type) else array


def _check_column(spec: CorpusSpec, table: pa.Table, column: str, known: pa.Array, path: Path, split: str) -> None:
    """Raise (or warn) about labels of one column of one split that train lacks."""
    values = _flat(table.column(column))
    unseen = pc.invert(pc.is_in(values, value_set=known))
    count = pc.sum(unseen).as_py() or 0
    if not count:
        return
    first = pc.index(unseen, True).as_py()
    line = _flat(table.column(LINES))[first].as_py()
    error = CorpusError(path, line, f"{column} label {values[first].as_py()!r} does not occur in train")
    if spec.unknown_labels == "error":
        raise error
    distinct = len(pc.unique(values.filter(unseen)))
    log.warning("%s (%d such tokens, %d distinct labels in %s; kept: unknown_labels is warn)",
                error, count, distinct, split)
