"""``raydund probe``: task-specific redundancy (layer-wise probes, control task, minimal neuron set)."""

from __future__ import annotations

from raydund.cli.common import command, emit, settings
from raydund.cli.general import TARGET
from raydund.cli.options import Opt, add_fields, config_from

OPTS = {**TARGET, "splits": Opt(metavar=("TRAIN", "DEV", "TEST"))}


def register(sub) -> None:
    command(sub, "probe", "task-specific redundancy: layer-wise probes, control task, minimal neuron set",
            cmd_probe, populate=_options)


def _options(p) -> None:
    from raydund.probes.job import ProbeConfig

    add_fields(p, ProbeConfig, OPTS)


def probe_text(cfg, out) -> str:
    """The probe job's results as a table and a few lines."""
    key = "pearson" if cfg.task == "regression" else "accuracy"
    control = {r["probe"]: r for r in out["control"] or []}
    lines = [f"{'probe':<14}{'dev':>8}{'test':>8}{'/oracle':>9}  redundant  selectivity"]
    for r in out["layerwise"]:
        sel = control.get(r["probe"], {}).get("selectivity_dev")
        lines.append(f"{r['probe']:<14}{100 * r['dev'][key]:>8.2f}{100 * r['test'][key]:>8.2f}"
                     f"{r['share_of_oracle']:>9.3f}  {'yes' if r['redundant'] else '':<9}  "
                     f"{'' if sel is None else f'{100 * sel:.1f}'}")
    m = out["minimal"]
    lines.append(f"minimal neuron set keeping {cfg.keep_share:.0%} of the oracle: "
                 f"{m['k'] if m['k'] else 'none of the grid'} of {len(m['neurons']) if not m['k'] else 'N'} neurons")
    for r in out["reduced"]:
        lines.append(f"clustering threshold {r['threshold']:.1f}: {r['neurons']} neurons, "
                     f"dev {100 * r['dev'][key]:.2f}")
    lines.append(f"MLflow run {out['run_id']}")
    return "\n".join(lines)


def cmd_probe(args) -> None:
    from raydund.config import check_unit_interval
    from raydund.probes.job import ProbeConfig, run_probes

    check_unit_interval("--redundant-share", args.redundant_share)
    check_unit_interval("--keep-share", args.keep_share)
    cfg = config_from(args, ProbeConfig, OPTS)
    out = run_probes(cfg, settings())
    emit(args, {k: out[k] for k in ("layerwise", "control", "minimal", "reduced", "run_id")},
         lambda: probe_text(cfg, out))
