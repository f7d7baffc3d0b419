"""MLflow runs, figures, the lake table and the registered models of a pruning study."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from raydund import tracking
from raydund.config import Settings

log = logging.getLogger(__name__)

LABELS = {"ppl": "held-out perplexity", "sst2": "SST-2 zero-shot accuracy", "pos": "POS probe accuracy"}


def curve_figure(rows: list[dict], criterion: str | None, metrics: tuple[str, ...]):
    """Blocks removed vs each metric: one criterion (a panel per metric), or every criterion's perplexity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = next(r for r in rows if r["criterion"] == "none")
    shown = [m for m in metrics if m in full] if criterion else ["ppl"]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4), squeeze=False)
    names = [criterion] if criterion else sorted({r["criterion"] for r in rows} - {"none"})
    for ax, m in zip(axes[0], shown):
        for c in names:
            pts = sorted((r["n"], r[m]) for r in rows if r["criterion"] == c)
            ax.plot([0] + [p[0] for p in pts], [full[m]] + [p[1] for p in pts], marker="o", label=c)
        ax.set_xlabel("blocks removed")
        ax.set_ylabel(LABELS[m])
        if m == "ppl":
            ax.set_yscale("log")
        if not criterion:
            ax.legend(fontsize=7)
    fig.suptitle(f"depth pruning: {criterion or 'all criteria'}")
    fig.tight_layout()
    return fig


def record(cfg, settings: Settings, rows: list[dict], details: dict, best: dict, pool, total: int,
           model_name: str) -> dict:
    """Parent run, child runs, figures, lake table, registered models; returns run ids and registered URIs."""
    import mlflow

    from raydund.lake import Lake
    from raydund.lake.runs import StageRun
    from raydund.prune import registry
    from raydund.prune.study import PRUNE_RESULTS, format_table, registration_folder, results_table
    from raydund.report import figures

    params = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    params["blocks_total"] = total
    lake = Lake(settings)
    # the scope holds the full model's row too (criterion "none", n 0): the run recomputed it
    stage = StageRun(lake, "prune", model_name, cfg.corpus,
                     {"criterion": sorted([*cfg.criteria, "none"]), "n": sorted([0, *(int(n) for n in cfg.blocks)])})
    registered = {}
    with tracking.job_run(settings, tracking.experiment_name(model_name, cfg.corpus),
                          f"prune {','.join(map(str, cfg.blocks))}", params,
                          tags={"raydund.stage": "prune", "raydund.run_id": stage.run_id}) as parent:
        exp = parent.info.experiment_id
        full = next(r for r in rows if r["criterion"] == "none")
        mlflow.log_metrics({f"full_{m}": full[m] for m in ("ppl", "sst2", "pos") if m in full})
        for r in rows:
            if r["criterion"] == "none":
                continue
            with mlflow.start_run(run_name=f"{r['criterion']} n={r['n']}", nested=True, experiment_id=exp):
                mlflow.log_params({"criterion": r["criterion"], "n": r["n"],
                                   "blocks_dropped": ",".join(map(str, r["blocks"]))})
                mlflow.log_metrics({k: v for k, v in r.items() if isinstance(v, float)})
        for c in sorted({r["criterion"] for r in rows} - {"none"}):
            fig = curve_figure(rows, c, cfg.metrics)
            mlflow.log_figure(fig, f"figures/prune_{c}.png")
            figures.close(fig)
        if "ppl" in cfg.metrics:
            fig = curve_figure(rows, None, cfg.metrics)
            mlflow.log_figure(fig, "figures/prune_ppl_all.png")
            figures.close(fig)
        mlflow.log_dict({"rows": rows, "details": details}, "tables/prune.json")
        mlflow.log_text(format_table(rows), "tables/prune.txt")
        if cfg.register:
            for n, r in sorted(best.items()):
                registered[n] = _register(mlflow, registry, pool, cfg, model_name, r, exp, registration_folder)
        stage.replace(PRUNE_RESULTS, results_table(model_name, cfg.corpus, rows), ("model", "corpus"),
                      {"mlflow.run_id": parent.info.run_id})
        stage.complete(parent.info.run_id)
        tracking.Tracker(settings, parent.info.run_id).tags(stage.tags())
    return {"run_id": parent.info.run_id, "raydund_run_id": stage.run_id, "registered": registered}


def _register(mlflow, registry, pool, cfg, model_name: str, row: dict, exp: str, folder_factory) -> str:
    """Save the pruned model of ``row`` (by an actor), log it as pyfunc in a child run, register it."""
    name = registry.registered_name(model_name, cfg.corpus, row["n"])
    with folder_factory() as tmp, mlflow.start_run(run_name=f"best n={row['n']} ({row['criterion']})",
                                                   nested=True, experiment_id=exp):
        folder = pool.one("save", tuple(row["blocks"]), str(Path(tmp) / "model"))
        mlflow.log_params({"criterion": row["criterion"], "n": row["n"],
                           "blocks_dropped": ",".join(map(str, row["blocks"]))})
        info = registry.log_pruned(mlflow, folder, name)
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    mine = [v for v in versions if getattr(v, "model_id", None) == info.model_id] or versions
    version = max(int(v.version) for v in mine)
    log.info("registered models:/%s/%s (%s, blocks %s)", name, version, row["criterion"], row["blocks"])
    return f"models:/{name}/{version}"
