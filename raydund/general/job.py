"""General redundancy (paper section 5): the similarity pass and the clustering sweep as jobs.

``run_similarity``: activations -> streamed moments (Ray tasks) -> Pearson r of every
neuron pair and biased/debiased CKA of every layer pair -> lake tables
``layer_similarity`` and ``neuron_correlation`` -> one MLflow run with the heatmaps.

``run_clustering``: ``neuron_correlation`` -> average linkage on 1 - |r|, cut at every
threshold -> lake table ``clusters`` -> an MLflow parent run with one child per threshold.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import polars as pl
import pyarrow as pa

from raydund import memory, tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.general.clustering import DEFAULT_THRESHOLDS, SPANS, CorrelationClustering
from raydund.general.similarity import Similarity, similarity
from raydund.general.stream import SimilarityConfig, compute_moments, layer_of
from raydund.lake import ACTIVATIONS, Lake, runs
from raydund.lake.commit import _release_arrow_memory
from raydund.lake.runs import StageRun
from raydund.report import figures

log = logging.getLogger(__name__)

LAYER_SIMILARITY = "layer_similarity"
NEURON_CORRELATION = "neuron_correlation"
CLUSTERS = "clusters"


def _variant(cfg: SimilarityConfig) -> str:
    return "no_first" if cfg.skip_first else "all"


def similarity_tables(sim: Similarity, cfg: SimilarityConfig, rows_per_batch: int | None = None
                      ) -> tuple[pa.Table, pa.Table]:
    """The CKA matrices (long: one row per layer pair and estimator) and r (one row per neuron).

    r is stored as float32. With ``rows_per_batch`` the r table is one of the batches of
    :func:`correlation_batches` (the whole of it by default).
    """
    cka_table = cka_rows(sim, cfg)
    N = len(sim.constant)
    batches = list(correlation_batches(sim, cfg, rows_per_batch or N))
    return cka_table, pa.concat_tables(batches)


def cka_rows(sim: Similarity, cfg: SimilarityConfig) -> pa.Table:
    """The CKA matrices, long: one row per layer pair and estimator."""
    L = len(sim.widths)
    a, b = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    key = {"model": cfg.model, "corpus": cfg.corpus, "split": cfg.split, "unit": cfg.unit, "variant": _variant(cfg)}
    rows = []
    for name, matrix in (("cka", sim.cka), ("cka_debiased", sim.cka_debiased)):
        rows.append(pa.table({**{k: [v] * L * L for k, v in key.items()}, "measure": [name] * L * L,
                              "layer_a": a.ravel().astype(np.int32), "layer_b": b.ravel().astype(np.int32),
                              "value": matrix.ravel()}))
    return pa.concat_tables(rows)


def correlation_batches(sim: Similarity, cfg: SimilarityConfig, rows_per_batch: int = 1024):
    """The ``neuron_correlation`` rows, ``rows_per_batch`` neurons at a time (r as float32).

    Only one batch of float32 rows exists at a time: r (N x N float64) is converted as
    the batches are written.
    """
    N = len(sim.constant)
    layers = layer_of(sim.widths).astype(np.int32)
    index = np.concatenate([np.arange(w) for w in sim.widths]).astype(np.int32)
    key = {"model": cfg.model, "corpus": cfg.corpus, "split": cfg.split, "unit": cfg.unit, "variant": _variant(cfg)}
    for a in range(0, N, max(1, rows_per_batch)):
        b = min(N, a + rows_per_batch)
        r32 = np.ascontiguousarray(sim.r[a:b], dtype=np.float32)
        r_col = pa.ListArray.from_arrays(pa.array(np.arange(0, (b - a + 1) * N, N, dtype=np.int32)),
                                         pa.array(r32.ravel()))
        yield pa.table({**{k: [v] * (b - a) for k, v in key.items()}, "layer": layers[a:b], "neuron": index[a:b],
                        "position": np.arange(a, b, dtype=np.int32), "mean": sim.mean[a:b], "std": sim.std[a:b],
                        "constant": sim.constant[a:b], "r": r_col})


def run_similarity(cfg: SimilarityConfig, settings: Settings, progress: bool = True) -> dict:
    """The one-pass general-redundancy statistics for one (model, corpus, split).

    Writes ``layer_similarity`` and ``neuron_correlation`` for exactly (model, corpus,
    split, unit, variant), then the run row that makes both visible to readers at once.
    """
    lake = Lake(settings)
    snapshot = lake.activations().current_snapshot()
    if snapshot is None:
        raise UserError("the lake holds no activations yet; run `raydund extract` first")
    lake.activation_files(cfg.model, cfg.corpus, cfg.split, cfg.unit)  # a split without rows: no run, no write
    if use_tiles(lake, cfg):
        from raydund.general.tiles_job import run_tiled_similarity

        return run_tiled_similarity(cfg, settings, progress)
    params = {**dataclasses.asdict(cfg), "activations_snapshot_id": snapshot.snapshot_id}
    experiment = tracking.experiment_name(cfg.model, cfg.corpus)
    start = time.perf_counter()
    with tracking.job_run(settings, experiment, f"similarity {cfg.split}", params,
                          tags={"raydund.stage": "similarity"}) as run:
        moments = compute_moments(lake, cfg, progress)  # checks its memory plan before it starts
        sim = similarity(moments, inplace=True)  # G becomes r: one N x N float64 array in all
        del moments
        cka_table = cka_rows(sim, cfg)
        stage = StageRun(lake, "similarity", cfg.model, cfg.corpus,
                         {"split": cfg.split, "unit": cfg.unit, "variant": _variant(cfg)},
                         inputs={ACTIVATIONS: snapshot.snapshot_id})
        props = {"mlflow.run_id": run.info.run_id}
        stage.replace(LAYER_SIMILARITY, cka_table, ("model", "corpus"), props)
        # r as float32 rows, batch by batch, in one commit: never a second N x N copy
        stage.replace_in_batches(NEURON_CORRELATION, correlation_batches(sim, cfg), ("model", "corpus", "split"),
                                 props)
        stage.complete(run.info.run_id)
        # the lake holds the result now: tracking failures from here on are spooled, never raised
        L = len(sim.widths)
        adjacent = [sim.cka[i, i + 1] for i in range(L - 1)]
        metrics = {
            "tokens": sim.n, "neurons": len(sim.constant), "layers": L, "constant_neurons": int(sim.constant.sum()),
            "cka_adjacent_mean": float(np.mean(adjacent)),
            "cka_debiased_adjacent_mean": float(np.mean([sim.cka_debiased[i, i + 1] for i in range(L - 1)])),
            "seconds": time.perf_counter() - start,
        }
        track = tracking.Tracker(settings, run.info.run_id)
        track.metrics(metrics)
        track.tags({**stage.tags(), "iceberg.snapshot_id.activations": str(snapshot.snapshot_id)})
        for name, matrix in (("cka", sim.cka), ("cka_debiased", sim.cka_debiased)):
            title = f"{name.replace('_', ' ')}: {cfg.model}, {cfg.corpus}/{cfg.split}"
            track.figure(figures.cka_heatmap(matrix, title),
                         f"figures/{name}.png")
        track.json(pl.from_arrow(cka_table).to_dicts(), "tables/layer_similarity.json")
        if sim.constant.any():
            log.warning("%d constant neuron(s) are left out of the correlations", int(sim.constant.sum()))
    return {"run_id": run.info.run_id, "raydund_run_id": stage.run_id, "similarity": sim, **metrics}


def use_tiles(lake: Lake, cfg: SimilarityConfig) -> bool:
    """Whether the pass runs in tiles: ``cfg.tiles`` on, or auto and N x N does not fit the memory plan."""
    if cfg.tiles not in ("auto", "on", "off"):
        raise UserError(f"--tiles must be auto, on or off, not {cfg.tiles!r}")
    if cfg.tiles != "auto":
        return cfg.tiles == "on"
    tokens, widths = memory.activation_shape(lake, cfg.model, cfg.corpus, cfg.split, cfg.unit)
    return not memory.similarity_fits(sum(widths), len(widths), tokens)


def correlation_run(lake: Lake, model: str, corpus: str, split: str, unit: str = "word", variant: str = "all"):
    """The latest completed similarity run of (model, corpus, split, unit, variant), in memory or in
    tiles (:func:`raydund.general.tile_reads.is_tiled`); a clear error if none."""
    want = {"split": split, "unit": unit, "variant": variant}
    found = [runs.latest(lake, "similarity", model, corpus, table, **want)
             for table in (NEURON_CORRELATION, "neuron_correlation_tiles")]  # in memory, or in tiles
    found = [r for r in found if r is not None]
    run = max(found, key=lambda r: r.finished_ms) if found else None
    if run is None:
        raise UserError(f"no correlations for {model} {corpus}/{split} ({unit}, {variant}); "
                        "run `raydund similarity` first")
    return run


def load_correlations(lake: Lake, model: str, corpus: str, split: str, unit: str = "word",
                      variant: str = "all", dtype=np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """r (N x N), layer of each neuron, constant mask, and the snapshot id it was read at.

    Read from the latest completed similarity run (:mod:`raydund.lake.runs`), at the snapshot
    that run committed: a half-written re-run is never seen (:func:`read_correlations`).
    """
    return read_correlations(lake, correlation_run(lake, model, corpus, split, unit, variant), dtype=dtype)


def read_correlations(lake: Lake, run: runs.Run, meta: pl.DataFrame | None = None, dtype=np.float64
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The correlations one similarity run wrote: r (N x N), layer of each neuron, constant mask, snapshot id.

    The rows are streamed from the table straight into one preallocated ``[N x N]`` array
    of ``dtype`` (float32, as stored, takes half the memory of float64 and loses nothing).
    ``meta`` (:func:`_correlation_meta` of the same run) saves reading it again. A tiled run's
    r is assembled from its tiles (when the memory plan says it fits).
    """
    from raydund.general import tile_reads

    if tile_reads.is_tiled(run):  # a tiled run: r assembled from its tiles (only where N x N fits)
        stats = tile_reads.neuron_statistics(lake, run)
        memory.check(memory.clustering_plan(stats.height, int(stats["layer"].max()) + 1, 0))
        r = tile_reads.assemble(tile_reads.tile_index(lake, run), dtype=dtype)
        return (r, stats["layer"].to_numpy(), stats["constant"].to_numpy(),
                run.snapshot(tile_reads.NEURON_CORRELATION_TILES))
    meta = _correlation_meta(lake, run) if meta is None else meta
    where = f"{run.model} {run.corpus}/{run.scope.get('split')}"
    N = meta.height
    r = np.empty((N, N), dtype=dtype)
    filled = np.zeros(N, dtype=bool)
    for batch in runs.read(lake, run, NEURON_CORRELATION, selected_fields=("position", "r")).to_arrow_batch_reader():
        if batch.num_rows == 0:
            continue
        pos = batch.column("position").to_numpy()
        col = batch.column("r")
        values = col.flatten().to_numpy(zero_copy_only=False)
        if len(values) != batch.num_rows * N:
            raise UserError(f"neuron_correlation rows of {where} are not {N} long; re-run similarity")
        r[pos] = values.reshape(batch.num_rows, N)
        filled[pos] = True
        del batch, col, values
    _release_arrow_memory()
    if not filled.all():
        raise UserError(f"neuron_correlation of {where} misses {int((~filled).sum())} rows")
    return r, meta["layer"].to_numpy(), meta["constant"].to_numpy(), run.snapshot(NEURON_CORRELATION)


def _correlation_meta(lake: Lake, run: runs.Run) -> pl.DataFrame:
    """position, layer, constant of every neuron of one correlation matrix (small columns only)."""
    data = runs.read(lake, run, NEURON_CORRELATION, selected_fields=("position", "layer", "constant")).to_arrow()
    frame = pl.from_arrow(data).sort("position")
    if frame.height == 0 or not np.array_equal(frame["position"].to_numpy(), np.arange(frame.height)):
        raise UserError(f"neuron_correlation of run {run.run_id} has gaps in its positions; re-run similarity")
    return frame


@dataclasses.dataclass
class ClusterConfig:
    """The clustering sweep.

    Attributes
    ----------
    out_of_core : {"auto", "on", "off"}
        For a tiled similarity run: ``auto`` clusters in memory (exact) when the memory plan
        says the condensed matrix fits, else out of core (:mod:`raydund.general.sparse_cluster`).
    max_exact : int, optional
        Out of core: the most neurons (or clusters) linked exactly at once (default from the
        memory plan).
    graph_bound : float, optional
        Out of core: the sparse graph keeps the pairs with |r| at or above it (default half
        of 1 - the largest threshold, not below the noise 4 / sqrt(tokens); lower: more
        memory, a closer approximation).
    """

    model: str
    corpus: str
    split: str
    unit: str = "word"
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    representative: str = "random"
    seed: int = 0
    variant: str = "all"
    out_of_core: str = "auto"
    max_exact: int | None = None
    graph_bound: float | None = None


def run_clustering(cfg: ClusterConfig, settings: Settings) -> CorrelationClustering:
    """Cluster the neurons at every threshold; lake table + MLflow parent/child runs.

    Replaces ``clusters`` for exactly (model, corpus, split, unit, variant, representative,
    seed), read from the latest completed similarity run of that slice.
    """
    lake = Lake(settings)
    source = correlation_run(lake, cfg.model, cfg.corpus, cfg.split, cfg.unit, cfg.variant)
    from raydund.general.tile_reads import is_tiled

    if is_tiled(source):  # in tiles: exact in memory when it fits, else out of core (general.sparse_cluster)
        from raydund.general.tiles_job import tiled_clustering

        fit, layers, snap = tiled_clustering(lake, source, cfg)
    else:
        meta = _correlation_meta(lake, source)
        memory.check(memory.clustering_plan(meta.height, int(meta["layer"].max()) + 1, len(cfg.thresholds)))
        # float32 as stored: the distances are built from it in float64, block by block
        r, layers, constant, snap = read_correlations(lake, source, meta, dtype=np.float32)

        def fit():
            return CorrelationClustering(tuple(cfg.thresholds), cfg.representative, cfg.seed).fit(r, layers, constant)
    params = {**dataclasses.asdict(cfg), "thresholds": ",".join(map(str, cfg.thresholds)),
              "neuron_correlation_snapshot_id": snap, "similarity_run_id": source.run_id}
    with tracking.job_run(settings, tracking.experiment_name(cfg.model, cfg.corpus), f"cluster sweep {cfg.split}",
                          params, tags={"raydund.stage": "cluster"}) as parent:
        cc = fit()
        stage = StageRun(lake, "cluster", cfg.model, cfg.corpus,
                         {"split": cfg.split, "unit": cfg.unit, "variant": cfg.variant,
                          "representative": cfg.representative, "seed": cfg.seed},
                         inputs={NEURON_CORRELATION: snap, "similarity_run": source.run_id})
        stage.replace(CLUSTERS, clusters_table(cc, cfg, layers), ("model", "corpus"),
                      {"mlflow.run_id": parent.info.run_id})
        stage.complete(parent.info.run_id)
        track = tracking.Tracker(settings, parent.info.run_id)
        track.tags(stage.tags())
        for step, row in enumerate(cc.summary_):
            track.child(f"threshold={row['threshold']:.2f}",
                        {"threshold": row["threshold"], "representative": cfg.representative, "seed": cfg.seed},
                        _metric_names(row))
            track.metrics({f"sweep_{k}": v for k, v in _metric_names(row).items()}, step=step)
        title = f"{cfg.model}, {cfg.corpus}"
        track.figure(figures.threshold_curve(cc.summary_, title), "figures/cc_threshold_curve.png")
        track.figure(figures.composition_bars(cc.summary_, SPANS, title), "figures/cc_composition.png")
        track.json(cc.summary_, "tables/cc_sweep.json")
    return cc


def _metric_names(row: dict) -> dict:
    return {"clusters": row["clusters"], "neurons_kept": row["neurons_kept"], "reduction": row["reduction"],
            **{f"span_{k.replace(' ', '_')}": v for k, v in row.items() if k in SPANS}}


def clusters_table(cc: CorrelationClustering, cfg: ClusterConfig, layers: np.ndarray) -> pa.Table:
    """One row per (threshold, clustered neuron): layer, index in layer, cluster id, representative flag."""
    n = len(cc.neurons_)
    within = np.concatenate([np.arange(np.sum(layers == l)) for l in np.unique(layers)])
    parts = []
    for t, labels, keep in zip(cc.thresholds, cc.labels_, cc.keep_):
        parts.append(pa.table({
            "model": [cfg.model] * n, "corpus": [cfg.corpus] * n, "split": [cfg.split] * n, "unit": [cfg.unit] * n,
            "variant": [cfg.variant] * n, "representative": [cfg.representative] * n,
            "seed": pa.array([cfg.seed] * n, pa.int32()),
            "threshold": pa.array([float(t)] * n, pa.float64()),
            "layer": layers[cc.neurons_].astype(np.int32), "neuron": within[cc.neurons_].astype(np.int32),
            "position": cc.neurons_.astype(np.int32), "cluster_id": labels.astype(np.int32), "kept": keep,
        }))
    return pa.concat_tables(parts)
