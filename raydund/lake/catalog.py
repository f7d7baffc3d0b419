"""The :class:`Lake`: catalog, tables, scoped writes (the write rule), scans and layer matrices."""

from __future__ import annotations

import logging
import os
import warnings
from functools import cached_property

import numpy as np
import polars as pl
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, In, LessThan

from raydund.config import Settings, redact_uri
from raydund.errors import UserError
from raydund.lake.codec import ACTIVATION_PARTITIONS, ACTIVATION_SCHEMA, TABLE_PROPERTIES, vectors_to_matrix
from raydund.lake.commit import _conform, _release_arrow_memory, commit_with_retry, condition
from raydund.lake.names import ACTIVATIONS, NAMESPACE, check_name, corpus_table_name, table_identifier

log = logging.getLogger(__name__)

# polars plans Iceberg scans with pyiceberg unless the optional polars_iceberg plugin is there
os.environ.setdefault("POLARS_ICEBERG_PLANNER", "pyiceberg")


def sentence_filter(sentences):
    """An Iceberg row filter keeping ``sentences`` (ids): a range test when they are consecutive.

    ``In`` with hundreds of values costs pyiceberg ~1.5 s per scan; consecutive ids (a
    split's first sentences, the usual sample) become ``first <= sentence_id < last + 1``.
    """
    ids = sorted({int(s) for s in sentences})
    if ids and ids[-1] - ids[0] == len(ids) - 1:
        return And(GreaterThanOrEqual("sentence_id", ids[0]), LessThan("sentence_id", ids[-1] + 1))
    return In("sentence_id", ids)


class Lake:
    """Catalog and warehouse of one raydund installation.

    Parameters
    ----------
    settings : Settings
        Where the catalog and warehouse live.
    create : bool
        Create the catalog, namespace, folders and tables on first use (writers). With
        ``False`` (read commands) nothing is ever created: a lake that is not there, or
        a table it lacks, is a :class:`UserError` that says where it looked.
    """

    def __init__(self, settings: Settings, create: bool = True):
        self.settings = settings
        self.create = create
        #: Commits this instance had to retry after losing a concurrency race.
        self.commit_retries = 0

    def require(self) -> Lake:
        """Open the catalog now (read mode: fail at once, before any other work, when there is no lake)."""
        _ = self.catalog
        return self

    def _count_retry(self, exc: BaseException) -> None:
        self.commit_retries += 1

    @cached_property
    def catalog(self) -> SqlCatalog:
        """The Iceberg SQL catalog (created on first use unless ``create`` is False)."""
        if not self.create:
            return self._existing_catalog()
        if self.settings.warehouse.startswith("file://"):
            self.settings.prepare()
        # S3 (or MinIO): the endpoint and region from the standard AWS variables; the keys are
        # read by pyarrow from the environment (or the instance role), never passed here
        s3 = {prop: os.environ[var] for prop, var in (("s3.endpoint", "AWS_ENDPOINT_URL"), ("s3.region", "AWS_REGION"))
              if os.environ.get(var)}
        catalog = SqlCatalog("raydund", uri=self.settings.catalog_uri, warehouse=self.settings.warehouse, **s3)
        catalog.create_namespace_if_not_exists(NAMESPACE)
        return catalog

    def _existing_catalog(self) -> SqlCatalog:
        """The catalog of a lake that must already exist; creates no file, table or namespace."""
        uri = self.settings.catalog_uri
        path = self.settings.catalog_file
        if path is not None and not path.is_file():  # connecting would create it
            raise UserError(f"the lake is empty: there is no catalog at {path} "
                            f"(RAYDUND_HOME is {self.settings.home}; is that right?)")
        where = redact_uri(uri)
        catalog = SqlCatalog("raydund", uri=uri, warehouse=self.settings.warehouse, init_catalog_tables="false")
        try:
            found = (NAMESPACE,) in catalog.list_namespaces()
        except Exception as exc:  # noqa: BLE001  (no catalog tables: SQLAlchemy's errors differ per database)
            log.debug("no Iceberg catalog tables at %s: %s", redact_uri(uri), exc)
            found = False
        if not found:
            raise UserError(f"the lake is empty: the catalog at {where} holds no {NAMESPACE!r} namespace")
        return catalog

    # -- tables -----------------------------------------------------------------
    def table(self, identifier: str):
        """Load a table by identifier; a clear error when it does not exist."""
        identifier = table_identifier(identifier)
        try:
            return self.catalog.load_table(identifier)
        except NoSuchTableError:
            known = ", ".join(self.table_names()) or "none yet"
            name = identifier.split(".", 1)[-1]
            hint = f"; ingest it first: raydund ingest {name[7:]}" if name.startswith("corpus_") else ""
            raise UserError(f"no table {identifier!r} in the lake (tables: {known}){hint}") from None

    def table_names(self) -> list[str]:
        """Identifiers of every raydund table."""
        return sorted(f"{NAMESPACE}.{name}" for _, name in self.catalog.list_tables(NAMESPACE))

    def activations(self):
        """The activation table, created with its partition spec on first use."""
        return self._create_if_missing(ACTIVATIONS, ACTIVATION_SCHEMA, ACTIVATION_PARTITIONS)

    def _create_if_missing(self, identifier: str, schema: pa.Schema, partitions):
        identifier = table_identifier(identifier)
        if not self.create:
            return self.table(identifier)  # read mode: a missing table is an error, never created
        try:
            tbl = self.catalog.load_table(identifier)
        except NoSuchTableError:
            tbl = self.catalog.create_table_if_not_exists(identifier, schema=schema, properties=TABLE_PROPERTIES)
        if tbl.spec().is_unpartitioned() and partitions:
            def add_spec():  # another writer may be creating the same table right now
                fresh = self.catalog.load_table(identifier)
                if fresh.spec().is_unpartitioned():
                    with fresh.update_spec() as update:
                        for column in partitions:
                            update.add_identity(column)
                return self.catalog.load_table(identifier)

            tbl = commit_with_retry(add_spec, f"partition spec of {identifier}", on_retry=self._count_retry)
        return tbl

    # -- generic result tables --------------------------------------------------------
    def _prepare_result_table(self, name: str, schema: pa.Schema, partitions: tuple[str, ...]):
        """The table (created on first use), its schema widened when ``schema`` brings new columns."""
        ident = table_identifier(name)
        self._create_if_missing(ident, schema, partitions)
        tbl = self.catalog.load_table(ident)
        if not set(tbl.schema().as_arrow().names) >= set(schema.names):
            def widen():
                fresh = self.catalog.load_table(ident)
                if not set(fresh.schema().as_arrow().names) >= set(schema.names):
                    with fresh.update_schema() as update:
                        update.union_by_name(schema)
                return self.catalog.load_table(ident)

            tbl = commit_with_retry(widen, f"schema of {ident}", on_retry=self._count_retry)
        return tbl

    def replace(self, name: str, data: pa.Table, partitions: tuple[str, ...], where: dict,
                properties: dict | None = None) -> int:
        """Replace the rows matching ``where`` (column -> value or list of values) in one commit.

        The write rule: ``where`` names exactly what the caller recomputed; every other
        row of the table stays. Creates the table (partitioned by ``partitions``) on first
        use and widens its schema when ``data`` brings new columns. Returns the snapshot id.
        """
        return self.replace_batches(name, [data], partitions, where, properties)

    def replace_batches(self, name: str, batches, partitions: tuple[str, ...], where: dict,
                        properties: dict | None = None) -> int:
        """:meth:`replace` for data that arrives in batches: ONE transaction deletes the rows
        matching ``where`` and writes the batches one after the other (each becomes its own
        files as it comes, so only one batch is in memory), committed once at the end.

        ``batches`` is an iterable of Arrow tables of one schema; it is consumed once, so a
        lost concurrency race is retried only when it is a list.
        """
        replayable = isinstance(batches, list)
        stream = iter(batches)
        first = next(stream)
        ident = table_identifier(name)
        self._prepare_result_table(ident, first.schema, partitions)
        overwrite_filter = condition(where)
        props = {k: str(v) for k, v in (properties or {}).items()}

        def commit() -> int:
            tbl = self.catalog.load_table(ident)
            schema = tbl.schema().as_arrow()
            rest = batches[1:] if replayable else stream
            with warnings.catch_warnings(), tbl.transaction() as tx:
                warnings.filterwarnings("ignore", message="Delete operation did not match any records")
                tx.overwrite(_conform(first, schema), overwrite_filter=overwrite_filter, snapshot_properties=props)
                for batch in rest:
                    tx.append(_conform(batch, schema), snapshot_properties=props)
            return self.catalog.load_table(ident).current_snapshot().snapshot_id

        if replayable:
            snap = commit_with_retry(commit, f"replace in {ident}", on_retry=self._count_retry)
        else:
            snap = commit()  # a stream cannot be replayed: a lost race fails the job, which re-runs
        _release_arrow_memory()
        return snap

    # -- corpora ----------------------------------------------------------------
    def write_corpus(self, corpus: str, splits: dict[str, pa.Table], properties: dict | None = None) -> int:
        """Replace the given splits of ``corpus_<corpus>`` in one commit; return the snapshot id.

        Splits not named are left as they are. Every split is validated by the
        reader before this is called, so a bad file never reaches the lake.
        """
        if not splits:
            raise UserError(f"nothing to ingest for corpus {corpus!r}")
        check_name("corpus", corpus)
        empty = [split for split, t in splits.items() if t.num_rows == 0]
        if empty:
            raise UserError(f"corpus {corpus!r}: split {empty[0]!r} has no sentences; nothing written")
        parts = [t.add_column(0, "split", pa.array([split] * t.num_rows, pa.string())) for split, t in splits.items()]
        data = pa.concat_tables(parts, promote_options="permissive")
        return self.replace(corpus_table_name(corpus), data, ("split",), {"split": list(splits)}, properties)

    def read_corpus(self, corpus: str, split: str) -> pa.Table:
        """The sentences of one split, ordered by ``sentence_id``."""
        tbl = self.table(corpus_table_name(corpus))
        data = tbl.scan(row_filter=EqualTo("split", split)).to_arrow()
        if data.num_rows == 0:
            have = sorted(set(tbl.scan(selected_fields=("split",)).to_arrow().column("split").to_pylist()))
            raise UserError(f"corpus {corpus!r} has no split {split!r} in the lake (splits: {', '.join(have)})")
        return data.sort_by("sentence_id")

    # -- activations ------------------------------------------------------------
    def commit_activation_files(self, files: list[str], model: str, corpus: str, split: str, unit,
                                properties: dict | None = None) -> int:
        """Register worker-written files, replacing the same (model, corpus, split, unit), in one commit.

        ``unit`` is one unit or a sequence of them (a multi-unit extraction): the one
        transaction replaces exactly the (model, corpus, split, unit) scope of each.
        Returns the new snapshot id.
        """
        units = [unit] if isinstance(unit, str) else list(unit)
        for kind, value in (("model", model), ("corpus", corpus), ("split", split), *(("unit", u) for u in units)):
            check_name(kind, value)
        scope = EqualTo("unit", units[0]) if len(units) == 1 else In("unit", units)
        where = And(EqualTo("model", model), EqualTo("corpus", corpus), EqualTo("split", split), scope)
        props = {k: str(v) for k, v in (properties or {}).items()}
        self.activations()

        def commit() -> int:
            # a fresh load per attempt: a transaction built on a stale snapshot can only fail again
            tbl = self.catalog.load_table(ACTIVATIONS)
            with tbl.transaction() as tx, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Delete operation did not match any records")
                tx.delete(where, snapshot_properties=props)
                tx.add_files(files, snapshot_properties=props)
            return tbl.current_snapshot().snapshot_id

        snapshot_id = commit_with_retry(commit, f"commit to {ACTIVATIONS}", on_retry=self._count_retry)
        log.info("committed %d files to %s (snapshot %s)", len(files), ACTIVATIONS, snapshot_id)
        return snapshot_id

    def activation_files(self, model: str, corpus: str, split: str, unit: str = "word",
                         snapshot_id: int | None = None) -> list[tuple[int, str]]:
        """(layer, file URI) of every data file of one (model, corpus, split, unit)."""
        where = And(EqualTo("model", model), EqualTo("corpus", corpus), EqualTo("split", split), EqualTo("unit", unit))
        tasks = self.activations().scan(row_filter=where, snapshot_id=snapshot_id).plan_files()
        files = sorted((int(t.file.partition[4]), t.file.file_path) for t in tasks)
        if not files:
            raise UserError(f"no activations for model={model} corpus={corpus} split={split} unit={unit}; "
                            "run `raydund extract` first")
        return files

    def layer_matrix(self, model: str, corpus: str, split: str, layer: int, unit: str = "word",
                     snapshot_id: int | None = None, sentences=None) -> tuple[np.ndarray, pa.Table]:
        """One layer as ``X [tokens x neurons]`` (float32) plus its row keys.

        Rows are ordered by (sentence_id, word_id), the same order for every layer,
        so matrices of different layers line up row by row. ``sentences`` (sentence ids)
        reads only those sentences' rows (a sample).

        Returns
        -------
        X : numpy.ndarray
        keys : pyarrow.Table with ``sentence_id, word_id, word``
        """
        where = And(
            EqualTo("model", model), EqualTo("corpus", corpus), EqualTo("split", split),
            EqualTo("unit", unit), EqualTo("layer", int(layer)),
        )
        if sentences is not None:
            where = And(where, sentence_filter(sentences))
        data = self.activations().scan(row_filter=where, snapshot_id=snapshot_id).to_arrow()
        if data.num_rows == 0:
            layers = sorted({lay for lay, _ in self.activation_files(model, corpus, split, unit, snapshot_id)})
            raise UserError(f"layer {layer} does not exist for model={model} corpus={corpus} split={split} "
                            f"unit={unit} (layers {layers[0]}..{layers[-1]})")
        data = data.sort_by([("sentence_id", "ascending"), ("word_id", "ascending")])
        return vectors_to_matrix(data), data.select(["sentence_id", "word_id", "word"])

    def layer_keys(self, model: str, corpus: str, split: str, layer: int = 0, unit: str = "word") -> pa.Table:
        """The row keys of one layer (``sentence_id, word_id, word``) in :meth:`layer_matrix` order, no vectors."""
        where = And(
            EqualTo("model", model), EqualTo("corpus", corpus), EqualTo("split", split),
            EqualTo("unit", unit), EqualTo("layer", int(layer)),
        )
        keys = ("sentence_id", "word_id", "word")
        data = self.activations().scan(row_filter=where, selected_fields=keys).to_arrow()
        return data.sort_by([("sentence_id", "ascending"), ("word_id", "ascending")]).select(list(keys))

    def scan(self, name: str, snapshot_id: int | None = None) -> pl.LazyFrame:
        """A polars LazyFrame over a table (``activations``, ``corpus_conll2000``, ...).

        Filters on partition columns (model, corpus, split, unit, layer) prune files.
        """
        return pl.scan_iceberg(self.table(name), snapshot_id=snapshot_id)

    def summary(self) -> pl.DataFrame:
        """One row per table: rows, files, current snapshot id."""
        rows = []
        for ident in self.table_names():
            tbl = self.catalog.load_table(ident)
            snap = tbl.current_snapshot()
            summary = snap.summary if snap else None
            rows.append({
                "table": ident,
                "rows": int(summary["total-records"]) if summary else 0,
                "files": int(summary["total-data-files"]) if summary else 0,
                "bytes": int(summary["total-files-size"]) if summary else 0,
                "snapshot_id": snap.snapshot_id if snap else None,
            })
        return pl.DataFrame(rows, schema={"table": pl.String, "rows": pl.Int64, "files": pl.Int64,
                                          "bytes": pl.Int64, "snapshot_id": pl.Int64})


def partition_counts(lake: Lake) -> pl.DataFrame:
    """Rows per (model, corpus, split, unit, layer) of the activation table, from metadata only."""
    return (
        lake.scan("activations")
        .group_by(list(ACTIVATION_PARTITIONS))
        .agg(pl.len().alias("rows"))
        .sort(list(ACTIVATION_PARTITIONS))
        .collect()
    )
