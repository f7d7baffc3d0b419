"""Catalog entries for corpora (``catalog/corpora/<name>.yaml``) as :class:`CorpusSpec`."""

from __future__ import annotations

import dataclasses

from raydund.config import load_yaml
from raydund.errors import UserError
from raydund.tasks import TASKS

#: Formats :func:`raydund.corpora.read_file` can read.
FORMATS = ("conll2000", "conllu", "pmb", "ptb_pos", "neurox", "glue", "text")
LEVELS = ("token", "sentence")
#: What :func:`raydund.corpora.read_corpus` does with a dev/test label never seen in train.
UNKNOWN_LABEL_POLICIES = ("error", "warn")


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """Where one split's file comes from.

    Attributes
    ----------
    path : str
        Path relative to the data mirror (and to the download cache).
    url : str
        Public download URL (``file://`` works too); empty for mirror-only files.
    md5 : str
        MD5 of the (decompressed) file, as it lies in the mirror.
    gz : bool
        The URL serves a gzip file.
    """

    path: str
    url: str = ""
    md5: str = ""
    gz: bool = False


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """A corpus: its format, label kinds and the sources of its splits.

    Attributes
    ----------
    name : str
        Catalog name (also the lake table suffix).
    format : str
        One of :data:`FORMATS`.
    labels : tuple of str
        Token label kinds (column names), ``("label",)`` for GLUE, none for ``text``
        (unlabelled sentences, :mod:`raydund.corpora.text`).
    level : {"token", "sentence"}
        What the labels attach to.
    pair : bool
        GLUE sentence pairs (a ``words_b`` column).
    task : {"classification", "regression"}
        Regression (STS-B) reads a float label and skips the unknown-label check.
    splits : dict
        Split name -> :class:`SplitSource`.
    options : dict
        Format options (GLUE column names and label set, NeuroX labels suffix).
    description : str
        One line for ``raydund catalog``.
    unknown_labels : {"error", "warn"}
        A dev/test label never seen in train is an error (default), or is kept with a
        warning (official data that has such labels: CoNLL-2000 test, PMB dev/test CCG).
    """

    name: str
    format: str
    labels: tuple[str, ...]
    level: str = "token"
    pair: bool = False
    task: str = "classification"
    splits: dict[str, SplitSource] = dataclasses.field(default_factory=dict)
    options: dict = dataclasses.field(default_factory=dict)
    description: str = ""
    unknown_labels: str = "error"

    @classmethod
    def from_dict(cls, entry: dict) -> CorpusSpec:
        """Build from a parsed YAML entry.

        Parameters
        ----------
        entry : dict
            The YAML mapping (``name`` filled in by :func:`raydund.config.load_yaml`).

        Returns
        -------
        CorpusSpec

        Raises
        ------
        UserError
            A missing key or a value outside its allowed set.
        """
        name = entry.get("name", "?")
        for key in ("format", "labels", "splits"):
            if key == "labels" and entry.get("format") == "text":
                continue  # unlabelled text (raydund.corpora.text)
            if not entry.get(key):
                raise UserError(f"corpus entry {name!r} lacks {key!r}")
        spec = cls(
            name=name, format=entry["format"], labels=tuple(entry.get("labels") or ()),
            level=entry.get("level", "token"), pair=bool(entry.get("pair", False)),
            task=entry.get("task", "classification"),
            splits={split: _split_source(name, split, value) for split, value in entry["splits"].items()},
            options=dict(entry.get("options") or {}), description=entry.get("description", ""),
            unknown_labels=entry.get("unknown_labels", "error"),
        )
        spec.check()
        return spec

    def check(self) -> None:
        """Refuse values outside their allowed sets.

        Raises
        ------
        UserError
        """
        for field, allowed in (("format", FORMATS), ("level", LEVELS), ("task", TASKS),
                               ("unknown_labels", UNKNOWN_LABEL_POLICIES)):
            value = getattr(self, field)
            if value not in allowed:
                raise UserError(f"corpus {self.name!r}: {field} must be one of {', '.join(allowed)}, got {value!r}")


def _split_source(corpus: str, split: str, value) -> SplitSource:
    """One ``splits:`` entry: a mapping with ``path`` and optionally ``url, md5, gz``."""
    if not isinstance(value, dict) or "path" not in value:
        raise UserError(f"corpus {corpus!r}: split {split!r} needs a mapping with a 'path'")
    unknown = set(value) - {f.name for f in dataclasses.fields(SplitSource)}
    if unknown:
        raise UserError(f"corpus {corpus!r}: split {split!r} has unknown keys {sorted(unknown)}")
    return SplitSource(**value)


def load_spec(name_or_path: str) -> CorpusSpec:
    """A corpus by catalog name (``conll2000``) or by the path of a YAML file.

    Parameters
    ----------
    name_or_path : str

    Returns
    -------
    CorpusSpec

    Raises
    ------
    UserError
        An unknown name (the message lists the known ones) or a malformed entry.
    """
    return CorpusSpec.from_dict(load_yaml("corpora", name_or_path))
