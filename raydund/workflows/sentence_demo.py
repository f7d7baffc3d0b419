"""The sentence-level walk-through: fine-tune -> extract [CLS] -> layer-wise probes -> clustering sweep."""

from __future__ import annotations

import time

from raydund.config import Settings
from raydund.finetune.config import FinetuneConfig
from raydund.finetune.job import run_finetune
from raydund.finetune.metrics import primary_metric
from raydund.lake import Lake, corpus_table_name

#: The demo's fine-tuning recipe (length-grouped batches, 10% warm-up): on SST-2 with MiniLM
#: it reaches 86.9% test accuracy in 450 steps, ~3.5 min of CPU time (BENCHMARKS.md, "SST-2 fine-tuning").
DEMO_TRAIN_SENTENCES = 16_000
DEMO_EPOCHS = 1
DEMO_LR = 1e-4


def sentence_demo(settings: Settings, corpus: str = "sst2", model: str = "minilm",
                  train_limit: int | None = DEMO_TRAIN_SENTENCES, epochs: int = DEMO_EPOCHS, max_length: int = 64,
                  batch_size: int = 32, lr: float = DEMO_LR, group_by_length: bool = True,
                  thresholds: tuple[float, ...] | None = None, seed: int = 0) -> dict:
    """Fine-tune -> extract [CLS] (train, dev) -> layer-wise probes -> clustering sweep, for one GLUE task.

    The corpus is ingested first when the lake lacks it. Train is the first
    ``train_limit`` sentences (fine-tuning and extraction take the same ones); the
    probes hold out the same 10% dev rows as the fine-tuning (same seed) and test on
    the official dev. Prints nothing; returns a summary for the caller to show.
    Extraction resolves the registry URI with :meth:`Settings.from_env`, so ``settings``
    must be the environment's (as the CLI's are).

    Parameters
    ----------
    settings : Settings
    corpus, model : str
        A sentence-level catalog corpus and a pretrained model.
    train_limit : int, optional
        Train sentences used (``None``: all).
    epochs, max_length, batch_size : int
    lr : float
        Fine-tuning settings. The defaults fit a few minutes on 2 CPU cores: max length 64
        truncates 4 of SST-2's 67,349 train sentences and none of its test (with [CLS]
        and [SEP], the longest are 66 and 55 subword tokens), length-grouped batches pad
        little, and a higher learning rate than :class:`FinetuneConfig`'s 2e-5 makes up
        for the single epoch.
    group_by_length : bool
        Batches of sentences of similar length (:class:`FinetuneConfig`).
    thresholds : tuple of float, optional
        Clustering thresholds (default: the paper's 0.0..0.9).
    seed : int

    Returns
    -------
    dict
        ``uri, lake_model, task, metric, train_sentences (used), train_rows (in the corpus),
        finetune_test, finetune_seconds, extract_seconds,
        probe_layers (probe -> dev/test metric), probe_oracle, clusters (threshold ->
        neurons kept), seconds``.
    """
    from raydund.corpora.job import ingest
    from raydund.extract.job import ExtractConfig, run_extraction
    from raydund.general.clustering import DEFAULT_THRESHOLDS
    from raydund.general.job import ClusterConfig, run_clustering, run_similarity
    from raydund.general.stream import SimilarityConfig
    from raydund.probes.job import ProbeConfig, run_probes

    start = time.perf_counter()
    lake = Lake(settings)
    if corpus_table_name(corpus) not in lake.table_names():
        ingest(corpus, settings)
    ft = run_finetune(FinetuneConfig(model=model, corpus=corpus, train_limit=train_limit, epochs=epochs,
                                     max_length=max_length, batch_size=batch_size, lr=lr, seed=seed,
                                     group_by_length=group_by_length), settings)
    train_rows = lake.read_corpus(corpus, "train").num_rows
    t_extract = time.perf_counter()
    for split, limit in (("train", train_limit), ("dev", None)):
        run_extraction(ExtractConfig(model=ft.uri, corpus=corpus, split=split, unit="cls", limit=limit),
                       settings, progress=False)
    extract_seconds = time.perf_counter() - t_extract
    run_similarity(SimilarityConfig(model=ft.lake_model, corpus=corpus, split="train", unit="cls"), settings,
                   progress=False)
    cc = run_clustering(ClusterConfig(model=ft.lake_model, corpus=corpus, split="train", unit="cls",
                                      thresholds=tuple(thresholds or DEFAULT_THRESHOLDS), seed=seed), settings)
    probes = run_probes(ProbeConfig(model=ft.lake_model, corpus=corpus, label="label", unit="cls", task=ft.task,
                                    splits=("train", "train", "dev"), seed=seed, control=False,
                                    cluster_split="train", standardize=True), settings)
    key = primary_metric(ft.task)
    layers = {r["probe"]: {"dev": r["dev"][key], "test": r["test"][key]} for r in probes["layerwise"]}
    return {
        "uri": ft.uri, "lake_model": ft.lake_model, "task": ft.task, "metric": key,
        "train_sentences": min(train_limit or train_rows, train_rows), "train_rows": train_rows,
        "finetune_test": ft.test, "finetune_seconds": ft.seconds,
        "extract_seconds": extract_seconds,
        "probe_layers": layers, "probe_oracle": layers.get("oracle"),
        "clusters": {row["threshold"]: row["neurons_kept"] for row in cc.summary_},
        "probe_run_id": probes["run_id"], "seconds": time.perf_counter() - start,
    }
