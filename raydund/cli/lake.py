"""``raydund tables``, ``runs``, ``tracking flush`` and ``vacuum``: looking after the lake and MLflow."""

from __future__ import annotations

import json

from raydund.cli.common import command, emit, read_lake, settings
from raydund.errors import UserError


def register(sub) -> None:
    p = command(sub, "tables", "list lake tables (rows, files, snapshot)", cmd_tables)
    p.add_argument("--partitions", action="store_true", help="also rows per activation partition")

    p = command(sub, "runs", "completed stage runs: what readers see, with the snapshot of every table written",
                cmd_runs)
    p.add_argument("--stage", help="only this stage (similarity, cluster, probes, transfer)")
    p.add_argument("--model", help="only this model")
    p.add_argument("--corpus", help="only this corpus")
    p.add_argument("--last", type=int, default=20, help="the newest N (default 20)")

    p = command(sub, "tracking", "MLflow bookkeeping", None, json_output=False)
    tracking = p.add_subparsers(dest="tracking_command", required=True)
    command(tracking, "flush", "send what a job could not log (MLflow was down after its lake commit)",
            cmd_tracking_flush)

    p = command(sub, "vacuum", "expire old snapshots and delete files no retained snapshot references "
                "(dry run unless --yes)", cmd_vacuum)
    p.add_argument("--retention-days", type=float, default=7.0,
                   help="keep snapshots and unreferenced files younger than this (default 7)")
    p.add_argument("--keep-last", type=int, default=5,
                   help="snapshots every table keeps whatever their age (default 5)")
    p.add_argument("--yes", action="store_true", help="really expire and delete (default: only report)")


def cmd_tables(args) -> None:
    import polars as pl

    from raydund.lake import partition_counts

    _, lake = read_lake()
    summary = lake.summary()
    partitions = None
    if args.partitions and "raydund.activations" in lake.table_names():
        partitions = partition_counts(lake)

    def text() -> str:
        with pl.Config(tbl_rows=200, tbl_width_chars=160):
            return str(summary) if partitions is None else f"{summary}\n{partitions}"

    emit(args, {"tables": summary, **({} if partitions is None else {"partitions": partitions})}, text)


def cmd_runs(args) -> None:
    from raydund.lake import runs

    _, lake = read_lake()
    found = runs.completed(lake, args.stage, args.model, args.corpus)[-args.last:]

    def text() -> str:
        lines = [] if found else ["no completed runs"]
        for run in found:
            scope = {k: v for k, v in run.scope.items() if k not in ("model", "corpus")}
            lines.append(f"{run.run_id}  {run.stage:<10} {run.model} {run.corpus} {json.dumps(scope)}  "
                         f"MLflow {run.mlflow_run_id}")
            lines += [f"    {table} @ {snap}" for table, snap in sorted(run.outputs.items())]
        return "\n".join(lines)

    emit(args, found, text)


def cmd_tracking_flush(args) -> None:
    from raydund import tracking

    found = settings()
    pending = sorted(p.stem for p in (found.home / "mlflow-spool").glob("*.jsonl"))
    if not pending:
        emit(args, {"spooled": 0, "replayed": 0}, "nothing spooled: MLflow holds everything")
        return
    sent = tracking.replay_spool(found)
    emit(args, {"spooled": len(pending), "replayed": sent},
         f"replayed {sent} of {len(pending)} spooled run(s) to {tracking.redact(found.tracking_uri)}")
    if sent < len(pending):
        raise UserError(f"{len(pending) - sent} run(s) still spooled: MLflow did not take them; try again later")


def vacuum_text(report) -> str:
    verb = "would expire" if report.dry_run else "expired"
    lines = [f"{len(report.tables)} tables; {verb} {report.snapshots_expired} snapshots"]
    lines += [f"  {table}: {len(ids)}" for table, ids in sorted(report.expired.items())]
    if report.dry_run:
        lines.append(f"would delete {len(report.files)} unreferenced files: {report.bytes:,} bytes to reclaim")
    else:
        lines.append(f"deleted {len(report.files)} unreferenced files: {report.bytes:,} bytes reclaimed")
    lines.append(f"kept {report.kept_recent} unreferenced files younger than the retention")
    if report.dry_run:
        lines.append("dry run: re-run with --yes to delete")
    return "\n".join(lines)


def cmd_vacuum(args) -> None:
    from datetime import timedelta

    from raydund.config import Settings
    from raydund.lake.vacuum import check_options, lake_exists, vacuum

    found = Settings.from_env()  # not prepared: a maintenance command creates nothing
    retention = timedelta(days=args.retention_days)
    check_options(retention, args.keep_last)
    if not lake_exists(found):
        emit(args, {"empty": True, "catalog": found.catalog_file},
             f"the lake is empty: no catalog at {found.catalog_file}; nothing to vacuum")
        return
    report = vacuum(found, retention=retention, keep_last=args.keep_last, dry_run=not args.yes)
    emit(args, report, lambda: vacuum_text(report))
