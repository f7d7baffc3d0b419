"""The probe job on real Ray, Iceberg and MLflow: planted task in, results table and runs out."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from benchmarks.synthetic import write_activations
from raydund.general.job import ClusterConfig, run_clustering, run_similarity
from raydund.general.stream import SimilarityConfig
from raydund.lake import Lake
from raydund.probes.job import ProbeConfig, run_probes

pytestmark = pytest.mark.usefixtures("ray_local")

WIDTH, LAYERS, SENT = 6, 3, 5


def planted_split(lake, split, T, seed):
    """Activations where the tag of a word is decided by layer 1; a corpus table to match."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((T, LAYERS * WIDTH)).astype(np.float32)
    tags = np.where(X[:, WIDTH + 2] + X[:, WIDTH + 4] > 0, "NN", "VB")
    layers = [X[:, i * WIDTH : (i + 1) * WIDTH] for i in range(LAYERS)]
    write_activations(lake, layers, model="m", corpus="toy", split=split, shard_tokens=400, sentence_len=SENT)
    n = T // SENT
    words = [[f"w{rng.integers(50)}" for _ in range(SENT)] for _ in range(n)]
    return pa.table({"sentence_id": pa.array(range(n), pa.int64()), "words": words,
                     "pos": [list(tags[i * SENT : (i + 1) * SENT]) for i in range(n)]})


def test_probe_job_finds_the_layer_and_tracks_everything(settings):
    import mlflow

    lake = Lake(settings)
    tables = {split: planted_split(lake, split, T, seed)
              for split, T, seed in (("train", 2000, 0), ("dev", 500, 1), ("test", 500, 2))}
    lake.write_corpus("toy", tables)
    run_similarity(SimilarityConfig(model="m", corpus="toy", split="train"), settings, progress=False)
    run_clustering(ClusterConfig(model="m", corpus="toy", split="train", thresholds=(0.0, 0.5)), settings)
    cfg = ProbeConfig(model="m", corpus="toy", label="pos", epochs=8, lr=1e-2, cluster_split="train")
    out = run_probes(cfg, settings)

    rows = {r["probe"]: r for r in out["layerwise"]}
    assert rows["oracle"]["test"]["accuracy"] > 0.9
    assert rows["layer 1"]["redundant"] and not rows["layer 0"]["redundant"] and not rows["layer 2"]["redundant"]
    selectivity = {r["probe"]: r["selectivity_dev"] for r in out["control"]}
    assert selectivity["layer 1"] > selectivity["layer 0"]
    assert set(out["minimal"]["neurons"][:2].tolist()) == {WIDTH + 2, WIDTH + 4}
    assert [r["threshold"] for r in out["reduced"]] == [0.0, 0.5]

    results = lake.scan("probe_results").filter(pl.col("task") == "pos").collect()
    oracle = results.filter((pl.col("probe") == "oracle") & (pl.col("split") == "test")
                            & (pl.col("metric") == "accuracy"))
    assert oracle["value"][0] == pytest.approx(rows["oracle"]["test"]["accuracy"])
    assert set(results["analysis"]) == {"layerwise", "control", "minimal_set", "cc_threshold"}

    mlflow.set_tracking_uri(settings.tracking_uri)
    children = mlflow.search_runs(experiment_names=["raydund/m/toy"],
                                  filter_string=f"tags.mlflow.parentRunId = '{out['run_id']}'")
    expected = len(out["layerwise"]) + len(out["minimal"]["rows"]) + len(out["reduced"])
    assert len(children) == expected
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(out["run_id"], "figures")}
    assert {"figures/layerwise.png", "figures/layerwise_per_class.png", "figures/minimal_set.png"} <= artifacts


@pytest.mark.slow  # ~13 s on 2 cores: the job twice, 1 and 3 workers
def test_layer_block_workers_train_what_one_process_trains(settings):
    """Probes sharded over 3 layer-block actors (gloo all-reduce) = the same probes in one process.

    Dev carved from train and a train limit exercise the row selection each actor applies.
    """
    import mlflow

    lake = Lake(settings)
    lake.write_corpus("toy", {split: planted_split(lake, split, T, seed)
                              for split, T, seed in (("train", 2000, 0), ("test", 500, 2))})
    base = dict(model="m", corpus="toy", label="pos", epochs=4, lr=1e-2, splits=("train", "train", "test"),
                train_limit=1500, precision="float32")  # sums in another order only: no bfloat16 rounding
    one = run_probes(ProbeConfig(**base, workers=1), settings)
    three = run_probes(ProbeConfig(**base, workers=3), settings)

    def scores(out):
        return {r["probe"]: (r["dev"]["accuracy"], r["test"]["accuracy"]) for r in out["layerwise"]}

    assert scores(three).keys() == scores(one).keys()
    for probe, (dev, test) in scores(one).items():  # float sums in another order: a row may flip, no more
        assert scores(three)[probe] == pytest.approx((dev, test), abs=2 / 500), probe
    assert three["minimal"]["k"] == one["minimal"]["k"]
    assert three["rankings"]["lca"][:2].tolist() == one["rankings"]["lca"][:2].tolist()
    np.testing.assert_array_equal(three["rankings"]["probeless"], one["rankings"]["probeless"])
    assert [r["control_dev"] for r in three["control"]] == pytest.approx([r["control_dev"] for r in one["control"]],
                                                                         abs=2 / 150)
    mlflow.set_tracking_uri(settings.tracking_uri)
    params = mlflow.get_run(three["run_id"]).data.params
    assert params["workers"] == "3" and params["precision_resolved"] == "float32"
