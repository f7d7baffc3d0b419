"""The tiled similarity pass as a job: Ray tile tasks, tiles in the warehouse, one lake commit at the end.

``compute_tiles`` runs (or resumes) a tile generation under
``<warehouse>/tiles/<model>/<key>``; ``run_tiled_similarity`` commits, through one
:class:`~raydund.lake.runs.StageRun`, ``layer_similarity`` (exact CKA from the tiles' sums),
``neuron_statistics`` (one row per neuron) and ``neuron_correlation_tiles`` (one row per
tile file: block ids, neuron ranges, ``max |r|``, path), replacing exactly this run's
scope. Readers (:mod:`raydund.general.tile_reads`) filter that small table to skip tiles.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pyarrow as pa

from raydund import memory, tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.general import tiles as T
from raydund.general.similarity import Similarity
from raydund.general.stream import SimilarityConfig, first_mean, iter_slice, layer_of, slice_tokens, slices_of
from raydund.lake import ACTIVATIONS, Lake
from raydund.lake.names import NEURON_CORRELATION_TILES, TILES_FOLDER
from raydund.lake.runs import StageRun

log = logging.getLogger(__name__)

NEURON_STATISTICS = "neuron_statistics"


@dataclasses.dataclass
class TileResult:
    """What a tile generation holds, on the driver (all O(N) or O(tiles))."""

    root: str
    widths: tuple[int, ...]
    block: int
    records: list[dict]
    extras: dict
    stats: dict
    computed: int
    seconds: dict


def tile_root(settings: Settings, cfg: SimilarityConfig, snapshot_id: int, block: int) -> str:
    key = T.tile_key({"model": cfg.model, "corpus": cfg.corpus, "split": cfg.split, "unit": cfg.unit,
                      "skip_first": cfg.skip_first, "activations": snapshot_id, "block": block})
    return f"{settings.warehouse.rstrip('/')}/{TILES_FOLDER}/{cfg.model}/{cfg.corpus}-{cfg.split}-{key}"


def compute_tiles(lake: Lake, cfg: SimilarityConfig, settings: Settings, snapshot_id: int,
                  block: int | None = None, progress: bool = True) -> TileResult:
    """Run every missing tile of this (activations, block) generation as Ray tasks; return all records."""
    import ray
    from tqdm import tqdm

    from raydund.extract.job import ensure_ray

    ensure_ray()
    slices = slices_of(lake.activation_files(cfg.model, cfg.corpus, cfg.split, cfg.unit))
    widths = tuple(int(m.shape[1]) for m in next(iter_slice(slices[0], 1)))
    N, L = sum(widths), len(widths)
    tokens = slice_tokens(slices)
    cpus = max(1, int(cfg.cpus_per_task or 1))
    tasks = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
    block = int(block or cfg.tile_neurons or memory.choose_tile_block(N, L, tokens, tasks, max(widths)))
    memory.check(memory.tiled_similarity_plan(N, L, tokens, block, tasks, max(widths), cfg.chunk_rows))
    root = tile_root(settings, cfg, snapshot_id, block)
    fs, path = T.pafs.FileSystem.from_uri(root)
    fs.create_dir(f"{path}/{T.DONE}", recursive=True)
    seconds = {}
    start = time.perf_counter()
    ex = T.load_extras(root)
    if ex is None:  # the shift and every neuron's sums: one O(T N) task
        shift = first_mean(slices[0], cfg.chunk_rows, cfg.skip_first)
        ex = ray.get(ray.remote(num_cpus=cpus)(T.extras_task).remote(slices, shift, cfg.skip_first))
        ex["shift"] = shift
        T.save_extras(root, ex)  # written once: every tile of the generation uses this shift
    T.check_widths(widths, ex)
    if ex["n"] < 4:
        raise UserError(f"only {ex['n']} tokens: too few for correlations and debiased CKA")
    seconds["extras"] = time.perf_counter() - start
    stats = T.global_statistics(ex, widths)
    inp = T.TileInputs(root, widths, ex["shift"], ex["n"], ex["s"], stats["sd"], cfg.skip_first, cfg.chunk_rows,
                       cfg.device)
    blocks = T.blocks_of(N, block)
    pairs = T.tile_pairs(len(blocks))
    done = T.finished_tiles(root)
    todo = [p for p in pairs if p not in done]
    log.info("tiles: %d x %d neurons in %d tiles of %d; %d finished, %d to run", N, N, len(pairs), block,
             len(done), len(todo))
    task = ray.remote(num_cpus=cpus, num_gpus=cfg.num_gpus)(T.tile_task)
    inp_ref, slices_ref = ray.put(inp), ray.put(slices)
    running, cursor = [], 0
    start = time.perf_counter()
    with tqdm(total=len(todo), desc=f"tiles {cfg.corpus}/{cfg.split}", unit="tile", disable=not progress) as bar:
        while cursor < len(todo) or running:
            while cursor < len(todo) and len(running) < tasks:  # at most `tasks` tiles in memory at once
                i, j = todo[cursor]
                running.append(task.remote(slices_ref, inp_ref, i, j, blocks[i], blocks[j], cpus))
                cursor += 1
            ready, running = ray.wait(running, num_returns=1)
            rec = ray.get(ready[0])
            done[(rec["row"], rec["col"])] = rec
            bar.update(1)
    seconds["tiles"] = time.perf_counter() - start
    return TileResult(root, widths, block, [done[p] for p in pairs], ex, stats, len(todo), seconds)


def tile_index(res: TileResult, key: dict) -> pa.Table:
    """One row per tile file: the ``neuron_correlation_tiles`` rows."""
    off = np.concatenate([[0], np.cumsum(res.widths)])
    layer = layer_of(res.widths)
    recs = res.records
    cols = {k: [v] * len(recs) for k, v in key.items()}
    for name in ("row", "col", "row_start", "row_stop", "col_start", "col_stop"):
        cols[name if name not in ("row", "col") else f"{name}_block"] = pa.array([r[name] for r in recs], pa.int32())
    cols["row_layer_min"] = pa.array([layer[r["row_start"]] for r in recs], pa.int32())
    cols["row_layer_max"] = pa.array([layer[r["row_stop"] - 1] for r in recs], pa.int32())
    cols["col_layer_min"] = pa.array([layer[r["col_start"]] for r in recs], pa.int32())
    cols["col_layer_max"] = pa.array([layer[r["col_stop"] - 1] for r in recs], pa.int32())
    cols["max_abs_r"] = pa.array([r["max_abs_r"] for r in recs], pa.float64())
    cols["sum_abs_r"] = pa.array([r["sum_abs_r"] for r in recs], pa.float64())
    cols["pairs"] = pa.array([r["pairs"] for r in recs], pa.int64())
    cols["path"] = pa.array([r["path"] for r in recs], pa.string())
    del off
    return pa.table(cols)


def statistics_table(res: TileResult, key: dict) -> pa.Table:
    """One row per neuron: layer, index in layer, position, mean, std, constant."""
    N = sum(res.widths)
    n = res.extras["n"]
    return pa.table({**{k: [v] * N for k, v in key.items()},
                     "layer": layer_of(res.widths).astype(np.int32),
                     "neuron": np.concatenate([np.arange(w) for w in res.widths]).astype(np.int32),
                     "position": np.arange(N, dtype=np.int32),
                     "mean": res.extras["shift"] + res.extras["s"] / n,
                     "std": np.sqrt(np.clip(res.stats["var"], 0, None) / max(n - 1, 1)),
                     "constant": res.stats["constant"]})


def tile_costs(records: list[dict]) -> dict:
    """Mean seconds per tile task and of its products, over the tiles this run computed (resumed ones have none)."""
    ran = [r for r in records if "seconds" in r]
    if not ran:
        return {}
    return {"tile_seconds_mean": float(np.mean([r["seconds"] for r in ran])),
            "tile_product_seconds_mean": float(np.mean([r["product_seconds"] for r in ran]))}


def run_tiled_similarity(cfg: SimilarityConfig, settings: Settings, progress: bool = True) -> dict:
    """The similarity pass in tiles: never N x N in a process; resumes a killed generation by tile."""
    from raydund.general.job import LAYER_SIMILARITY, _variant, cka_rows

    lake = Lake(settings)
    snapshot = lake.activations().current_snapshot()
    if snapshot is None:
        raise UserError("the lake holds no activations yet; run `raydund extract` first")
    params = {**dataclasses.asdict(cfg), "activations_snapshot_id": snapshot.snapshot_id, "tiled": True}
    start = time.perf_counter()
    with tracking.job_run(settings, tracking.experiment_name(cfg.model, cfg.corpus), f"similarity {cfg.split}",
                          params, tags={"raydund.stage": "similarity"}) as run:
        res = compute_tiles(lake, cfg, settings, snapshot.snapshot_id, progress=progress)
        cka, debiased = T.layer_cka(res.records, res.extras, res.stats["var"], res.widths)
        ex, st = res.extras, res.stats
        sim = Similarity(r=None, cka=cka, cka_debiased=debiased, constant=st["constant"],
                         mean=ex["shift"] + ex["s"] / ex["n"],
                         std=np.sqrt(np.clip(st["var"], 0, None) / max(ex["n"] - 1, 1)), n=ex["n"], widths=res.widths)
        key = {"model": cfg.model, "corpus": cfg.corpus, "split": cfg.split, "unit": cfg.unit,
               "variant": _variant(cfg)}
        stage = StageRun(lake, "similarity", cfg.model, cfg.corpus,
                         {"split": cfg.split, "unit": cfg.unit, "variant": _variant(cfg)},
                         inputs={ACTIVATIONS: snapshot.snapshot_id})
        props = {"mlflow.run_id": run.info.run_id, "raydund.tiles": res.root}
        stage.replace(LAYER_SIMILARITY, cka_rows(sim, cfg), ("model", "corpus"), props)
        stage.replace(NEURON_STATISTICS, statistics_table(res, key), ("model", "corpus", "split"), props)
        stage.replace(NEURON_CORRELATION_TILES, tile_index(res, key), ("model", "corpus", "split"), props)
        stage.complete(run.info.run_id)
        L = len(res.widths)
        metrics = {"tokens": ex["n"], "neurons": sum(res.widths), "layers": L,
                   "constant_neurons": int(st["constant"].sum()),
                   "cka_adjacent_mean": float(np.mean([cka[i, i + 1] for i in range(L - 1)])) if L > 1 else 1.0,
                   "cka_debiased_adjacent_mean":
                       float(np.mean([debiased[i, i + 1] for i in range(L - 1)])) if L > 1 else 1.0,
                   "tiles": len(res.records), "tiles_computed": res.computed, "tile_neurons": res.block,
                   **{f"seconds_{k}": v for k, v in res.seconds.items()}, **tile_costs(res.records),
                   "seconds": time.perf_counter() - start}
        tracking.Tracker(settings, run.info.run_id).metrics(metrics)
    return {"run_id": run.info.run_id, "raydund_run_id": stage.run_id, "similarity": sim, "tile_result": res, **metrics}


def tiled_clustering(lake: Lake, run, cfg):
    """The clustering of a tiled similarity run: ``(fit, layers, snapshot)``; ``fit()`` returns the result.

    Exact in memory (r assembled from the tiles, the in-memory class: the same result as an
    untiled run) when the memory plan says the condensed matrix fits or ``cfg.out_of_core``
    is ``off``; otherwise :class:`~raydund.general.sparse_cluster.OutOfCoreClustering`.
    """
    from raydund.general import tile_reads
    from raydund.general.clustering import CorrelationClustering
    from raydund.general.sparse_cluster import OutOfCoreClustering, TileSource

    if cfg.out_of_core not in ("auto", "on", "off"):
        raise UserError(f"--out-of-core must be auto, on or off, not {cfg.out_of_core!r}")
    if cfg.graph_bound is not None and not 0.0 < cfg.graph_bound <= 1.0:
        raise UserError(f"--graph-bound is a bound on |r|, in (0, 1]; got {cfg.graph_bound}")
    index = tile_reads.tile_index(lake, run)
    stats = tile_reads.neuron_statistics(lake, run)
    layers, constant = stats["layer"].to_numpy(), stats["constant"].to_numpy()
    N, L = len(layers), int(layers.max()) + 1
    snap = run.snapshot(NEURON_CORRELATION_TILES)
    in_memory = cfg.out_of_core == "off" or (cfg.out_of_core == "auto"
                                             and memory.clustering_fits(N, L, len(cfg.thresholds)))
    if in_memory:
        memory.check(memory.clustering_plan(N, L, len(cfg.thresholds)))

        def fit():
            r = tile_reads.assemble(index)
            return CorrelationClustering(tuple(cfg.thresholds), cfg.representative, cfg.seed).fit(r, layers, constant)
        return fit, layers, snap
    if cfg.representative != "random":
        raise UserError("out-of-core clustering keeps a random representative per cluster; use --representative "
                        "random (or --out-of-core off where r fits)")
    limit = int(cfg.max_exact or memory.exact_component_limit())

    extras = T.load_extras(index["path"][0].rpartition("/")[0]) if index.height else None

    def fit_out_of_core():
        return OutOfCoreClustering(tuple(cfg.thresholds), cfg.representative, cfg.seed, limit, cfg.graph_bound,
                                   extras["n"] if extras else None).fit(TileSource(index, constant), layers)
    return fit_out_of_core, layers, snap


__all__ = ["NEURON_CORRELATION_TILES", "NEURON_STATISTICS", "TileResult", "compute_tiles", "run_tiled_similarity",
           "tiled_clustering"]
