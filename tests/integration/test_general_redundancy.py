"""The general-redundancy jobs on real Ray, Iceberg and MLflow, against NumPy references.

Activations with planted structure go into the lake through the real extraction file
layout; the streamed statistics must equal NumPy on the full matrix, and the planted
groups must come back out of the clustering.
"""

import numpy as np
import polars as pl
import pytest

from benchmarks.synthetic import write_activations
from raydund.errors import UserError
from raydund.general import stream
from raydund.general.clustering import CorrelationClustering
from raydund.general.job import ClusterConfig, load_correlations, run_clustering, run_similarity
from raydund.general.stream import SimilarityConfig, balance_blocks
from raydund.lake import Lake

pytestmark = pytest.mark.usefixtures("ray_local")

WIDTH, LAYERS = 6, 4


def planted_activations(T=900, seed=0):
    """Layers 1 and 2 are noisy copies of one another; neurons (0,0), (1,3), (3,5) share a signal."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((T, LAYERS * WIDTH)) + rng.uniform(-50, 300, LAYERS * WIDTH)
    Z[:, 2 * WIDTH : 3 * WIDTH] = Z[:, WIDTH : 2 * WIDTH] + 0.3 * rng.standard_normal((T, WIDTH))
    signal = rng.standard_normal(T)
    for layer, neuron in ((0, 0), (1, 3), (3, 5)):
        Z[:, layer * WIDTH + neuron] = 300 + signal + 0.05 * rng.standard_normal(T)
    Z[:, 3 * WIDTH + 1] = 7.0  # a dead neuron
    return Z


def write_into_lake(lake, Z, shard_tokens=300):
    """Z as activation files in the extraction layout (3 shards, one file per layer)."""
    layers = [Z[:, i * WIDTH : (i + 1) * WIDTH].astype(np.float32) for i in range(LAYERS)]
    write_activations(lake, layers, model="m", corpus="c", split="dev", shard_tokens=shard_tokens, sentence_len=5)
    return Z.astype(np.float32).astype(np.float64)  # what the lake holds


def ref_cka(X, Y):
    X, Y = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))


@pytest.mark.parametrize(("groups", "cpus"), [(1, None), (3, None), (1, 1)])
def test_similarity_job_equals_numpy_and_is_tracked(settings, monkeypatch, groups, cpus):
    """One worker (all CPUs) with one dsyrk accumulator; block rows over 3 tasks; and two
    one-CPU workers whose states reach the driver in many small pieces."""
    import mlflow

    lake = Lake(settings)
    Z = write_into_lake(lake, planted_activations())
    monkeypatch.setattr(stream, "PIECE_BYTES", 256)  # a few columns per piece
    out = run_similarity(SimilarityConfig(model="m", corpus="c", split="dev", groups=groups, chunk_rows=100,
                                          cpus_per_task=cpus), settings, progress=False)
    sim = out["similarity"]
    live = np.ones(Z.shape[1], bool)
    live[3 * WIDTH + 1] = False
    assert sim.constant.tolist() == (~live).tolist()
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_r = np.corrcoef(Z.T)
    np.testing.assert_allclose(sim.r[np.ix_(live, live)], ref_r[np.ix_(live, live)], atol=1e-9)
    layers = [Z[:, i * WIDTH : (i + 1) * WIDTH] for i in range(LAYERS)]
    for a in range(LAYERS):
        for b in range(LAYERS):
            assert abs(sim.cka[a, b] - ref_cka(layers[a], layers[b])) < 1e-9
    off_diagonal = np.where(np.eye(LAYERS, dtype=bool), -1, sim.cka)
    assert np.unravel_index(np.argmax(off_diagonal), off_diagonal.shape) in ((1, 2), (2, 1))  # planted
    assert sim.cka[1, 2] > 0.7 and sim.cka_debiased[1, 2] > 0.7
    # skipping each sentence's first word drops exactly those rows
    first = run_similarity(SimilarityConfig(model="m", corpus="c", split="dev", skip_first=True), settings,
                           progress=False)["similarity"]
    kept = Z[np.arange(len(Z)) % 5 > 0]
    assert first.n == len(kept)
    np.testing.assert_allclose(first.cka[0, 2], ref_cka(kept[:, :WIDTH], kept[:, 2 * WIDTH : 3 * WIDTH]), atol=1e-9)

    # the lake holds r and CKA; the run records them
    r, layer_of, constant, _ = load_correlations(lake, "m", "c", "dev")
    np.testing.assert_allclose(r[np.ix_(live, live)], ref_r[np.ix_(live, live)], atol=1e-6)  # stored as float32
    cka = (lake.scan("layer_similarity").filter((pl.col("measure") == "cka") & (pl.col("variant") == "all"))
           .sort("layer_a", "layer_b").collect()["value"].to_numpy().reshape(LAYERS, LAYERS))
    np.testing.assert_allclose(cka, sim.cka, atol=1e-12)
    mlflow.set_tracking_uri(settings.tracking_uri)
    run = mlflow.get_run(out["run_id"])
    assert run.data.metrics["constant_neurons"] == 1 and run.data.metrics["tokens"] == len(Z)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(out["run_id"], "figures")}
    assert artifacts == {"figures/cka.png", "figures/cka_debiased.png"}


def test_clustering_job_recovers_planted_group_and_tracks_the_sweep(settings):
    import mlflow

    lake = Lake(settings)
    Z = write_into_lake(lake, planted_activations())
    run_similarity(SimilarityConfig(model="m", corpus="c", split="dev"), settings, progress=False)
    cc = run_clustering(ClusterConfig(model="m", corpus="c", split="dev", thresholds=(0.0, 0.2, 0.5)), settings)
    clusters = lake.scan("clusters").filter(pl.col("threshold") == 0.2).collect()
    planted = clusters.filter(pl.col("position").is_in([0, WIDTH + 3, 3 * WIDTH + 5]))
    assert planted["cluster_id"].n_unique() == 1 and planted["kept"].sum() == 1
    assert clusters.height == LAYERS * WIDTH - 1  # the dead neuron is left out
    assert lake.scan("clusters").filter(pl.col("threshold") == 0.0).collect()["kept"].all()
    # the same clusters as a direct fit on NumPy's correlations (NeuroX's recipe)
    live = np.ones(Z.shape[1], bool)
    live[3 * WIDTH + 1] = False
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = CorrelationClustering(thresholds=(0.0, 0.2, 0.5)).fit(np.corrcoef(Z.T), np.repeat(range(LAYERS), WIDTH),
                                                                   ~live)
    for a, b in zip(cc.labels_, ref.labels_):
        assert len(set(zip(a, b))) == len(set(a)) == len(set(b))
    mlflow.set_tracking_uri(settings.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["raydund/m/c"], filter_string="tags.`raydund.stage` = 'cluster'")
    parent = runs.iloc[0]
    children = mlflow.search_runs(experiment_names=["raydund/m/c"],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent['run_id']}'")
    assert sorted(children["params.threshold"].astype(float)) == [0.0, 0.2, 0.5]
    history = mlflow.MlflowClient().get_metric_history(parent["run_id"], "sweep_neurons_kept")
    assert [m.step for m in history] == [0, 1, 2] and history[0].value == LAYERS * WIDTH - 1


def test_balance_blocks_covers_every_row_once():
    for L in (1, 4, 13, 25):
        for g in (1, 2, 3, 8):
            plan = balance_blocks(L, g)
            assert sorted(l for group in plan for l in group) == list(range(L))
            loads = [sum(L - l for l in group) for group in plan]
            assert max(loads) - min(loads) <= L


def test_correlations_written_in_batches_in_one_commit_and_read_back(settings, monkeypatch):
    """r goes to the lake a few rows at a time (one transaction); a re-run replaces it."""
    import raydund.general.job as redundancy

    lake = Lake(settings)
    Z = write_into_lake(lake, planted_activations())
    batches = []
    original = redundancy.correlation_batches

    def small_batches(sim, cfg, rows_per_batch=1024):
        for batch in original(sim, cfg, 5):
            batches.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(redundancy, "correlation_batches", small_batches)
    cfg = SimilarityConfig(model="m", corpus="c", split="dev")
    for _ in range(2):  # the second run replaces the first
        sim = run_similarity(cfg, settings, progress=False)["similarity"]
    assert batches == [5, 5, 5, 5, 4] * 2
    r, layers, constant, snap = load_correlations(lake, "m", "c", "dev")
    np.testing.assert_array_equal(r, sim.r.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(layers, np.repeat(np.arange(LAYERS), WIDTH))
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.corrcoef(Z.T)
    live = ~constant
    np.testing.assert_allclose(r[np.ix_(live, live)], ref[np.ix_(live, live)], atol=1e-6)
    r32, *_ = load_correlations(lake, "m", "c", "dev", dtype=np.float32)
    assert r32.dtype == np.float32 and np.array_equal(r32, r.astype(np.float32), equal_nan=True)
    table = lake.table("neuron_correlation")
    assert table.scan().to_arrow().num_rows == LAYERS * WIDTH
    assert table.current_snapshot().snapshot_id == snap


@pytest.mark.usefixtures("ray_local")
def test_similarity_job_refuses_before_any_compute(settings, monkeypatch):
    from benchmarks.synthetic import write_activations

    lake = Lake(settings)
    write_activations(lake, model="m", corpus="c", split="dev", tokens=200, widths=(8, 8), shard_tokens=100)

    def computed(*args, **kwargs):
        raise AssertionError("the pass started")

    monkeypatch.setattr(stream.Moments, "empty", computed)
    monkeypatch.setattr(stream, "first_mean", computed)
    monkeypatch.setattr(stream, "ChunkBuffer", computed)
    monkeypatch.setenv("RAYDUND_MEMORY_LIMIT_GB", "0.0001")
    with pytest.raises(UserError, match=r"stage similarity needs ~.*neurons=16.*tokens=200"):
        stream.compute_moments(lake, stream.SimilarityConfig("m", "c", "dev"), progress=False)
