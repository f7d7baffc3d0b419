"""The extraction job: corpus table -> Ray Data actor pool -> activation table, one commit.

Driver side only. Sentences are sorted by length (less padding), cut into shards of
about ``shard_words`` words, and handed to a fixed pool of :class:`ExtractActor` s, or,
when no cluster is attached and the pool would have one actor, to one
:class:`ExtractActor` in this process (:func:`~raydund.extract.executors.choose_executor`: same files, same commit).
Workers write Parquet files; the driver registers all of them in one Iceberg commit
that replaces the same (model, corpus, split, unit). A comma list of per-word units
(``word,mlp``) is one job: one forward pass per batch fills every unit, and the one commit
replaces exactly the (model, corpus, split, unit) scopes of the units it recomputed. The job's key (a fingerprint of
the model, the corpus snapshot and the settings) names its staging generations
(``<key>-g<n>``, :mod:`raydund.extract.staging`), so an interrupted job re-run with the
same inputs resumes where it stopped; ``fresh`` starts a new generation and nothing is
ever deleted here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time

import numpy as np
import pyarrow as pa

from raydund import faults, tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.extract.actor import split_uri
from raydund.extract.align import check_aggregation
from raydund.extract.encoder import WORD_UNITS, parse_units
from raydund.extract.executors import EXECUTORS, ensure_ray, run_shards
from raydund.extract.models import resolve_model
from raydund.extract.staging import SEALED, choose_generation, touch
from raydund.lake import STORAGE_DTYPES, Lake, check_name, corpus_table_name

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExtractConfig:
    """What to extract and how.

    Attributes
    ----------
    model : str
        Catalog name (``minilm``), local folder or hub id.
    corpus, split : str
        A corpus already ingested into the lake, and one of its splits.
    unit : str
        word (per-word vectors of the residual stream, for sequence labelling), cls (one
        [CLS] vector per sentence), mlp or attn (per-word MLP inner activations / attention
        outputs of every block; layer ``l`` is block ``l``, 0-based), or a comma list of the
        per-word ones (``word,mlp``): one forward pass fills them all, one commit stores them.
    aggregation : {"last", "first", "mean"}
        Subword -> word (``last`` is the paper's choice).
    dtype : {"float32", "float16", "bfloat16"}
        Storage precision.
    batch_size : int
        Sentences per forward pass.
    shard_words : int
        Words per shard (one actor call, one file per layer).
    pool_size : int
        Actors in the pool (one model copy each).
    num_gpus : float
        GPUs per actor; 0 runs on CPU.
    num_cpus : float
        CPUs Ray reserves per actor.
    threads : int, optional
        Torch threads per actor (default: CPUs of the node / pool size).
    limit : int, optional
        Only the first ``limit`` sentences (by sentence_id).
    max_tokens : int, optional
        Override the model's room for word tokens (forces windowing; for tests).
    fresh : bool
        Ignore shards an earlier run of the same job left finished (recompute all).
    allow_nonfinite : bool
        Store NaN/infinite activations as 0 and count them (metric ``nonfinite_values``)
        instead of refusing the job, naming the first sentence and layer.
    name : str, optional
        The model's lake name (default: from its source, see
        :func:`~raydund.extract.models.resolve_model`).
    executor : {"auto", "local", "ray"}
        Where the shards are encoded: ``ray``, an actor pool of ``pool_size`` actors;
        ``local``, the same actor class called in this process (no Ray start-up, one
        model copy); ``auto`` (default) picks ``local`` when no Ray cluster is attached,
        the pool has one actor and the memory plan says the model and a shard fit, see
        :func:`~raydund.extract.executors.choose_executor`. Both write the same files and the same commit.
    """

    model: str
    corpus: str
    split: str
    unit: str = "word"
    aggregation: str = "last"
    dtype: str = "float32"
    batch_size: int = 32
    shard_words: int = 20_000
    pool_size: int = 1
    num_gpus: float = 0
    num_cpus: float = 1
    threads: int | None = None
    limit: int | None = None
    max_tokens: int | None = None
    fresh: bool = False
    allow_nonfinite: bool = False
    name: str | None = None
    executor: str = "auto"

    def check(self) -> ExtractConfig:
        """Validate choices a user typed."""
        check_name("corpus", self.corpus)
        check_name("split", self.split)
        check_aggregation(self.aggregation)
        self.unit = ",".join(parse_units(self.unit))  # one spelling per list: the job key does not see the order
        if self.dtype not in STORAGE_DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; use one of {', '.join(STORAGE_DTYPES)}")
        for name in ("batch_size", "shard_words", "pool_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1")
        if self.executor not in EXECUTORS:
            raise UserError(f"unknown executor {self.executor!r}; use one of {', '.join(EXECUTORS)}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be at least 1 sentence, got {self.limit}")
        return self

    @property
    def units(self) -> tuple[str, ...]:
        """The units of :attr:`unit`, in lake order (:func:`~raydund.extract.encoder.parse_units`)."""
        return parse_units(self.unit)


@dataclasses.dataclass
class ExtractResult:
    """What a job wrote: counts, timing, the Iceberg snapshot and the MLflow run.

    ``layers`` counts the layer files per word of every unit together (rows = words x layers);
    ``units`` holds, per unit, its ``layers``, ``files`` and ``bytes``.
    """

    snapshot_id: int
    run_id: str
    words: int
    sentences: int
    files: int
    bytes: int
    seconds: float
    layers: int
    units: dict = dataclasses.field(default_factory=dict)

    @property
    def words_per_second(self) -> float:
        return self.words / self.seconds if self.seconds else float("nan")


def make_shards(corpus: pa.Table, shard_words: int, unit: str) -> list[dict]:
    """Sort sentences by length and cut them into shards of about ``shard_words`` words (sentences for ``cls``)."""
    per_word = parse_units(unit)[0] in WORD_UNITS
    words = corpus.column("words").to_pylist()
    ids = corpus.column("sentence_id").to_pylist()
    pairs = corpus.column("words_b").to_pylist() if "words_b" in corpus.column_names else None
    lengths = np.array([len(w) + (len(pairs[i]) if pairs else 0) for i, w in enumerate(words)])
    order = np.argsort(lengths, kind="stable")
    shards, current, budget = [], [], 0
    for i in order:
        current.append(i)
        budget += lengths[i] if per_word else 1
        if budget >= shard_words:
            shards.append(current)
            current, budget = [], 0
    if current:
        shards.append(current)
    out = []
    for n, members in enumerate(shards):
        row = {"shard": n, "sentence_id": [ids[i] for i in members], "words": [words[i] for i in members]}
        if pairs:
            row["words_b"] = [pairs[i] for i in members]
        out.append(row)
    return out


def job_key(cfg: ExtractConfig, model_source: str, corpus_snapshot: int) -> str:
    """Fingerprint of everything that determines the output."""
    fields = dataclasses.asdict(cfg)
    for name in ("pool_size", "num_gpus", "num_cpus", "threads", "shard_words", "fresh", "executor"):
        fields.pop(name)  # how the work is spread does not change the result
    fields.update(model_source=model_source, corpus_snapshot=corpus_snapshot)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def check_model(spec) -> None:
    """Fail before any compute when a hub model cannot be found (its config is fetched, not its weights)."""
    if os.path.isdir(spec.source):
        return
    from transformers import AutoConfig

    kwargs = {"revision": spec.revision} if spec.revision else {}
    try:
        AutoConfig.from_pretrained(spec.source, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {spec.source!r}: {str(exc).splitlines()[0]}") from None


def run_extraction(cfg: ExtractConfig, settings: Settings, progress: bool = True) -> ExtractResult:
    """Extract activations of one (model, corpus, split) into the lake, tracked in MLflow.

    Everything a user can get wrong (names, an unknown model or corpus, an MLflow server
    that does not answer) is checked before Ray starts. Shards lost to a dead actor are
    retried (Ray Data restarts the actor; the driver re-runs what is still missing), and a
    shard rewritten by a retry overwrites its own files, so the single commit holds
    exactly one row per (sentence, word, layer).
    """
    cfg.check()
    tracking.check_reachable(settings)
    lake = Lake(settings)
    corpus = lake.read_corpus(cfg.corpus, cfg.split)
    corpus_snapshot = lake.table(corpus_table_name(cfg.corpus)).current_snapshot().snapshot_id
    if cfg.limit:
        corpus = corpus.slice(0, cfg.limit)
    if cfg.units[0] in WORD_UNITS and "words_b" in corpus.column_names:
        raise UserError(f"corpus {cfg.corpus!r} holds sentence pairs: extract it with --unit cls")
    spec = resolve_model(cfg.model, settings, lake_name=cfg.name)
    check_name("model", spec.name)
    check_model(spec)
    key = job_key(cfg, f"{spec.source}@{spec.revision}", corpus_snapshot)
    table = lake.activations()
    shards = make_shards(corpus, cfg.shard_words, cfg.unit)
    files_uri, done = choose_generation(f"{table.location()}/data/staging", key, shards, cfg.fresh)
    fs, root = split_uri(files_uri)
    pending = [s for s in shards if s["shard"] not in done]
    if done:
        log.info("resuming job %s: %d of %d shards already written", key, len(done), len(shards))

    params = {
        "model": spec.name, "model_source": spec.source, "revision": spec.revision, "corpus": cfg.corpus,
        "split": cfg.split, "unit": cfg.unit, "aggregation": cfg.aggregation, "dtype": cfg.dtype,
        "batch_size": cfg.batch_size, "pool_size": cfg.pool_size, "num_gpus": cfg.num_gpus,
        "limit": cfg.limit, "corpus_snapshot_id": corpus_snapshot, "job_key": key,
        "allow_nonfinite": cfg.allow_nonfinite,
    }
    experiment = tracking.experiment_name(spec.name, cfg.corpus)
    start = time.perf_counter()
    with tracking.job_run_beside(settings, experiment, f"extract {cfg.split} {cfg.unit}", params,
                                 tags={"raydund.stage": "extract"}) as run:
        executor, retried = run_shards(cfg, spec, files_uri, shards, pending, done, fs, root, progress)
        records = [done[s["shard"]] for s in shards]
        files = [f for r in records for f in r["files"]]
        touch(fs, f"{root}/{SEALED}")  # from here on no file of this generation is ever written again
        faults.crash_point("extract.before_commit")
        snapshot = lake.commit_activation_files(
            files, spec.name, cfg.corpus, cfg.split, cfg.units,
            properties={"raydund.job_key": key, "mlflow.run_id": run.info.run_id},
        )
        _check_committed(lake, snapshot, records)
        faults.crash_point("extract.after_commit")
        seconds = time.perf_counter() - start
        per_unit = unit_figures(records, cfg.units)
        result = ExtractResult(
            snapshot_id=snapshot, run_id=run.info.run_id, words=sum(r["words"] for r in records),
            sentences=corpus.num_rows, files=len(files), bytes=sum(r["bytes"] for r in records),
            seconds=seconds, layers=len(records[0]["files"]) if records else 0, units=per_unit,
        )
        # the lake holds the result now: a tracking failure from here on is spooled, never raised
        tracking.log_metrics(settings, run.info.run_id, {
            "words": result.words, "sentences": result.sentences, "words_per_s": result.words_per_second,
            "bytes": result.bytes, "files": result.files, "layers": result.layers, "seconds": seconds,
            "dropped_words": sum(r["dropped"] for r in records), "resumed_shards": len(shards) - len(pending),
            "pool_retries": retried, "in_process": int(executor == "local"),
            "nonfinite_values": sum(r.get("nonfinite", 0) for r in records),
            **{f"{unit}/{name}": value for unit, figures in per_unit.items() for name, value in figures.items()},
        })
        tracking.set_tags(settings, run.info.run_id, {"iceberg.snapshot_id": str(snapshot),
                                                      "iceberg.table": "raydund.activations"})
    return result


def unit_figures(records: list[dict], units: tuple[str, ...]) -> dict[str, dict]:
    """Per unit: ``layers``, ``files`` and ``bytes`` over the shards, and ``rows`` (words x layers).

    Markers of jobs written before multi-unit extraction hold one unit and no per-unit fields.
    """
    out = {u: {"layers": 0, "files": 0, "bytes": 0, "rows": 0} for u in units}
    for record in records:
        names = list(record.get("units") or units[:1])
        layers = list(record.get("unit_layers") or [len(record["files"])])
        sizes = list(record.get("unit_bytes") or [record["bytes"]])
        for unit, n, size in zip(names, layers, sizes):
            figures = out[unit]
            figures.update(layers=int(n), files=figures["files"] + int(n), bytes=figures["bytes"] + int(size),
                           rows=figures["rows"] + int(n) * int(record["words"]))
    return out


def _check_committed(lake: Lake, snapshot_id: int, records: list[dict]) -> None:
    """The commit added exactly one row per (sentence, word, layer) the shards reported."""
    snap = lake.activations().snapshot_by_id(snapshot_id)
    try:
        added = int(snap.summary["added-records"])
    except (AttributeError, KeyError, TypeError):
        added = -1
    expected = sum(r["words"] * len(r["files"]) for r in records)
    if added != expected:
        raise RuntimeError(f"activation commit {snapshot_id} added {added} rows, expected {expected}")


#: ``ensure_ray`` stays importable from here: every stage that starts Ray goes through it.
__all__ = ["ExtractConfig", "ExtractResult", "check_model", "ensure_ray", "job_key", "make_shards", "run_extraction",
           "unit_figures"]
