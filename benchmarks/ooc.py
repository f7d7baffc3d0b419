"""Issue 19 benchmarks: out-of-core clustering against exact average linkage (ARI; on synthetic r,
or between two clustering runs of a real lake), and the tiled pass at scale (per-tile costs, peak
memory of the process tree). Run as a script; prints JSON."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))


def layered_activations(tokens: int, widths: tuple[int, ...], seed: int = 0, share: int = 8) -> np.ndarray:
    """Synthetic activations with a transformer-like correlation structure (float32 ``[tokens x N]``).

    Each neuron loads on 1-3 factors of a pool that drifts with depth (layer ``l`` draws
    from factors ``[l k / 2, l k / 2 + k)``, ``k = width / share``: adjacent layers share
    half their factors), with random signs and strengths, plus a weak token-wide common
    factor and unit noise: most pairs are near 0, a long tail of moderate and strong pairs,
    clusters within and across adjacent layers.
    """
    rng = np.random.default_rng(seed)
    L, k = len(widths), max(2, widths[0] // share)
    F = rng.standard_normal((tokens, (L + 2) * k // 2 + k), dtype=np.float32)
    common = rng.standard_normal((tokens, 1), dtype=np.float32)
    cols = []
    for l, w in enumerate(widths):
        X = rng.standard_normal((tokens, w), dtype=np.float32)
        base = l * k // 2
        for j in range(w):
            for f in rng.integers(base, base + k, rng.integers(1, 4)):
                X[:, j] += rng.choice([-1, 1]) * rng.uniform(0.3, 2.0) * F[:, f]
        X += 0.3 * common
        cols.append(X)
    return np.hstack(cols)


def correlations(X: np.ndarray) -> np.ndarray:
    """float32 r of the columns of ``X`` (float64 products, block by block)."""
    X = X.astype(np.float64)
    X -= X.mean(0)
    X /= np.linalg.norm(X, axis=0)
    N = X.shape[1]
    r = np.empty((N, N), np.float32)
    for a in range(0, N, 2048):
        r[a : a + 2048] = X[:, a : a + 2048].T @ X
    return r


def residual_activations(tokens: int, widths: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The paper-scale generator of BENCHMARKS.md (:func:`benchmarks.synthetic.structured_chunk`):
    64 shared factors with dense random loadings, plus noise: nearly every pair correlated."""
    from benchmarks.synthetic import structured_chunk

    rng = np.random.default_rng(seed)
    N = sum(widths)
    mixing = rng.standard_normal((64, N), dtype=np.float32) * rng.uniform(0, 2, (64, 1)).astype(np.float32)
    return structured_chunk(rng, tokens, widths, mixing, rng.uniform(-3, 3, N).astype(np.float32))


def ari_bench(n_layers: int, width: int, tokens: int, fractions: list[float], seed: int = 0,
              kind: str = "layered") -> dict:
    from sklearn.metrics import adjusted_rand_score

    from raydund.general.clustering import CorrelationClustering
    from raydund.general.sparse_cluster import DenseSource, OutOfCoreClustering

    t0 = time.perf_counter()
    make = layered_activations if kind == "layered" else residual_activations
    r = correlations(make(tokens, (width,) * n_layers, seed))
    N = len(r)
    layers = np.repeat(np.arange(n_layers), width)
    out = {"kind": kind, "neurons": N, "layers": n_layers, "tokens": tokens, "r_seconds": time.perf_counter() - t0}
    iu = np.triu_indices(min(N, 4000), 1)
    out["share_abs_r_ge"] = {c: float((np.abs(r[:4000, :4000][iu]) >= c).mean()) for c in (0.1, 0.3, 0.5, 0.9)}
    t0 = time.perf_counter()
    exact = CorrelationClustering(THRESHOLDS).fit(r, layers)
    out["exact_seconds"] = time.perf_counter() - t0
    out["exact_clusters"] = [int(x.max()) for x in exact.labels_]
    del exact.linkage_
    out["runs"] = []
    for frac in fractions:
        max_exact = max(2, int(frac * N))
        t0 = time.perf_counter()
        oc = OutOfCoreClustering(THRESHOLDS, max_exact=max_exact).fit(DenseSource(r), layers)
        out["runs"].append({"max_exact": max_exact, "seconds": time.perf_counter() - t0,
                            "ari": [round(adjusted_rand_score(a, b), 4) for a, b in zip(exact.labels_, oc.labels_)],
                            "exact_share": [round(e, 3) for e in oc.exact_],
                            "clusters": [int(x.max()) for x in oc.labels_]})
        print(json.dumps(out["runs"][-1]), flush=True)
    return out


def gemm_rate(rows: int, block: int, threads: int = 2) -> float:
    """Measured float64 GEMM rate (FLOP/s) of one tile product ``[rows x block]^T [rows x block]``."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    X, Y = (np.asfortranarray(rng.standard_normal((rows, block))) for _ in range(2))
    with threadpool_limits(limits=threads, user_api="blas"):
        X.T @ Y
        start = time.perf_counter()
        X.T @ Y
        took = time.perf_counter() - start
    return 2 * rows * block * block / took


def tiles_bench(n_layers: int, width: int, tokens: int, block: int, home: str, cluster: bool,
                max_exact: int | None, cluster_only: bool = False) -> dict:
    """The tiled pass (and optionally the out-of-core clustering) on synthetic layered activations
    through a real lake, local Ray on 2 CPUs; peak PSS of the whole process tree."""
    import os

    import ray

    from benchmarks.bench import PeakMemory
    from benchmarks.synthetic import write_activations
    from raydund.config import Settings
    from raydund.general.job import run_similarity
    from raydund.general.stream import SimilarityConfig
    from raydund.lake import Lake

    settings = Settings.from_env({**os.environ, "RAYDUND_HOME": home}).prepare()
    lake = Lake(settings)
    widths = (width,) * n_layers
    out = {"neurons": sum(widths), "layers": n_layers, "tokens": tokens, "block": block,
           "load_before": os.getloadavg()[0]}
    if cluster_only:  # the similarity run of an earlier call is in the lake
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        return _cluster(out, settings, max_exact)
    t0 = time.perf_counter()
    X = layered_activations(tokens, widths)
    write_activations(lake, [X[:, l * width : (l + 1) * width] for l in range(n_layers)], model="synthetic",
                      corpus="ooc", split="bench", shard_tokens=max(1000, tokens // 4))
    del X
    out["write_s"] = time.perf_counter() - t0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = SimilarityConfig(model="synthetic", corpus="ooc", split="bench", tiles="on", tile_neurons=block)
    with PeakMemory(tree=True) as mem:
        t0 = time.perf_counter()
        res = run_similarity(cfg, settings, progress=False)
        out["similarity_s"] = time.perf_counter() - t0
    tiles = res["tile_result"]
    out["block"] = tiles.block  # the memory plan's choice when --block is not given
    out["gemm_gflops_2threads"] = gemm_rate(min(tokens, 4096), tiles.block) / 1e9
    secs = [r["seconds"] for r in tiles.records]
    out.update(tiles=len(secs), tile_s_mean=float(np.mean(secs)), tile_s_max=float(np.max(secs)),
               extras_s=tiles.seconds["extras"], tiles_wall_s=tiles.seconds["tiles"],
               similarity_peak_gb=mem.peak_work / 2**30, similarity_added_gb=(mem.peak_work - mem.baseline) / 2**30,
               similarity_peak_process_gb=mem.peak_process / 2**30, load_after_similarity=os.getloadavg()[0])
    diag = [r["seconds"] for r in tiles.records if r["row"] == r["col"]]
    out["diagonal_tile_s_mean"] = float(np.mean(diag))
    out["tile_product_s_mean"] = float(np.mean([r.get("product_seconds", np.nan) for r in tiles.records]))
    N = sum(widths)
    out["floor_s_at_measured_rate"] = tokens * N * N / (out["gemm_gflops_2threads"] * 1e9)  # upper triangle
    print(json.dumps(out), flush=True)
    if cluster:
        _cluster(out, settings, max_exact)
    ray.shutdown()
    return out


def _cluster(out: dict, settings, max_exact: int | None) -> dict:
    from benchmarks.bench import PeakMemory
    from raydund.general.job import ClusterConfig, run_clustering

    with PeakMemory(tree=True) as mem:
        t0 = time.perf_counter()
        cc = run_clustering(ClusterConfig(model="synthetic", corpus="ooc", split="bench", thresholds=THRESHOLDS,
                                          out_of_core="on", max_exact=max_exact), settings)
        out["cluster_s"] = time.perf_counter() - t0
    out.update(cluster_peak_gb=mem.peak_work / 2**30, cluster_added_gb=(mem.peak_work - mem.baseline) / 2**30,
               clusters=[int(x.max()) for x in cc.labels_], exact_share=[round(e, 3) for e in cc.exact_])
    return out


def lake_ari(home: str, model: str, corpus: str, run_ids: list[str] | None = None) -> dict:
    """ARI per threshold between two completed clustering runs of (model, corpus) in a lake, each read
    at the snapshot it recorded: an exact one (``raydund cluster --out-of-core off``) and an out-of-core
    one (``--out-of-core on``); ``run_ids`` = [exact, out of core] (default: the latest, the one before)."""
    import os

    import polars as pl
    from sklearn.metrics import adjusted_rand_score

    from raydund.config import Settings
    from raydund.lake import Lake, runs

    lake = Lake(Settings.from_env({**os.environ, "RAYDUND_HOME": home}), create=False)
    if run_ids:
        exact, approx = (runs.by_id(lake, rid) for rid in run_ids)
    else:
        done = runs.completed(lake, "cluster", model, corpus)
        exact, approx = done[-1], done[-2]
    labels = {}
    for name, run in (("exact", exact), ("out_of_core", approx)):
        rows = pl.from_arrow(runs.read(lake, run, "clusters", selected_fields=("threshold", "position",
                                                                              "cluster_id")).to_arrow())
        labels[name] = {t: g.sort("position")["cluster_id"].to_numpy()
                        for (t,), g in rows.group_by("threshold")}
    out = {"exact_run": exact.run_id, "out_of_core_run": approx.run_id, "thresholds": {}}
    for t in sorted(labels["exact"]):
        a, b = labels["exact"][t], labels["out_of_core"][t]
        out["thresholds"][t] = {"ari": round(float(adjusted_rand_score(a, b)), 5), "identical": bool(
            adjusted_rand_score(a, b) == 1.0), "clusters_exact": int(len(np.unique(a))),
            "clusters_out_of_core": int(len(np.unique(b)))}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("ari", "tiles", "lake-ari"))
    p.add_argument("--model", default="smollm2")
    p.add_argument("--corpus", default="ud_english_ewt")
    p.add_argument("--runs", nargs=2, metavar=("EXACT", "OUT_OF_CORE"), help="lake-ari: the two clustering runs")
    p.add_argument("--block", type=int, help="neurons per tile block (default: the memory plan's choice)")
    p.add_argument("--home", default="/tmp/ooc-home")
    p.add_argument("--cluster", action="store_true")
    p.add_argument("--max-exact", type=int)
    p.add_argument("--cluster-only", action="store_true")
    p.add_argument("--layers", type=int, default=7)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--tokens", type=int, default=4000)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.1])
    p.add_argument("--kind", choices=("layered", "residual"), default="layered")
    p.add_argument("--out")
    a = p.parse_args()
    if a.what == "ari":
        res = ari_bench(a.layers, a.width, a.tokens, a.fractions, kind=a.kind)
    elif a.what == "lake-ari":
        res = lake_ari(a.home, a.model, a.corpus, a.runs)
    else:
        res = tiles_bench(a.layers, a.width, a.tokens, a.block, a.home, a.cluster, a.max_exact, a.cluster_only)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
