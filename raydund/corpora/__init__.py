"""Corpus readers: real formats in, Arrow tables of sentences out.

Every reader returns ``sentence_id, words, <label columns>[, words_b], lines``
(:mod:`raydund.corpora.table`). :func:`read_corpus` reads the splits a catalog entry
names (the local mirror first, see :mod:`raydund.corpora.fetch`) and checks them
together; nothing is written anywhere until every split is known to be good.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from raydund.config import Settings
from raydund.corpora.conll import LAYOUTS, read_conll
from raydund.corpora.fetch import locate
from raydund.corpora.glue import read_glue
from raydund.corpora.neurox import read_neurox
from raydund.corpora.spec import CorpusSpec, SplitSource, load_spec
from raydund.corpora.table import LINES
from raydund.corpora.ud import read_conllu
from raydund.errors import CorpusError, UserError

log = logging.getLogger(__name__)

__all__ = ["CorpusSpec", "SplitSource", "load_spec", "read_corpus", "read_file", "read_split"]


def read_file(fmt: str, path: str | Path, **options) -> pa.Table:
    """Read one file of a given format (``conll2000``, ``conllu``, ``pmb``, ``ptb_pos``, ``neurox``, ``glue``)."""
    if not Path(path).is_file():
        raise CorpusError(path, None, "no such file")
    if fmt in LAYOUTS:
        return read_conll(path, fmt)
    if fmt == "conllu":
        return read_conllu(path)
    if fmt == "neurox":
        return read_neurox(path, **options)
    if fmt == "glue":
        return read_glue(path, **options)
    raise UserError(f"unknown corpus format {fmt!r}")


def _options(spec: CorpusSpec) -> dict:
    if spec.format == "glue":
        return {**spec.options, "task": spec.task}
    if spec.format == "neurox":
        return {**spec.options, "label": spec.labels[0] if spec.labels else "label"}
    return dict(spec.options)


def read_split(spec: CorpusSpec, split: str, settings: Settings) -> pa.Table:
    """Locate and read one split (the table keeps its ``lines`` column)."""
    if split not in spec.splits:
        raise UserError(f"corpus {spec.name!r} has no split {split!r}; splits: {', '.join(spec.splits)}")
    return read_file(spec.format, locate(spec.splits[split], settings), **_options(spec))


def _label_columns(spec: CorpusSpec, table: pa.Table) -> list[str]:
    return [c for c in table.column_names if c not in ("sentence_id", "words", "words_b", LINES)]


def check_labels(spec: CorpusSpec, tables: dict[str, pa.Table], paths: dict[str, Path]) -> None:
    """Every label of a non-train split must occur in train (classification only).

    With the catalog's ``unknown_labels: warn`` the labels are kept and one warning per
    split and label kind gives their count and the first place one occurs.
    """
    if spec.task == "regression" or "train" not in tables:
        return
    train = tables["train"]
    for column in _label_columns(spec, train):
        known = set(_flat(train.column(column)))
        for split, table in tables.items():
            if split == "train":
                continue
            unseen = []
            for value, line in zip(table.column(column).to_pylist(), table.column(LINES).to_pylist()):
                for v, ln in (zip(value, line) if isinstance(value, list) else [(value, line)]):
                    if v not in known:
                        unseen.append((v, ln))
            if not unseen:
                continue
            first = CorpusError(paths[split], unseen[0][1], f"{column} label {unseen[0][0]!r} does not occur in train")
            if spec.unknown_labels == "error":
                raise first
            log.warning("%s (%d such tokens, %d distinct labels in %s; kept: unknown_labels is warn)",
                        first, len(unseen), len({v for v, _ in unseen}), split)


def _flat(column: pa.ChunkedArray) -> list:
    if pa.types.is_list(column.type):
        return column.combine_chunks().flatten().to_pylist()
    return column.to_pylist()


def read_corpus(spec: CorpusSpec, splits: list[str] | None, settings: Settings) -> dict[str, pa.Table]:
    """Read and validate the given splits (default: all); drop the ``lines`` bookkeeping column."""
    splits = list(splits or spec.splits)
    tables, paths = {}, {}
    for split in splits:
        if split not in spec.splits:
            raise UserError(f"corpus {spec.name!r} has no split {split!r}; splits: {', '.join(spec.splits)}")
        paths[split] = locate(spec.splits[split], settings)
        tables[split] = read_file(spec.format, paths[split], **_options(spec))
    if "train" not in tables and "train" in spec.splits and spec.task != "regression":
        tables["train"] = read_split(spec, "train", settings)  # the label set comes from train
        paths["train"] = locate(spec.splits["train"], settings)
        check_labels(spec, tables, paths)
        del tables["train"]
    else:
        check_labels(spec, tables, paths)
    return {split: table.drop_columns([LINES]) for split, table in tables.items()}
