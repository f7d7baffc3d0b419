"""Robust layer similarity in a report: what massive activations do to linear CKA (``raydund robust-cka``).

``raydund robust-cka`` writes nothing to the lake: its matrices, massive dimensions and
tokens are the MLflow artefact ``robust_cka/result.json`` of a run tagged
``raydund.stage=robust-cka`` in the experiment of (model, corpus), with the activation
snapshot it sampled as a param. A page takes the latest finished such run and names it
in its "Built from" table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from raydund import tracking
from raydund.general.robust_job import TITLES
from raydund.report import figures
from raydund.report.page import Report, table

log = logging.getLogger(__name__)

STAGE = "robust-cka"
RESULT = "robust_cka/result.json"
#: The heatmaps a page shows per model: the paper's measure and the variant that drops the outlier tokens.
HEATMAPS = ("cka", "cka_no_outlier_tokens")


def latest(client, model: str, corpus: str, split: str | None = None, unit: str = "word") -> dict | None:
    """The latest finished robust-CKA run of (model, corpus[, split], unit) and its result; ``None`` if none.

    Returns
    -------
    dict or None
        ``model, mlflow_run_id, params`` (the run's MLflow params) and ``result`` (the
        logged ``result.json``: ``layers, tokens, k, ratio``, a matrix per variant,
        ``outliers`` and ``outlier_tokens`` per layer).
    """
    try:
        exp = client.get_experiment_by_name(tracking.experiment_name(model, corpus))
        found = [] if exp is None else client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`raydund.stage` = '{STAGE}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=50)
    except Exception:  # noqa: BLE001  (an unreachable store or a bad name: the page goes without the section)
        log.warning("robust-CKA runs of %s on %s could not be read from MLflow", model, corpus)
        return None
    for run in found:
        params = dict(run.data.params)
        if params.get("unit", "word") != unit or (split is not None and params.get("split") != split):
            continue
        try:
            path = client.download_artifacts(run.info.run_id, RESULT)
        except Exception:  # noqa: BLE001  (a run that logged no result)
            continue
        return {"model": model, "mlflow_run_id": run.info.run_id, "params": params,
                "result": json.loads(Path(path).read_text(encoding="utf-8"))}
    return None


def record(found: dict) -> dict:
    """A "Built from" record (:func:`raydund.report.sources.describe`'s form) of a robust-CKA run."""
    p = found["params"]
    snap = p.get("activations_snapshot_id")
    return {"stage": STAGE, "run_id": "", "mlflow_run_id": found["mlflow_run_id"],
            "snapshots": {"activations": int(snap)} if snap else {},
            "scope": {k: p[k] for k in ("split", "unit", "sampled_tokens", "seed", "ratio") if k in p}}


def massive_summary(found: dict) -> dict:
    """Layers with massive dimensions, the most in one layer, the dimensions (all layers), the tokens they fire on."""
    res = found["result"]
    outliers = {int(layer): dims for layer, dims in res["outliers"].items()}
    tokens = {int(layer): t for layer, t in res.get("outlier_tokens", {}).items()}
    return {"layers_with": sorted(layer for layer, dims in outliers.items() if dims),
            "most": max((len(d) for d in outliers.values()), default=0),
            "dimensions": sorted({d for dims in outliers.values() for d in dims}),
            "tokens": max((len(t) for t in tokens.values()), default=0)}


def section(rep: Report, found: dict[str, dict]) -> None:
    """Adjacent-layer similarity per variant, linear vs token-robust CKA heatmaps and the massive dimensions."""
    found = {m: f for m, f in found.items() if f}
    if not found:
        return
    rep.section("Layer similarity under massive activations (robust CKA)")
    rep.text("Decoder LLMs carry a few dimensions of huge magnitude on a few tokens; they dominate linear CKA, so "
             "adjacent layers can score ~1.00 whatever they compute. Each variant is computed on the same token "
             "sample (raydund robust-cka); a dimension is massive when its largest |x| is at least `ratio` x the "
             "layer's median |x|. The table counts adjacent layer pairs at or above 0.99 and gives each variant's "
             "mean over adjacent pairs.", "note")
    curves, maps = {}, {}
    for model, f in found.items():
        res = f["result"]
        curves[f"robust_adjacent_{model}"] = figures.adjacent_similarity(
            {TITLES.get(v, v): res[v] for v in TITLES if v in res}, f"{model}: layer l vs l + 1")
    for variant in HEATMAPS:
        for model, f in found.items():
            if variant in f["result"]:
                maps[f"robust_{variant}_{model}"] = figures.cka_heatmap(np.asarray(f["result"][variant], dtype=float),
                                                                        f"{model}: {TITLES[variant]}")
    rep.figures(curves)
    rep.figures(maps)
    body = []
    for model, f in found.items():
        s, res = massive_summary(f), f["result"]
        dims = ", ".join(map(str, s["dimensions"][:12])) + (" ..." if len(s["dimensions"]) > 12 else "")
        adjacent = {v: np.diagonal(np.asarray(res[v], dtype=float), 1) for v in TITLES if v in res}
        saturated = [f"{int((adjacent[v] >= 0.99).sum())} of {len(adjacent[v])}" if v in adjacent else None
                     for v in HEATMAPS]
        body.append([model, res["tokens"], f"{len(s['layers_with'])} of {len(res['layers'])}", s["most"],
                     dims or "-", s["tokens"], *saturated, *(float(np.mean(a)) for a in adjacent.values())])
    rep.raw(table(["model", "tokens", "layers with massive dims", "most in a layer", "dimensions",
                   "tokens they fire on (most)", *(f"pairs >= 0.99: {v}" for v in HEATMAPS),
                   *(f"mean {v}" for v in TITLES)], body))
