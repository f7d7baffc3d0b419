"""Names: the one rule for corpus, model, split and unit names, and Iceberg table identifiers."""

from __future__ import annotations

import re

from raydund.errors import UserError

NAMESPACE = "raydund"
ACTIVATIONS = f"{NAMESPACE}.activations"
#: The table indexing the tile files of tiled similarity runs: one row per file, its URI in ``path``.
NEURON_CORRELATION_TILES = "neuron_correlation_tiles"
#: The warehouse folder of tile generations, ``<warehouse>/tiles/<model>/<generation>/``.
TILES_FOLDER = "tiles"

#: Names that become partition values or run names (models, splits, units): no path separators, no "..".
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Corpus names become table names (``corpus_<name>``) as they are: one corpus, one table, no two alike.
CORPUS_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: Iceberg table names under the ``raydund`` namespace.
TABLE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,127}$")


def check_name(kind: str, value: str) -> str:
    """The one name rule: refuse a corpus, model, split or unit name that could break a table or a path.

    A corpus name is its table's name (``corpus_<name>``), so it must already be one:
    lowercase letters, digits and ``_``, starting with a letter (at most 64); no two
    corpora can then share a table. Other names (models, splits, units) are partition
    values and may also hold upper case, ``-`` and ``.``.

    Parameters
    ----------
    kind : str
        What the name is: ``"corpus"`` (the strict rule), ``"model"``, ``"split"``, ...
    value : str
        The name.

    Returns
    -------
    str
        ``value`` unchanged.

    Raises
    ------
    UserError
        When the name breaks its rule (the message states the rule).
    """
    if kind == "corpus":
        if not isinstance(value, str) or not CORPUS_PATTERN.match(value):
            raise UserError(f"invalid corpus name {value!r}: use lowercase letters, digits and '_', "
                            "starting with a letter (at most 64 characters)")
        return value
    if not isinstance(value, str) or not NAME_PATTERN.match(value) or ".." in value:
        raise UserError(f"invalid {kind} name {value!r}: use letters, digits, '_', '-' and '.' "
                        "(no path separators, no '..', at most 128 characters)")
    return value


def table_identifier(name: str) -> str:
    """``raydund.<name>`` for a valid table name (a bare name or already namespaced)."""
    namespace, _, table = name.rpartition(".")
    if namespace not in ("", NAMESPACE) or not TABLE_PATTERN.match(table):
        raise UserError(f"invalid table name {name!r}: tables are {NAMESPACE}.<lowercase letters, digits, '_'>")
    return f"{NAMESPACE}.{table}"


def corpus_table_name(corpus: str) -> str:
    """Iceberg identifier of a corpus table: ``raydund.corpus_<name>`` (the name rule makes it one-to-one)."""
    return table_identifier(f"corpus_{check_name('corpus', corpus)}")
