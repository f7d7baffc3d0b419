"""``raydund prune-width``: width pruning of a decoder LLM's MLPs, methods x fractions (issue 19)."""

from __future__ import annotations

from raydund.cli.common import command, emit, settings
from raydund.cli.options import Opt, add_fields, config_from


def _floats(values) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(x) for v in values for x in str(v).split(",") if x.strip())


def _names(values) -> tuple[str, ...] | None:
    return None if values is None else tuple(x.strip() for v in values for x in str(v).split(",") if x.strip())


OPTS = {
    "model": Opt(default="smollm2"),
    "fractions": Opt(type=str, convert=_floats, metavar="F[,F...]",
                     help="fractions of every block's MLP neurons to remove (0.1,0.25,0.4)"),
    "methods": Opt(type=str, convert=_names, metavar="NAME[,NAME...]", help="fold cluster fold-cost magnitude random"),
}


def register(sub) -> None:
    command(sub, "prune-width", "width pruning: remove MLP neurons by correlation clusters (folded) and "
            "baselines, evaluate, register the best", cmd_prune_width, populate=_options)


def _options(p) -> None:
    from raydund.prune.width_study import WidthConfig

    add_fields(p, WidthConfig, OPTS)


def cmd_prune_width(args) -> None:
    from raydund.prune.width_study import WidthConfig, format_table, run_width_study

    out = run_width_study(config_from(args, WidthConfig, OPTS), settings())

    def text() -> str:
        lines = [format_table(out["rows"])]
        if out["registered"]:
            lines.append(f"best at {100 * out['best']['fraction']:.0f}% removed ({out['best']['method']}): "
                         f"{out['registered']}")
        lines.append(f"{out['seconds']:.0f} s; MLflow run {out['run_id']}")
        return "\n".join(lines)

    emit(args, {k: out[k] for k in ("rows", "registered", "run_id", "seconds", "details")}, text)
