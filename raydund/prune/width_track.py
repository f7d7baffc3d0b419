"""MLflow runs, the figure, the lake table and the registered model of a width-pruning study."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from raydund import tracking
from raydund.config import Settings

log = logging.getLogger(__name__)


def record(cfg, settings: Settings, rows: list[dict], details: dict, best: dict, plans: dict, pool) -> dict:
    """Parent run, child per (method, fraction), figure, tables, lake rows, the registered model; returns ids, URI."""
    import mlflow

    from raydund.lake import Lake
    from raydund.lake.runs import StageRun
    from raydund.prune import registry
    from raydund.prune import width_study as ws
    from raydund.report import figures

    model_name = ws.lake_model_name(cfg.model)
    params = {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    # the scope holds the full model's row too (method "none", fraction 0): the run recomputed it
    stage = StageRun(Lake(settings), "prune-width", model_name, cfg.corpus,
                     {"method": sorted([*cfg.methods, "none"]), "fraction": sorted([0.0, *map(float, cfg.fractions)])})
    registered = None
    with tracking.job_run(settings, tracking.experiment_name(model_name, cfg.corpus),
                          f"prune-width {','.join(map(str, cfg.fractions))}", params,
                          tags={"raydund.stage": "prune-width", "raydund.run_id": stage.run_id}) as parent:
        exp = parent.info.experiment_id
        full = next(r for r in rows if r["method"] == "none")
        mlflow.log_metrics({f"full_{k}": v for k, v in full.items() if isinstance(v, float) and k != "fraction"})
        for r in rows:
            if r["method"] == "none":
                continue
            with mlflow.start_run(run_name=f"{r['method']} {r['fraction']:g}", nested=True, experiment_id=exp):
                mlflow.log_params({"method": r["method"], "fraction": r["fraction"]})
                mlflow.log_metrics({k: v for k, v in r.items() if isinstance(v, float) and k != "fraction"})
        fig = figures.width_curves(rows, f"{model_name} on {cfg.corpus}: width pruning")
        mlflow.log_figure(fig, "figures/prune_width_ppl.png")
        figures.close(fig)
        mlflow.log_dict({"rows": rows, "details": details}, "tables/prune_width.json")
        mlflow.log_text(ws.format_table(rows), "tables/prune_width.txt")
        if cfg.register:
            name = ws.registered_name(model_name, cfg.corpus, best["fraction"])
            registered = _register(mlflow, registry, pool, best, plans[best["method"], best["fraction"]], name, exp)
        stage.replace(ws.PRUNE_WIDTH_RESULTS, ws.results_table(model_name, cfg.corpus, rows), ("model", "corpus"),
                      {"mlflow.run_id": parent.info.run_id})
        stage.complete(parent.info.run_id)
        tracking.Tracker(settings, parent.info.run_id).tags(stage.tags())
    return {"run_id": parent.info.run_id, "raydund_run_id": stage.run_id, "registered": registered}


def _register(mlflow, registry, pool, row: dict, plans: list, name: str, exp: str) -> str:
    """Save the pruned model of ``row`` (by an actor), log it as pyfunc in a child run, register it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="raydund-prune-width-") as tmp, mlflow.start_run(
            run_name=f"best {row['fraction']:g} ({row['method']})", nested=True, experiment_id=exp):
        folder = pool.one("save", plans, str(Path(tmp) / "model"))
        mlflow.log_params({"method": row["method"], "fraction": row["fraction"]})
        mlflow.log_metrics({k: v for k, v in row.items() if isinstance(v, float) and k != "fraction"})
        info = registry.log_pruned(mlflow, folder, name)
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    mine = [v for v in versions if getattr(v, "model_id", None) == info.model_id] or versions
    version = max(int(v.version) for v in mine)
    log.info("registered models:/%s/%s (%s, %.0f%% of MLP neurons removed)", name, version, row["method"],
             100 * row["fraction"])
    return f"models:/{name}/{version}"
