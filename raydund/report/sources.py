"""The completed runs a page is built from, and their rows (never "the current rows" of a table).

A report or browser page resolves each stage's result through :mod:`raydund.lake.runs`
(the latest completed run whose scope covers what the page shows, or a run by id),
reads every table at the snapshot that run recorded, filtered by its scope, and names
the runs it used: stage, raydund and MLflow run ids, table -> snapshot id, scope.
"""

from __future__ import annotations

import json

import polars as pl

from raydund.lake import Lake, runs, table_identifier


def columns_of(lake: Lake, table: str) -> set[str]:
    """Column names of a lake table (empty when the table does not exist)."""
    ident = table_identifier(table)
    if ident not in lake.table_names():
        return set()
    return {f.name for f in lake.table(table).schema().fields}


def read(lake: Lake, run: runs.Run, table: str, want: dict | None = None,
         columns: tuple[str, ...] = ("*",)) -> pl.DataFrame:
    """The rows of ``table`` that ``run`` wrote, at its snapshot, narrowed by ``want``.

    Like :func:`raydund.lake.runs.read`, but scope keys that are not columns of the table
    (e.g. a transfer run's ``splits``) are not filtered on: they cannot tell its rows
    apart, the snapshot and the other keys do.

    Parameters
    ----------
    lake : Lake
    run : raydund.lake.runs.Run
    table : str
    want : dict, optional
        Column -> value (or list of values) to narrow to.
    columns : tuple of str
        Columns to read (default: all).

    Returns
    -------
    polars.DataFrame
    """
    have = columns_of(lake, table)
    where = {k: v for k, v in {**run.scope, **(want or {})}.items() if k in have}
    scan = lake.table(table).scan(row_filter=runs.condition(where), snapshot_id=run.snapshot(table),
                                  selected_fields=columns)
    return pl.from_arrow(scan.to_arrow())


def describe(run: runs.Run, tables: list[str] | None = None) -> dict:
    """A JSON-ready record of one run a page is built from.

    Parameters
    ----------
    run : raydund.lake.runs.Run
    tables : list of str, optional
        The tables the page read from this run (default: every table it wrote).

    Returns
    -------
    dict
        ``stage, run_id, mlflow_run_id, snapshots {table: snapshot id}, scope``.
    """
    idents = [table_identifier(t) for t in tables] if tables else sorted(run.outputs)
    return {"stage": run.stage, "run_id": run.run_id, "mlflow_run_id": run.mlflow_run_id,
            "snapshots": {i.rpartition(".")[2]: int(run.outputs[i]) for i in idents if i in run.outputs},
            "scope": {k: v for k, v in run.scope.items() if k not in ("model", "corpus")}}


def rows(records: list[dict]) -> list[list[str]]:
    """``describe`` records as table rows: stage, run id, MLflow run id, table -> snapshot, scope."""
    return [[r["stage"], r["run_id"], r["mlflow_run_id"] or "",
             ", ".join(f"{t} -> {s}" for t, s in r["snapshots"].items()),
             json.dumps(r["scope"], sort_keys=True)] for r in records]


HEADER = ["stage", "raydund run", "MLflow run", "table -> snapshot", "scope"]

__all__ = ["HEADER", "columns_of", "describe", "read", "rows"]
