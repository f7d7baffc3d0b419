"""``raydund prune``: depth pruning of a decoder LLM, criteria x blocks removed (issue 18)."""

from __future__ import annotations

from raydund.cli.common import command, emit, settings
from raydund.cli.options import Opt, add_fields, config_from


def _ints(values) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(x) for v in values for x in str(v).split(",") if x.strip())


def _names(values) -> tuple[str, ...] | None:
    return None if values is None else tuple(x.strip() for v in values for x in str(v).split(",") if x.strip())


OPTS = {
    "model": Opt(default="smollm2"),
    "blocks": Opt(type=str, convert=_ints, metavar="N[,N...]", help="numbers of blocks to remove (2,4,6,8)"),
    "criteria": Opt(type=str, convert=_names, metavar="NAME[,NAME...]",
                    help="hybrid (default) sleb shortgpt gromov last cka cka-debiased probe"),
    "metrics": Opt(type=str, convert=_names, metavar="NAME[,NAME...]", help="ppl sst2 pos"),
}


def register(sub) -> None:
    command(sub, "prune", "depth pruning: drop decoder blocks by each criterion, evaluate, register the best",
            cmd_prune, populate=_options)
    from raydund.cli import prune_width

    prune_width.register(sub)


def _options(p) -> None:
    from raydund.prune.study import PruneConfig

    add_fields(p, PruneConfig, OPTS)


def cmd_prune(args) -> None:
    from raydund.prune.study import PruneConfig, format_table, run_study

    out = run_study(config_from(args, PruneConfig, OPTS), settings())

    def text() -> str:
        lines = [format_table(out["rows"])]
        lines += [f"best with {n} blocks removed: {uri}" for n, uri in sorted(out["registered"].items())]
        lines.append(f"{out['seconds']:.0f} s; MLflow run {out['run_id']}")
        return "\n".join(lines)

    emit(args, {k: out[k] for k in ("rows", "registered", "run_id", "seconds", "details")}, text)
