"""The extraction job end to end on real Ray, a real Iceberg catalog and a real MLflow store."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch

from raydund.errors import UserError
from raydund.extract.encoder import Encoder, ModelSpec, load_model
from raydund.extract.job import ExtractConfig, make_shards, run_extraction
from raydund.lake import Lake

pytestmark = pytest.mark.usefixtures("ray_local")

VOCAB = ["the", "quick", "brown", "fox", "jumped", "over", "lazy", "dog", "stocks", "fell", "sharply",
         "Unbelievable", "tokenization", "works", ",", "."]


def make_corpus(n=30, seed=0, long_every=10):
    rng = np.random.default_rng(seed)
    sentences = []
    for i in range(n):
        length = 70 if i % long_every == 3 else int(rng.integers(1, 12))  # some exceed the model's 64 positions
        sentences.append([VOCAB[j] for j in rng.integers(0, len(VOCAB), length)])
    return pa.table({"sentence_id": pa.array(range(n), pa.int64()), "words": sentences,
                     "pos": [["X"] * len(s) for s in sentences]})


def expected_layers(model_dir, sentences):
    """Direct (no Ray, no lake) encoder output per layer, rows ordered by (sentence, word)."""
    model, tok = load_model(ModelSpec("ref", model_dir))
    enc = Encoder(model, tok, aggregation="last", batch_size=7)
    rows = {}
    for chunk in enc.encode_words(sentences):
        for i, (p, w) in enumerate(zip(chunk.sentence_pos, chunk.word_ids)):
            rows[(p, w)] = chunk.layers[:, i]
    keys = sorted(rows)
    return np.stack([rows[k] for k in keys], axis=1), keys


@pytest.fixture
def lake_with_corpus(settings):
    lake = Lake(settings)
    data = make_corpus()
    lake.write_corpus("toy", {"train": data})
    return lake, data


def test_extraction_matches_direct_encoder_and_is_tracked(settings, lake_with_corpus, tiny_model_dir):
    import mlflow

    lake, data = lake_with_corpus
    model_dir = tiny_model_dir("bert")
    result = run_extraction(ExtractConfig(model=model_dir, corpus="toy", split="train", shard_words=60,
                                          batch_size=4), settings, progress=False)
    sentences = data.column("words").to_pylist()
    n_words = sum(map(len, sentences))
    ref, keys = expected_layers(model_dir, sentences)
    assert result.words == n_words and result.layers == 3 and result.files == 3 * len(
        make_shards(data, 60, "word"))

    for layer in range(3):
        X, row_keys = lake.layer_matrix("bert", "toy", "train", layer)
        assert X.dtype == np.float32 and X.shape == (n_words, 16)
        assert list(zip(row_keys["sentence_id"].to_pylist(), row_keys["word_id"].to_pylist())) == keys
        assert row_keys["word"].to_pylist() == [sentences[s][w] for s, w in keys]
        np.testing.assert_allclose(X, ref[layer], atol=1e-5)

    # polars sees plain list<f32> vectors and prunes by partition
    acts = lake.scan("activations")
    assert acts.collect_schema()["vector"] == pl.List(pl.Float32)
    per_layer = acts.group_by("layer").agg(pl.len()).sort("layer").collect()
    assert per_layer["len"].to_list() == [n_words] * 3

    # MLflow: params, metrics, and the snapshot the run produced
    mlflow.set_tracking_uri(settings.tracking_uri)
    run = mlflow.get_run(result.run_id)
    assert run.data.params["corpus"] == "toy" and run.data.params["aggregation"] == "last"
    assert run.data.metrics["words"] == n_words
    assert run.data.tags["iceberg.snapshot_id"] == str(lake.activations().current_snapshot().snapshot_id)
    exp = mlflow.get_experiment(run.info.experiment_id)
    assert exp.artifact_location.startswith(settings.artifact_root)

    # re-running replaces the partition: no duplicate rows, a new snapshot
    again = run_extraction(ExtractConfig(model=model_dir, corpus="toy", split="train", shard_words=60),
                           settings, progress=False)
    assert again.snapshot_id != result.snapshot_id
    assert lake.scan("activations").select(pl.len()).collect().item() == 3 * n_words


def test_half_precision_storage(settings, lake_with_corpus, tiny_model_dir):
    lake, data = lake_with_corpus
    model_dir = tiny_model_dir("bert")
    run_extraction(ExtractConfig(model=model_dir, corpus="toy", split="train", dtype="bfloat16"),
                   settings, progress=False)
    ref, _ = expected_layers(model_dir, data.column("words").to_pylist())
    X, _ = lake.layer_matrix("bert", "toy", "train", 2)
    expected = torch.from_numpy(ref[2]).to(torch.bfloat16).float().numpy()
    np.testing.assert_allclose(X, expected, atol=0.02, rtol=0.01)
    assert np.mean(X == expected) > 0.99  # same rounding up to last-bit differences in the forward pass


def test_interrupted_job_resumes_and_completes(settings, lake_with_corpus, tiny_model_dir):
    import mlflow

    from raydund.extract import executors as job_module

    lake, data = lake_with_corpus
    cfg = ExtractConfig(model=tiny_model_dir("bert"), corpus="toy", split="train", shard_words=40, executor="ray")
    calls = []
    real_pool = job_module._run_pool

    def dies_after_first_shard(cfg_, spec, files_uri, pending, done, progress):
        calls.append(len(pending))
        real_pool(cfg_, spec, files_uri, pending[:1], done, progress)
        raise KeyboardInterrupt  # the job is killed after one shard was written

    job_module._run_pool = dies_after_first_shard
    try:
        with pytest.raises(KeyboardInterrupt):
            run_extraction(cfg, settings, progress=False)
    finally:
        job_module._run_pool = real_pool
    assert lake.activations().current_snapshot() is None, "nothing committed by the killed job"
    result = run_extraction(cfg, settings, progress=False)
    mlflow.set_tracking_uri(settings.tracking_uri)
    assert mlflow.get_run(result.run_id).data.metrics["resumed_shards"] == 1
    assert calls[0] > 1
    n_words = sum(len(s) for s in data.column("words").to_pylist())
    assert lake.scan("activations").select(pl.len()).collect().item() == 3 * n_words


def committed_rows(lake, snapshot_id):
    """The activation rows of one snapshot, in a fixed order, and that snapshot's summary."""
    table = lake.activations()
    rows = pl.from_arrow(table.scan(snapshot_id=snapshot_id).to_arrow()).sort("layer", "sentence_id", "word_id")
    return rows, table.snapshot_by_id(snapshot_id).summary


def test_in_process_and_ray_pool_write_the_same_table(settings, lake_with_corpus, tiny_model_dir):
    """The two executors: same rows, bit for bit, and commits of the same shape; a job one of
    them left half-done is finished by the other from the same shard markers."""
    import mlflow

    from raydund.extract.actor import ExtractActor

    lake, data = lake_with_corpus
    base = dict(model=tiny_model_dir("bert"), corpus="toy", split="train", shard_words=40, threads=1)
    ray_run = run_extraction(ExtractConfig(**base, executor="ray"), settings, progress=False)
    local_run = run_extraction(ExtractConfig(**base, executor="auto"), settings, progress=False)
    mlflow.set_tracking_uri(settings.tracking_uri)
    assert mlflow.get_run(local_run.run_id).data.metrics["in_process"] == 1  # auto: no cluster, one actor
    assert mlflow.get_run(ray_run.run_id).data.metrics["in_process"] == 0
    (ray_rows, ray_summary), (local_rows, local_summary) = (committed_rows(lake, r.snapshot_id)
                                                            for r in (ray_run, local_run))
    n_words = sum(len(s) for s in data.column("words").to_pylist())
    assert local_rows.height == ray_rows.height == 3 * n_words
    assert local_rows.equals(ray_rows)  # vectors included: exactly the same floats
    for key in ("added-records", "added-data-files", "deleted-records", "changed-partition-count"):
        assert local_summary[key] == ray_summary[key], key
    assert local_summary["raydund.job_key"] == ray_summary["raydund.job_key"]

    # the in-process job dies after its first shard; the pool finishes the job from its markers
    real = ExtractActor.write_shard
    calls = []

    def dies_after_first_shard(self, shard):
        if calls:
            raise KeyboardInterrupt
        calls.append(shard["shard"])
        return real(self, shard)

    ExtractActor.write_shard = dies_after_first_shard
    try:
        with pytest.raises(KeyboardInterrupt):
            run_extraction(ExtractConfig(**base, executor="local", dtype="float16"), settings, progress=False)
    finally:
        ExtractActor.write_shard = real
    resumed = run_extraction(ExtractConfig(**base, executor="ray", dtype="float16"), settings, progress=False)
    assert mlflow.get_run(resumed.run_id).data.metrics["resumed_shards"] == 1
    assert resumed.words == n_words


def test_failed_job_commits_nothing(settings, lake_with_corpus, tiny_model_dir):
    import mlflow

    lake, _ = lake_with_corpus
    model_dir = tiny_model_dir("bert")
    first = run_extraction(ExtractConfig(model=model_dir, corpus="toy", split="train"), settings, progress=False)
    # a budget of 2 tokens per window cannot hold the words that split into 3+ subwords
    with pytest.raises(UserError, match="subword tokens"):
        run_extraction(ExtractConfig(model=model_dir, corpus="toy", split="train", max_tokens=2),
                       settings, progress=False)
    assert lake.activations().current_snapshot().snapshot_id == first.snapshot_id
    mlflow.set_tracking_uri(settings.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["raydund/bert/toy"], order_by=["start_time DESC"])
    assert runs.iloc[0]["status"] == "FAILED"


def test_sentence_pairs_cls_extraction(settings, tiny_model_dir):
    lake = Lake(settings)
    a = [["the", "dog"], ["stocks", "fell", "sharply"], ["fox"]]
    b = [["lazy", "dog"], ["the", "fox", "jumped"], ["quick"]]
    lake.write_corpus("pairs", {"dev": pa.table({"sentence_id": pa.array([0, 1, 2], pa.int64()), "words": a,
                                                "words_b": b, "label": ["1", "0", "1"]})})
    model_dir = tiny_model_dir("xlnet")
    run_extraction(ExtractConfig(model=model_dir, corpus="pairs", split="dev", unit="cls"), settings, progress=False)
    model, tok = load_model(ModelSpec("x", model_dir))
    X, keys = lake.layer_matrix("xlnet", "pairs", "dev", 2, unit="cls")
    assert keys["word_id"].to_pylist() == [-1, -1, -1] and keys["word"].to_pylist() == ["<cls>"] * 3
    for i in range(3):
        enc = tok(a[i], b[i], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            ref = model(**enc, output_hidden_states=True).hidden_states[2][0, -1].numpy()
        np.testing.assert_allclose(X[i], ref, atol=2e-5)
