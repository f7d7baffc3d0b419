"""Catalog entries for corpora (``catalog/corpora/<name>.yaml``)."""

from __future__ import annotations

import dataclasses

from raydund.config import load_yaml
from raydund.errors import UserError

FORMATS = ("conll2000", "conllu", "pmb", "ptb_pos", "neurox", "glue")


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """Where one split's file comes from.

    Attributes
    ----------
    path : str
        Path relative to the data mirror (and to the download cache).
    url : str
        Public download URL (``file://`` works too).
    md5 : str
        MD5 of the (decompressed) file.
    gz : bool
        The URL serves a gzip file.
    """

    path: str
    url: str = ""
    md5: str = ""
    gz: bool = False


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """A corpus: format, label kinds, and its splits' sources.

    ``unknown_labels`` says what a dev/test label never seen in train is: ``error``
    (the default: a clear error naming file and line) or ``warn`` (logged and kept;
    for official data that has such labels, e.g. CoNLL-2000's test set).
    """

    name: str
    format: str
    labels: tuple[str, ...]
    splits: dict[str, SplitSource]
    level: str = "token"
    pair: bool = False
    task: str = "classification"
    options: dict = dataclasses.field(default_factory=dict)
    description: str = ""
    unknown_labels: str = "error"

    @classmethod
    def from_dict(cls, entry: dict) -> "CorpusSpec":
        """Build from a parsed YAML entry, with clear errors for missing keys."""
        for key in ("format", "splits"):
            if key not in entry:
                raise UserError(f"corpus entry {entry.get('name')!r} lacks {key!r}")
        if entry["format"] not in FORMATS:
            raise UserError(f"corpus {entry['name']!r}: unknown format {entry['format']!r}; known: {', '.join(FORMATS)}")
        return cls(
            name=entry["name"], format=entry["format"], labels=tuple(entry.get("labels", ())),
            splits={k: SplitSource(**v) for k, v in entry["splits"].items()},
            level=entry.get("level", "token"), pair=bool(entry.get("pair", False)),
            task=entry.get("task", "classification"), options=dict(entry.get("options", {})),
            description=entry.get("description", ""),
            unknown_labels=_policy(entry),
        )


UNKNOWN_LABEL_POLICIES = ("error", "warn")


def _policy(entry: dict) -> str:
    policy = entry.get("unknown_labels", "error")
    if policy not in UNKNOWN_LABEL_POLICIES:
        raise UserError(f"corpus {entry['name']!r}: unknown_labels must be one of {UNKNOWN_LABEL_POLICIES}")
    return policy


def load_spec(name_or_path: str) -> CorpusSpec:
    """A corpus by catalog name (``conll2000``) or YAML path."""
    return CorpusSpec.from_dict(load_yaml("corpora", name_or_path))
