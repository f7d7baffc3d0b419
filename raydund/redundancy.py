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
import pyarrow as pa
import polars as pl

from pyiceberg.expressions import And, EqualTo

from raydund import memory, tracking
from raydund.cluster import DEFAULT_THRESHOLDS, SPANS, CorrelationClustering
from raydund.config import Settings
from raydund.errors import UserError
from raydund.lake import Lake
from raydund.report import figures
from raydund.stats.job import SimilarityConfig, compute_moments, layer_of
from raydund.stats.similarity import Similarity, similarity

log = logging.getLogger(__name__)

LAYER_SIMILARITY = "layer_similarity"
NEURON_CORRELATION = "neuron_correlation"
CLUSTERS = "clusters"
KEY = ("model", "corpus", "split", "unit")


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


def replace_in_batches(lake: Lake, name: str, batches, partitions: tuple[str, ...], where: dict,
                       properties: dict | None = None) -> int:
    """:meth:`Lake.replace` for data that arrives in batches: ONE Iceberg transaction that
    deletes the rows matching ``where`` and writes the batches one after the other (each
    becomes its own files as it comes), committed once at the end. Returns the snapshot id.
    """
    from raydund.lake import _conform, table_identifier  # noqa: PLC0415

    batches = iter(batches)
    first = next(batches)
    ident = table_identifier(name)
    lake._create_if_missing(ident, first.schema, partitions)
    tbl = lake.catalog.load_table(ident)
    if not set(tbl.schema().as_arrow().names) >= set(first.schema.names):
        with tbl.update_schema() as update:
            update.union_by_name(first.schema)
        tbl = lake.catalog.load_table(ident)
    conditions = [EqualTo(k, v) for k, v in where.items()]
    condition = conditions[0] if len(conditions) == 1 else And(*conditions)
    props = {k: str(v) for k, v in (properties or {}).items()}
    schema = tbl.schema().as_arrow()
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings(), tbl.transaction() as tx:
        warnings.filterwarnings("ignore", message="Delete operation did not match any records")
        tx.overwrite(_conform(first, schema), overwrite_filter=condition, snapshot_properties=props)
        del first
        for batch in batches:
            tx.append(_conform(batch, schema), snapshot_properties=props)
            del batch
    _release_arrow_memory()
    return lake.catalog.load_table(ident).current_snapshot().snapshot_id


def _release_arrow_memory() -> None:
    """Hand the Arrow memory pool's free pages back to the OS (its allocator keeps them otherwise)."""
    try:
        pa.default_memory_pool().release_unused()
    except AttributeError:  # pragma: no cover - old pyarrow
        pass


def run_similarity(cfg: SimilarityConfig, settings: Settings, progress: bool = True) -> dict:
    """The one-pass general-redundancy statistics for one (model, corpus, split)."""
    lake = Lake(settings)
    snapshot = lake.activations().current_snapshot()
    if snapshot is None:
        raise UserError("the lake holds no activations yet; run `raydund extract` first")
    params = {**dataclasses.asdict(cfg), "activations_snapshot_id": snapshot.snapshot_id}
    experiment = tracking.experiment_name(cfg.model, cfg.corpus)
    start = time.perf_counter()
    with tracking.job_run(settings, experiment, f"similarity {cfg.split}", params,
                          tags={"raydund.stage": "similarity"}) as run:
        moments = compute_moments(lake, cfg, progress)  # checks its memory plan before it starts
        sim = similarity(moments, inplace=True)  # G becomes r: one N x N float64 array in all
        del moments
        cka_table = cka_rows(sim, cfg)
        where = {"model": cfg.model, "corpus": cfg.corpus, "split": cfg.split, "unit": cfg.unit,
                 "variant": _variant(cfg)}
        props = {"mlflow.run_id": run.info.run_id}
        snap_cka = lake.replace(LAYER_SIMILARITY, cka_table, ("model", "corpus"), where, props)
        # r as float32 rows, batch by batch, in one commit: never a second N x N copy
        snap_r = replace_in_batches(lake, NEURON_CORRELATION, correlation_batches(sim, cfg),
                                    ("model", "corpus", "split"), where, props)
        mlflow = tracking.configure(settings)
        L = len(sim.widths)
        adjacent = [sim.cka[i, i + 1] for i in range(L - 1)]
        metrics = {
            "tokens": sim.n, "neurons": len(sim.constant), "layers": L, "constant_neurons": int(sim.constant.sum()),
            "cka_adjacent_mean": float(np.mean(adjacent)),
            "cka_debiased_adjacent_mean": float(np.mean([sim.cka_debiased[i, i + 1] for i in range(L - 1)])),
            "seconds": time.perf_counter() - start,
        }
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"iceberg.snapshot_id.layer_similarity": str(snap_cka),
                         "iceberg.snapshot_id.neuron_correlation": str(snap_r),
                         "iceberg.snapshot_id.activations": str(snapshot.snapshot_id)})
        for name, matrix in (("cka", sim.cka), ("cka_debiased", sim.cka_debiased)):
            fig = figures.cka_heatmap(matrix, f"{name.replace('_', ' ')}: {cfg.model}, {cfg.corpus}/{cfg.split}")
            mlflow.log_figure(fig, f"figures/{name}.png")
            figures.close(fig)
        mlflow.log_table(pl.from_arrow(cka_table).to_pandas(), artifact_file="tables/layer_similarity.json")
        if sim.constant.any():
            log.warning("%d constant neuron(s) are left out of the correlations", int(sim.constant.sum()))
    return {"run_id": run.info.run_id, "similarity": sim, **metrics}


def load_correlations(lake: Lake, model: str, corpus: str, split: str, unit: str = "word",
                      variant: str = "all", dtype=np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """r (N x N), layer of each neuron, constant mask, and the table's snapshot id.

    The rows are streamed from the table straight into one preallocated ``[N x N]`` array
    of ``dtype`` (float32, as stored, takes half the memory of float64 and loses nothing).
    """
    table = lake.table(NEURON_CORRELATION)
    snapshot = table.current_snapshot()
    meta = _correlation_meta(lake, model, corpus, split, unit, variant)
    N = meta.height
    r = np.empty((N, N), dtype=dtype)
    filled = np.zeros(N, dtype=bool)
    where = And(EqualTo("model", model), EqualTo("corpus", corpus), EqualTo("split", split), EqualTo("unit", unit),
                EqualTo("variant", variant))
    scan = table.scan(row_filter=where, selected_fields=("position", "r"),
                      snapshot_id=snapshot.snapshot_id if snapshot else None)
    for batch in scan.to_arrow_batch_reader():
        if batch.num_rows == 0:
            continue
        pos = batch.column("position").to_numpy()
        col = batch.column("r")
        values = col.flatten().to_numpy(zero_copy_only=False)
        if len(values) != batch.num_rows * N:
            raise UserError(f"neuron_correlation rows of {model} {corpus}/{split} are not {N} long; re-run similarity")
        r[pos] = values.reshape(batch.num_rows, N)
        filled[pos] = True
        del batch, col, values
    _release_arrow_memory()
    if not filled.all():
        raise UserError(f"neuron_correlation of {model} {corpus}/{split} misses {int((~filled).sum())} rows")
    return r, meta["layer"].to_numpy(), meta["constant"].to_numpy(), snapshot.snapshot_id


def _correlation_meta(lake: Lake, model: str, corpus: str, split: str, unit: str, variant: str) -> pl.DataFrame:
    """position, layer, constant of every neuron of one correlation matrix (small columns only)."""
    where = And(EqualTo("model", model), EqualTo("corpus", corpus), EqualTo("split", split), EqualTo("unit", unit),
                EqualTo("variant", variant))
    try:
        data = lake.table(NEURON_CORRELATION).scan(row_filter=where,
                                                   selected_fields=("position", "layer", "constant")).to_arrow()
    except UserError:
        data = None
    if data is None or data.num_rows == 0:
        raise UserError(f"no correlations for {model} {corpus}/{split}; run `raydund similarity` first")
    frame = pl.from_arrow(data).sort("position")
    if not np.array_equal(frame["position"].to_numpy(), np.arange(frame.height)):
        raise UserError(f"neuron_correlation of {model} {corpus}/{split} has gaps in its positions; re-run similarity")
    return frame


@dataclasses.dataclass
class ClusterConfig:
    """The clustering sweep."""

    model: str
    corpus: str
    split: str
    unit: str = "word"
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    representative: str = "random"
    seed: int = 0
    variant: str = "all"


def run_clustering(cfg: ClusterConfig, settings: Settings) -> CorrelationClustering:
    """Cluster the neurons at every threshold; lake table + MLflow parent/child runs."""
    lake = Lake(settings)
    meta = _correlation_meta(lake, cfg.model, cfg.corpus, cfg.split, cfg.unit, cfg.variant)
    memory.check(memory.clustering_plan(meta.height, int(meta["layer"].max()) + 1, len(cfg.thresholds)))
    # float32 as stored: the distances are built from it in float64, block by block
    r, layers, constant, snap = load_correlations(lake, cfg.model, cfg.corpus, cfg.split, cfg.unit, cfg.variant,
                                                  dtype=np.float32)
    params = {**dataclasses.asdict(cfg), "thresholds": ",".join(map(str, cfg.thresholds)),
              "neuron_correlation_snapshot_id": snap}
    mlflow = tracking.configure(settings)
    with tracking.job_run(settings, tracking.experiment_name(cfg.model, cfg.corpus), f"cluster sweep {cfg.split}",
                          params, tags={"raydund.stage": "cluster"}) as parent:
        cc = CorrelationClustering(tuple(cfg.thresholds), cfg.representative, cfg.seed).fit(r, layers, constant)
        for step, row in enumerate(cc.summary_):
            with mlflow.start_run(run_name=f"threshold={row['threshold']:.2f}", nested=True,
                                  experiment_id=parent.info.experiment_id):
                mlflow.log_params({"threshold": row["threshold"], "representative": cfg.representative,
                                   "seed": cfg.seed})
                mlflow.log_metrics(_metric_names(row))
            mlflow.log_metrics({f"sweep_{k}": v for k, v in _metric_names(row).items()}, step=step)
        table = clusters_table(cc, cfg, layers)
        where = {"model": cfg.model, "corpus": cfg.corpus, "split": cfg.split, "unit": cfg.unit,
                 "representative": cfg.representative, "seed": cfg.seed}
        snap_c = lake.replace(CLUSTERS, table, ("model", "corpus"), where, {"mlflow.run_id": parent.info.run_id})
        mlflow.set_tag("iceberg.snapshot_id.clusters", str(snap_c))
        for name, fig in (("cc_threshold_curve", figures.threshold_curve(cc.summary_, f"{cfg.model}, {cfg.corpus}")),
                          ("cc_composition", figures.composition_bars(cc.summary_, SPANS, f"{cfg.model}, {cfg.corpus}"))):
            mlflow.log_figure(fig, f"figures/{name}.png")
            figures.close(fig)
        mlflow.log_table(pl.DataFrame(cc.summary_).to_pandas(), artifact_file="tables/cc_sweep.json")
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
            "representative": [cfg.representative] * n, "seed": pa.array([cfg.seed] * n, pa.int32()),
            "threshold": pa.array([float(t)] * n, pa.float64()),
            "layer": layers[cc.neurons_].astype(np.int32), "neuron": within[cc.neurons_].astype(np.int32),
            "position": cc.neurons_.astype(np.int32), "cluster_id": labels.astype(np.int32), "kept": keep,
        }))
    return pa.concat_tables(parts)
