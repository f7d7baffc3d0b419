"""The neuron browser's driver: reads the lake through completed runs, writes the page, logs to MLflow.

``browser_data`` exports everything the page shows, bounded by :class:`BrowserConfig`
(top words and heatmaps of every neuron of every layer, clusters at every threshold of
ONE clustering run, each neuron's most correlated neurons from the similarity run it
read, every task's ranking from its latest probe run); ``build_browser`` renders it
with :mod:`raydund.explore.browser` (written whole or not at all) and logs the page as
an MLflow run of the (model, corpus) experiment.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import polars as pl

from raydund.errors import UserError
from raydund.explore import browser
from raydund.explore.queries import Slice, layers_of, sample_sentences
from raydund.explore.results import (
    CLUSTERS,
    CORRELATION,
    RANKINGS,
    cluster_rows,
    cluster_run,
    distinct_runs,
    ranking_runs,
    similarity_run,
)
from raydund.explore.statistics import MIN_SCORE, heat_levels, top_types, type_statistics
from raydund.lake import Lake, runs
from raydund.report import sources

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BrowserConfig:
    """What the neuron browser exports (bounded, so the page stays small).

    Attributes
    ----------
    top_k : int
        Top words kept per neuron.
    min_count, min_score : int, float
        Thresholds of :func:`select_top` (a type must be seen ``min_count`` times).
    sentences : int
        Sample sentences (seeded) with ``min_words..max_words`` words for the heatmaps.
    correlated : int
        Most correlated neurons listed per neuron.
    threshold : float
        Clustering threshold selected when the page opens.
    """

    top_k: int = 10
    min_count: int = 5
    min_score: float = MIN_SCORE
    sentences: int = 3
    min_words: int = 5
    max_words: int = 25
    correlated: int = 8
    threshold: float = 0.3
    seed: int = 0


def _top_lists(X: np.ndarray, words: Sequence[str], cfg: BrowserConfig, vocab: dict[str, int]) -> list[list]:
    types, counts, means, scores = type_statistics(X, words)
    out = []
    for j, best in enumerate(top_types(scores, counts, cfg.top_k, cfg.min_count, cfg.min_score)):
        out.append([[vocab.setdefault(str(types[t]), len(vocab)), round(float(scores[t, j]), 3),
                     round(float(means[t, j]), 3), int(counts[t])] for t in best])
    return out


def _cluster_export(lake: Lake, run: runs.Run | None, N: int, cfg: BrowserConfig) -> dict:
    """Cluster ids and representative flags at every threshold of ONE clustering run."""
    if run is None:
        return {"thresholds": [], "clusters": [], "kept": [], "default_threshold": 0}
    rows = cluster_rows(lake, run, ("threshold", "position", "cluster_id", "kept"))
    ts = sorted(rows["threshold"].unique().to_list())
    clusters, kept = [], []
    for t in ts:
        part = rows.filter(pl.col("threshold") == t)
        ids, flags = np.zeros(N, dtype=int), np.zeros(N, dtype=int)
        ids[part["position"].to_numpy()] = part["cluster_id"].to_numpy()
        flags[part["position"].to_numpy()] = part["kept"].cast(pl.Int8).to_numpy()
        clusters.append(ids.tolist())
        kept.append("".join(map(str, flags)))
    default = int(np.argmin([abs(t - cfg.threshold) for t in ts])) if ts else 0
    return {"thresholds": [round(float(t), 6) for t in ts], "clusters": clusters, "kept": kept,
            "default_threshold": default}


def _correlated(lake: Lake, run: runs.Run | None, N: int, k: int) -> list[list]:
    """Per position, its ``k`` most correlated neurons ``[position, r]`` from one similarity run."""
    if run is None or k <= 0:
        return []
    frame = sources.read(lake, run, CORRELATION, columns=("position", "r")).sort("position")
    if frame.height != N:
        log.info("browser without correlations: run %s has %d rows for %d neurons", run.run_id, frame.height, N)
        return []
    out = []
    for p, row in zip(frame["position"].to_list(), frame["r"].to_list()):
        r = np.nan_to_num(np.asarray(row, dtype=np.float64))
        r[p] = 0.0
        best = np.argsort(-np.abs(r), kind="stable")[:k]
        out.append([[int(b), round(float(r[b]), 3)] for b in best if r[b] != 0])
    return out


def _rank_export(lake: Lake, probes: dict[str, runs.Run], offsets: np.ndarray, N: int) -> list[dict]:
    """Per (task, ranker) of each task's probe run, the rank of every position (0: not ranked)."""
    out = []
    for task, run in probes.items():
        ranks = sources.read(lake, run, RANKINGS, {"task": task}, ("task", "ranker", "rank", "layer", "neuron"))
        for (ranker,), part in ranks.group_by("ranker", maintain_order=True):
            by_position = np.zeros(N, dtype=int)
            by_position[offsets[part["layer"].to_numpy()] + part["neuron"].to_numpy()] = part["rank"].to_numpy()
            out.append({"task": task, "ranker": ranker, "ranked": part.height, "rank": by_position.tolist()})
    return sorted(out, key=lambda d: (d["task"], d["ranker"]))


def browser_runs(lake: Lake, where: Slice, variant: str = "all", representative: str | None = None,
                 cluster_seed: int | None = None) -> tuple[runs.Run | None, runs.Run | None, dict[str, runs.Run]]:
    """The runs a browser page reads: clustering, the similarity run it read, each task's probe run.

    A missing clustering or similarity run is ``None`` (the page says so), unless a
    representative rule or seed was asked for: then there must be one.
    """
    cluster = sim = None
    try:
        cluster = cluster_run(lake, where, variant, representative, cluster_seed)
    except UserError as exc:
        if representative is not None or cluster_seed is not None:
            raise
        log.info("browser without clusters: %s", exc)
    try:
        sim = similarity_run(lake, where, variant, cluster)
    except UserError as exc:
        log.info("browser without correlations: %s", exc)
    return cluster, sim, ranking_runs(lake, where.model, where.corpus, where.unit)


def browser_data(lake: Lake, model: str, corpus: str, split: str = "dev", unit: str = "word",
                 cfg: BrowserConfig | None = None, *, variant: str = "all", representative: str | None = None,
                 cluster_seed: int | None = None) -> dict:
    """Everything the neuron browser shows, for every neuron of every layer (layout: :mod:`raydund.explore.browser`).

    Result tables are read only through completed runs (:func:`browser_runs`): clusters
    from ONE clustering run of (split, unit, variant[, representative, seed]), r from the
    similarity run it read, rankings from each task's latest probe run; ``sources``
    names each run and the snapshot it was read at.
    """
    cfg = cfg or BrowserConfig()
    where = Slice(model, corpus, split, unit)
    cluster, sim, probes = browser_runs(lake, where, variant, representative, cluster_seed)
    layers = layers_of(lake, where)
    sample = sample_sentences(lake, where, cfg.sentences, cfg.min_words, cfg.max_words, cfg.seed)
    vocab: dict[str, int] = {}
    top, widths = [], []
    heat = {sid: ([], [], None) for sid in sample}
    for layer in layers:
        X, keys = lake.layer_matrix(model, corpus, split, layer, unit)
        words = keys.column("word").to_pylist()
        top.append(_top_lists(X, words, cfg, vocab))
        widths.append(int(X.shape[1]))
        sids = keys.column("sentence_id").to_numpy()
        for sid in sample:
            rows = np.flatnonzero(sids == sid)
            q, peak = heat_levels(X[rows].T.astype(np.float64))
            heat[sid][0].append(q)
            heat[sid][1].append(peak)
            if heat[sid][2] is None:
                heat[sid] = (heat[sid][0], heat[sid][1], [w if w is not None else "" for w in np.asarray(words)[rows]])
        log.info("browser: layer %d exported", layer)
    offsets = np.concatenate([[0], np.cumsum(widths)])
    N = int(offsets[-1])
    return {
        "model": model, "corpus": corpus, "split": split, "unit": unit, "widths": widths,
        "min_count": cfg.min_count, "top_k": cfg.top_k, "vocab": sorted(vocab, key=vocab.get), "top": top,
        "sentences": [{"id": int(sid), "words": heat[sid][2], "heat": heat[sid][0], "peak": heat[sid][1]}
                      for sid in sample],
        **_cluster_export(lake, cluster, N, cfg),
        "correlated": _correlated(lake, sim, N, cfg.correlated),
        "rankings": _rank_export(lake, probes, offsets, N),
        "variant": variant, "sources": _browser_sources(cluster, sim, probes),
    }


def _browser_sources(cluster: runs.Run | None, sim: runs.Run | None, probes: dict[str, runs.Run]) -> list[dict]:
    """:func:`raydund.report.sources.describe` of every run a browser page read."""
    used = [] if cluster is None else [sources.describe(cluster, [CLUSTERS])]
    used += [] if sim is None else [sources.describe(sim, [CORRELATION])]
    return used + [sources.describe(run, [RANKINGS]) for run in distinct_runs(probes.values())]


def build_browser(settings, model: str, corpus: str, split: str = "dev", unit: str = "word",
                  cfg: BrowserConfig | None = None, track: bool = True, *, variant: str = "all",
                  representative: str | None = None, cluster_seed: int | None = None):
    """Write the neuron browser to ``report_dir(model, corpus)/browser/index.html``; log it to MLflow.

    The runs it reads (see :func:`browser_data`) are on the page and in the MLflow params.

    Returns
    -------
    pathlib.Path
        The page.
    """
    from raydund import tracking

    cfg = cfg or BrowserConfig()
    lake = Lake(settings)
    data = browser_data(lake, model, corpus, split, unit, cfg, variant=variant, representative=representative,
                        cluster_seed=cluster_seed)
    page = browser.write(data, settings.report_dir(model, corpus) / "browser")
    log.info("neuron browser written to %s (%.1f MB)", page, page.stat().st_size / 1e6)
    if track:
        params = {**dataclasses.asdict(cfg), "model": model, "corpus": corpus, "split": split, "unit": unit,
                  "activations_snapshot_id": lake.activations().current_snapshot().snapshot_id,
                  **{f"{src['stage']}_run_id": src["run_id"] for src in data["sources"] if src["stage"] != "probes"}}
        with tracking.job_run(settings, tracking.experiment_name(model, corpus), f"neuron browser {split}", params,
                              tags={"raydund.stage": "browser"}):
            mlflow = tracking.configure(settings)
            mlflow.log_metrics({"neurons": sum(data["widths"]), "page_bytes": page.stat().st_size})
            mlflow.log_artifacts(str(page.parent), artifact_path="browser")
    return page


__all__ = ["BrowserConfig", "browser_data", "browser_runs", "build_browser"]
