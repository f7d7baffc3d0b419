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


def read(lake: Lake, run: runs.Run, table: str, want: dict | None = None,
         columns: tuple[str, ...] = ("*",)) -> pl.DataFrame:
    """:func:`raydund.lake.runs.read` as a polars frame: the rows of ``table`` that ``run``
    wrote, at its snapshot, narrowed by ``want`` (column -> value or list of values)."""
    return pl.from_arrow(runs.read(lake, run, table, want, selected_fields=columns).to_arrow())


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

__all__ = ["HEADER", "describe", "read", "rows"]
