"""The transfer job on real Ray, Iceberg and MLflow: the reduced model reproduces the pipeline."""

from pathlib import Path

import numpy as np
import pytest

from raydund.errors import UserError

# -- the job on real Ray, Iceberg and MLflow, with a tiny model ------------------------------
VOCAB = {"the": "DT", "a": "DT", "fox": "NN", "dog": "NN", "stocks": "NN", "jumped": "VB", "fell": "VB",
         "quick": "JJ", "lazy": "JJ", "brown": "JJ", "heavy": "JJ"}


def tagged_corpus(n, seed):
    """Sentences of the tiny tokenizer's words; each word has one tag (a task its embeddings can learn)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    words = list(VOCAB)
    sents = [[words[j] for j in rng.integers(0, len(words), int(rng.integers(3, 9)))] for _ in range(n)]
    return pa.table({"sentence_id": pa.array(range(n), pa.int64()), "words": sents,
                     "pos": [[VOCAB[w] for w in s] for s in sents],
                     "det": [["yes" if VOCAB[w] == "DT" else "no" for w in s] for s in sents]})


@pytest.mark.slow  # ~35 s on 2 cores: two transfer jobs, a probe job, the report in Chromium
@pytest.mark.usefixtures("ray_local")
def test_transfer_job_registers_a_reduced_model_that_reproduces_the_pipeline(settings, tiny_model_dir):
    import mlflow
    import polars as pl

    from raydund.extract.job import ExtractConfig, run_extraction
    from raydund.general.job import run_similarity
    from raydund.general.stream import SimilarityConfig
    from raydund.lake import Lake
    from raydund.transfer.job import TransferConfig, run_transfer

    lake = Lake(settings)
    corpus = {"train": tagged_corpus(160, 0), "dev": tagged_corpus(50, 1), "test": tagged_corpus(50, 2)}
    lake.write_corpus("toy", corpus)
    model_dir = tiny_model_dir("bert")
    for split in corpus:
        run_extraction(ExtractConfig(model=model_dir, corpus="toy", split=split), settings, progress=False)
    name = Path(model_dir).name  # the lake name of a model folder
    run_similarity(SimilarityConfig(model=name, corpus="toy", split="train"), settings, progress=False)
    cfg = TransferConfig(model=name, corpus="toy", labels=("pos",), stats_split="train", epochs=30, lr=2e-2,
                         batch_size=32, ls_thresholds=(0.01, 0.2), timing_sentences=20)
    out = run_transfer(cfg, settings)

    rows = [r for r in out["rows"] if r["ls_threshold"] == 0.01]
    stages = {r["stage"]: r for r in rows}
    assert set(stages) == {"oracle", "ls", "cc", "ccfs"}
    assert stages["oracle"]["dev"] > 0.9  # word identity -> tag: the embeddings alone carry it
    assert stages["ls"]["dev"] >= 0.99 * stages["oracle"]["dev"]
    assert stages["ccfs"]["dev"] >= 0.99 * stages["cc"]["dev"]  # FS within 1% of the CC stage it refines
    assert stages["ccfs"]["neurons"] <= stages["cc"]["neurons"] <= stages["ls"]["neurons"]
    # the lake table holds both threshold pairs, both splits
    table = lake.scan("transfer_results").filter(pl.col("model") == name).collect()
    assert table.height == 2 * 4 * 2 and set(table["ls_threshold"]) == {0.01, 0.2}

    # the registered reduced model, loaded by URI, predicts what the pipeline's evaluation predicted
    uri = out["registered"]["pos"]
    loaded = mlflow.pyfunc.load_model(uri)
    test_words = corpus["test"].column("words").to_pylist()
    predicted = loaded.predict([" ".join(s) for s in test_words])
    assert [len(p) for p in predicted] == [len(s) for s in test_words]
    pipeline = out["results"][0]["test_predictions"]
    flat = [label for sent in predicted for label in sent]
    assert flat == pipeline
    sel = out["results"][0]["model"].reduced_sets_[0]
    layers_kept = sel.layer
    saved = mlflow.artifacts.download_artifacts(f"{uri}/artifacts/reduced/transformer/config.json")
    import json

    assert json.load(open(saved))["num_hidden_layers"] == max(layers_kept, 1)  # the rest is cut off for real
    # lineage and timing were logged
    client = mlflow.MlflowClient()
    task_run = next(r for r in client.search_runs([client.get_run(out["run_id"]).info.experiment_id])
                    if r.data.tags.get("raydund.registered_model") == uri)
    assert task_run.data.tags["mlflow.parentRunId"] == out["run_id"]
    timing = out["timing"]
    assert [r["layers"] for r in timing["forward_by_layers"]] == [2, 3]  # embeddings + 1 or 2 blocks
    assert timing["reduced_vs_full"][0]["speedup"] > 0
    # the version is served as current only once the lake holds its run
    version = client.get_model_version_by_alias(uri.split("/")[1], "current")
    assert uri.endswith(f"/{version.version}") and version.tags["raydund.status"] == "committed"

    # another task on the same corpus replaces its own rows only: pos stays as it was (issue 15.1)
    before = table.sort(table.columns)
    run_transfer(TransferConfig(model=name, corpus="toy", labels=("det",), stats_split="train", epochs=5,
                                register=False, timing=False), settings)
    after = lake.scan("transfer_results").filter(pl.col("model") == name).collect()
    assert after.filter(pl.col("task") == "pos").sort(table.columns).equals(before)
    assert after.filter(pl.col("task") == "det").height == 4 * 2

    # the report: one self-contained page; every figure loads in headless Chromium, no console errors
    from browser import page_of

    from raydund.general.job import ClusterConfig, run_clustering
    from raydund.probes.job import ProbeConfig, run_probes
    from raydund.report.html import build_report

    run_clustering(ClusterConfig(model=name, corpus="toy", split="train"), settings)
    run_probes(ProbeConfig(model=name, corpus="toy", label="pos", epochs=5, control=False), settings)
    page_path = build_report(settings, out["run_id"])
    assert page_path == settings.report_dir(name, "toy") / "index.html"
    with page_of(page_path) as (page, problems):
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth > 0])")
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
        text = page.inner_text("body")
    assert problems == []
    names = {alt for alt, _ in images}
    assert all(ok for _, ok in images) and {"cka_heatmap", "cc_threshold_curve", "layerwise_pos",
                                             "timing_forward_by_layers", "timing_probe_cost"} <= names
    assert headings == ["Built from", "General redundancy", "Task-specific redundancy",
                        "Efficient transfer: LayerSelector + CCFS",
                        "Timing (measured)"]
    assert "ccfs" in text and "POS" not in text  # toy corpus: no paper row to compare with
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(out["run_id"], "report")}
    assert "report/index.html" in logged


def test_report_refuses_a_run_that_is_not_a_transfer(settings):
    from raydund import tracking
    from raydund.report.html import build_report

    mlflow = tracking.configure(settings)
    with tracking.job_run(settings, "raydund/m/c", "other", {"model": "m"}) as run:
        pass
    with pytest.raises(UserError, match="not a transfer run"):
        build_report(settings, run.info.run_id)
    with pytest.raises(UserError, match="no MLflow run"):
        build_report(settings, "0" * 32)
    assert mlflow.active_run() is None
