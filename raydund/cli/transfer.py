"""``raydund transfer`` (LS + CCFS, reduced models registered), ``raydund report`` and ``raydund compare``."""

from __future__ import annotations

from raydund.cli.common import command, emit, read_lake, settings
from raydund.cli.general import TARGET
from raydund.cli.options import Opt, add_fields, config_from

OPTS = {
    **TARGET,
    "labels": Opt(flag="--label", action="append", help="a task label column (repeat for several)"),
    "ls_thresholds": Opt(flag="--ls-threshold", action="append",
                         help="relative loss LS may take (repeat for several)"),
    "ccfs_thresholds": Opt(flag="--ccfs-threshold", action="append",
                           help="relative loss CC and FS may take (repeat for several)"),
    "splits": Opt(metavar=("TRAIN", "DEV", "TEST")),
}


def register(sub) -> None:
    command(sub, "transfer", "efficient transfer: LayerSelector + CCFS per task, reduced model registered",
            cmd_transfer, populate=_options)
    p = command(sub, "report", "one self-contained HTML page with the paper's figures and tables for a run",
                cmd_report)
    p.add_argument("run", help="MLflow run id (or raydund run id) of a completed `raydund transfer` job")
    p = command(sub, "compare", "several models on one corpus side by side: CKA, clustering, layer-wise probes, "
                "robust CKA and depth pruning where present (one HTML page)", cmd_compare)
    p.add_argument("--corpus", required=True)
    p.add_argument("--model", action="append", required=True, help="a model's lake name (repeat: minilm, smollm2)")
    p.add_argument("--label", action="append", default=None, help="a task whose probes are shown (default: all)")
    p.add_argument("--split", default="dev", help="split of the general analyses (default: %(default)s)")
    p.add_argument("--unit", default="word")


def _options(p) -> None:
    from raydund.transfer.job import TransferConfig

    add_fields(p, TransferConfig, OPTS)


def cmd_transfer(args) -> None:
    from raydund.transfer.job import TransferConfig, format_table, run_transfer

    out = run_transfer(config_from(args, TransferConfig, OPTS), settings())

    def text() -> str:
        lines = [format_table(out["rows"])]
        lines += [f"reduced model for {label}: {uri}" for label, uri in out["registered"].items()]
        lines.append(f"MLflow run {out['run_id']}  (raydund report {out['run_id']})")
        return "\n".join(lines)

    emit(args, {"rows": out["rows"], "registered": out["registered"], "run_id": out["run_id"]}, text)


def cmd_report(args) -> None:
    from raydund.report.html import build_report

    found, _ = read_lake()
    page = build_report(found, args.run)
    emit(args, {"report": page}, str(page))


def cmd_compare(args) -> None:
    from raydund.lake import check_name
    from raydund.report.compare import build_comparison

    for model in args.model:
        check_name("model", model)
    check_name("corpus", args.corpus)
    found, _ = read_lake()
    page = build_comparison(found, args.corpus, args.model, tuple(args.label) if args.label else None,
                            split=args.split, unit=args.unit)
    emit(args, {"report": page}, str(page))
