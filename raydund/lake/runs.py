"""Stage results that readers see whole or not at all: the ``raydund.runs`` table.

A stage that writes several tables (similarity: ``layer_similarity`` +
``neuron_correlation``; probes: ``probe_results`` + ``neuron_rankings``; transfer:
``transfer_results`` + registry versions) cannot commit them in one Iceberg
transaction: each table has its own metadata. So a stage writes through a
:class:`StageRun`, which

1. replaces, in each table, exactly the rows its *scope* names (the write rule:
   ``where`` = the key of what this run recomputed, never more), remembering the
   snapshot id each commit produced, and
2. commits ONE row to ``raydund.runs`` last: run id, stage, model, corpus, scope,
   the snapshot ids of its inputs and of every table it wrote, the MLflow run id.

Readers never take "the current rows" of a result table. They ask for the latest
completed run whose scope covers what they want (:func:`latest`) and read each table
*at the snapshot that run recorded*, filtered by its scope (:func:`read`). A crash
between two tables, or before the run row, leaves the previous completed run what
readers see, with its own snapshots; a re-run then replaces the same scope again.
Snapshots that a current run points at are never expired by ``raydund vacuum``
(:func:`protected_snapshots`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa

from raydund import faults
from raydund.errors import UserError
from raydund.lake.catalog import Lake
from raydund.lake.commit import commit_with_retry, condition
from raydund.lake.names import NAMESPACE, table_identifier

RUNS = "runs"

RUNS_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("corpus", pa.string(), nullable=False),
    pa.field("scope", pa.string(), nullable=False),
    pa.field("inputs", pa.string(), nullable=False),
    pa.field("outputs", pa.string(), nullable=False),
    pa.field("mlflow_run_id", pa.string()),
    pa.field("finished_ms", pa.int64(), nullable=False),
])


def _canonical(scope: dict) -> dict:
    """Scope values as JSON-stable scalars or sorted lists (tuples become lists)."""
    out = {}
    for key, value in sorted(scope.items()):
        if isinstance(value, (list, tuple, set)):
            out[key] = sorted(value, key=lambda v: (str(type(v)), v))
        else:
            out[key] = value
    return out


@dataclass
class Run:
    """A completed stage run as the ``runs`` table records it."""

    run_id: str
    stage: str
    model: str
    corpus: str
    scope: dict
    inputs: dict
    outputs: dict
    mlflow_run_id: str | None
    finished_ms: int

    def covers(self, want: dict) -> bool:
        """Whether every value asked for in ``want`` lies inside this run's scope.

        A key the scope does not constrain (or ``want`` does not name) matches anything.
        """
        for key, value in want.items():
            if key not in self.scope:
                continue
            have = self.scope[key]
            have = have if isinstance(have, list) else [have]
            asked = value if isinstance(value, (list, tuple)) else [value]
            if not all(v in have for v in asked):
                return False
        return True

    def snapshot(self, table: str) -> int:
        """The snapshot id this run committed to ``table``."""
        try:
            return int(self.outputs[table_identifier(table)])
        except KeyError:
            raise UserError(f"run {self.run_id} ({self.stage}) wrote no table {table!r}") from None


@dataclass
class StageRun:
    """The writes of one stage run, made visible to readers by :meth:`complete`.

    Parameters
    ----------
    lake : Lake
    stage : str
        ``similarity``, ``cluster``, ``probes``, ``transfer``, ...
    model, corpus : str
    scope : dict
        Column -> value (or list of values): exactly the rows this run recomputes. Every
        :meth:`replace` deletes those rows of its table and writes the new ones.
    inputs : dict
        Table (or other input) -> snapshot id it read, for lineage.
    """

    lake: Lake
    stage: str
    model: str
    corpus: str
    scope: dict
    inputs: dict = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    outputs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.scope = _canonical({"model": self.model, "corpus": self.corpus, **self.scope})

    def replace(self, name: str, data: pa.Table, partitions: tuple[str, ...], properties: dict | None = None) -> int:
        """Replace this run's scope in table ``name`` with ``data`` (one commit); return the snapshot id."""
        return self.replace_in_batches(name, [data], partitions, properties)

    def replace_in_batches(self, name: str, batches, partitions: tuple[str, ...],
                           properties: dict | None = None) -> int:
        """:meth:`replace` for data that arrives in batches (ONE transaction, see :meth:`Lake.replace_batches`)."""
        faults.crash_point(f"{self.stage}.before_{name}")
        props = {"raydund.run_id": self.run_id, "raydund.stage": self.stage, **(properties or {})}
        snap = self.lake.replace_batches(name, batches, partitions, self.scope, props)
        self.outputs[table_identifier(name)] = snap
        return snap

    def tags(self) -> dict:
        """MLflow tags that trace a job to this run and the snapshot of every table it wrote."""
        return {"raydund.run_id": self.run_id,
                **{f"iceberg.snapshot_id.{t.rpartition('.')[2]}": str(s) for t, s in self.outputs.items()}}

    def complete(self, mlflow_run_id: str | None = None) -> int:
        """Commit this run's row: from now on readers see every table it wrote. Returns the snapshot id."""
        faults.crash_point(f"{self.stage}.before_complete")
        row = pa.table({
            "run_id": [self.run_id], "stage": [self.stage], "model": [self.model], "corpus": [self.corpus],
            "scope": [json.dumps(self.scope, sort_keys=True)],
            "inputs": [json.dumps({k: str(v) for k, v in self.inputs.items()}, sort_keys=True)],
            "outputs": [json.dumps({k: str(v) for k, v in self.outputs.items()}, sort_keys=True)],
            "mlflow_run_id": [mlflow_run_id], "finished_ms": [int(time.time() * 1000)],
        }, schema=RUNS_SCHEMA)
        ident = table_identifier(RUNS)
        self.lake._create_if_missing(ident, RUNS_SCHEMA, ("stage",))

        def commit() -> int:
            tbl = self.lake.catalog.load_table(ident)
            tbl.append(row, snapshot_properties={"raydund.run_id": self.run_id})
            return tbl.current_snapshot().snapshot_id

        snap = commit_with_retry(commit, f"run {self.run_id} of {self.stage}", on_retry=self.lake._count_retry)
        faults.crash_point(f"{self.stage}.after_complete")
        return snap


def _to_run(row: dict) -> Run:
    return Run(run_id=row["run_id"], stage=row["stage"], model=row["model"], corpus=row["corpus"],
               scope=json.loads(row["scope"]), inputs=json.loads(row["inputs"]), outputs=json.loads(row["outputs"]),
               mlflow_run_id=row["mlflow_run_id"], finished_ms=row["finished_ms"])


def completed(lake: Lake, stage: str | None = None, model: str | None = None,
              corpus: str | None = None) -> list[Run]:
    """Completed runs, oldest first (optionally of one stage, model and corpus)."""
    ident = table_identifier(RUNS)
    if ident not in lake.table_names():
        return []
    where = {k: v for k, v in (("stage", stage), ("model", model), ("corpus", corpus)) if v is not None}
    table = lake.catalog.load_table(ident)
    scan = table.scan(row_filter=condition(where)) if where else table.scan()
    rows = scan.to_arrow().sort_by([("finished_ms", "ascending"), ("run_id", "ascending")]).to_pylist()
    return [_to_run(r) for r in rows]


def latest(lake: Lake, stage: str, model: str, corpus: str, table: str | None = None, **want) -> Run | None:
    """The latest completed run of ``stage`` on (model, corpus) whose scope covers ``want``.

    With ``table``, only runs that wrote that table count.
    """
    ident = table_identifier(table) if table else None
    for run in reversed(completed(lake, stage, model, corpus)):
        if run.covers(want) and (ident is None or ident in run.outputs):
            return run
    return None


def find(lake: Lake, run_id: str, stage: str | None = None) -> Run | None:
    """A completed run by its raydund run id or its MLflow run id (optionally of one stage); ``None`` if none."""
    return next((run for run in completed(lake, stage) if run_id in (run.run_id, run.mlflow_run_id)), None)


def by_id(lake: Lake, run_id: str) -> Run:
    """A completed run by its raydund run id or its MLflow run id; a :class:`UserError` if none."""
    run = find(lake, run_id)
    if run is not None:
        return run
    raise UserError(f"no completed raydund run {run_id!r} in the lake (a failed or unfinished run has none)")


def read(lake: Lake, run: Run, table: str, want: dict | None = None, selected_fields: tuple[str, ...] = ("*",)):
    """The rows of ``table`` that ``run`` wrote, at the snapshot it recorded: a pyiceberg scan.

    ``want`` narrows further (e.g. one task of a multi-task run).
    """
    where = {**run.scope, **(want or {})}
    return lake.table(table).scan(row_filter=condition(where), snapshot_id=run.snapshot(table),
                                  selected_fields=selected_fields)


def protected_snapshots(lake: Lake) -> dict[str, set[int]]:
    """Table -> snapshot ids that current runs point at (``raydund vacuum`` never expires them).

    A run is current when no later completed run of the same stage has the same scope.
    """
    current: dict[tuple, Run] = {}
    for run in completed(lake):
        current[(run.stage, json.dumps(run.scope, sort_keys=True))] = run
    out: dict[str, set[int]] = {}
    for run in current.values():
        for table, snap in run.outputs.items():
            if table.startswith(f"{NAMESPACE}."):  # not the registry versions a transfer run records
                out.setdefault(table, set()).add(int(snap))
    return out


__all__ = ["RUNS", "Run", "StageRun", "by_id", "completed", "condition", "find", "latest", "protected_snapshots",
           "read"]
