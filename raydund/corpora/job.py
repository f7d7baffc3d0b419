"""Ingest: corpus files (catalog entry, local mirror first) -> ``corpus_<name>`` lake table.

All requested splits are read and validated before anything is written, then
written in one commit: a bad file never leaves a half-ingested corpus behind.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pyarrow.compute as pc

from raydund import faults, tracking
from raydund.config import Settings
from raydund.corpora import load_spec, read_corpus
from raydund.errors import UserError
from raydund.lake import Lake, check_name

log = logging.getLogger(__name__)


@dataclasses.dataclass
class IngestResult:
    """What an ingest wrote."""

    corpus: str
    snapshot_id: int
    sentences: dict[str, int]
    tokens: dict[str, int]
    run_id: str


def ingest(corpus: str, settings: Settings, splits: list[str] | None = None) -> IngestResult:
    """Read a catalog corpus (all splits unless given) and replace those splits in the lake.

    Raises
    ------
    UserError
        A corpus name that breaks the name rule (:func:`raydund.lake.check_name`), or a
        split with no sentences; checked before anything is written.
    """
    spec = load_spec(corpus)
    check_name("corpus", spec.name)
    start = time.perf_counter()
    tables = read_corpus(spec, splits, settings)
    for split, table in tables.items():
        if table.num_rows == 0:
            raise UserError(f"corpus {spec.name!r}: split {split!r} has no sentences "
                            f"({spec.splits[split].path}); nothing written")
    params = {"corpus": spec.name, "format": spec.format, "splits": ",".join(tables),
              "labels": ",".join(spec.labels)}
    return _commit(spec.name, tables, params, settings, start)


def ingest_text(path: str, name: str, settings: Settings, split: str = "train", field: str = "text",
                pretokenize: str = "words") -> IngestResult:
    """Ingest a file of unlabelled sentences (text, JSONL, Parquet/Arrow) as corpus ``name``, one split.

    Parameters
    ----------
    path : str
        The file (:func:`raydund.corpora.text.read_text` says which formats).
    name : str
        The corpus name (lake table ``corpus_<name>``).
    split : str
        The split the sentences become.
    field : str
        JSONL field or Parquet/Arrow column of the sentence.
    pretokenize : str
        The pre-tokenizer: ``words`` (default), ``whitespace`` or a regular expression.

    Raises
    ------
    UserError
        A bad name, file, pre-tokenizer, or a file without sentences; nothing written.
    """
    from raydund.corpora.text import read_text

    check_name("corpus", name)
    check_name("split", split)
    start = time.perf_counter()
    table = read_text(path, field, pretokenize).drop_columns(["lines"])
    if table.num_rows == 0:
        raise UserError(f"{path}: no sentences; nothing written")
    params = {"corpus": name, "format": "text", "splits": split, "labels": "", "path": str(path), "field": field,
              "pretokenize": pretokenize}
    return _commit(name, {split: table}, params, settings, start)


def _commit(name: str, tables: dict, params: dict, settings: Settings, start: float) -> IngestResult:
    """Write the splits of corpus ``name`` in one commit, tracked in MLflow."""
    sentences = {split: t.num_rows for split, t in tables.items()}
    tokens = {split: int(pc.sum(pc.list_value_length(t.column("words"))).as_py() or 0) for split, t in tables.items()}
    with tracking.job_run(settings, tracking.experiment_name("corpora", name), f"ingest {name}",
                          params, tags={"raydund.stage": "ingest"}) as run:
        faults.crash_point("ingest.before_commit")
        snapshot = Lake(settings).write_corpus(name, tables, properties={"mlflow.run_id": run.info.run_id})
        faults.crash_point("ingest.after_commit")
        # the lake holds the corpus now: tracking failures from here on are spooled, never raised
        track = tracking.Tracker(settings, run.info.run_id)
        track.metrics({**{f"sentences_{k}": v for k, v in sentences.items()},
                       **{f"tokens_{k}": v for k, v in tokens.items()},
                       "seconds": time.perf_counter() - start})
        track.tags({"iceberg.snapshot_id": str(snapshot)})
    log.info("ingested %s: %s", name, ", ".join(f"{k}={v} sentences" for k, v in sentences.items()))
    return IngestResult(name, snapshot, sentences, tokens, run.info.run_id)
