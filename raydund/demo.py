"""The README's main command: CoNLL-2000 in, MiniLM activations of every layer out,
then the general-redundancy analysis (CKA of every layer pair, correlation clustering).

Later stages (probes, selection) extend this walk-through.
"""

from __future__ import annotations

import logging

from raydund import tracking
from raydund.config import Settings
from raydund.extract.job import ExtractConfig, run_extraction
from raydund.ingest import ingest
from raydund.lake import Lake, partition_counts
from raydund.redundancy import ClusterConfig, run_clustering, run_similarity
from raydund.stats.job import SimilarityConfig

log = logging.getLogger(__name__)

DEMO_CORPUS = "conll2000"
DEMO_MODEL = "minilm"
DEMO_SPLITS = ("train", "dev", "test")
#: General redundancy on ~44k tokens, as the paper does on the PTB dev set.
ANALYSIS_SPLIT = "dev"

QUERIES = '''\
import polars as pl
from raydund.config import Settings
from raydund.lake import Lake

lake = Lake(Settings.from_env())
acts = lake.scan("activations")            # LazyFrame; filters on partition columns prune files

# 1. top words for neuron 42 of layer 3
top_words = (acts.filter((pl.col("model") == "minilm") & (pl.col("layer") == 3))
             .select("word", pl.col("vector").list.get(42).alias("act"))
             .group_by("word").agg(pl.col("act").mean(), pl.len()).filter(pl.col("len") >= 5)
             .sort("act", descending=True).head(10).collect())

# 2. mean activation of neuron 42 per POS tag in layer 3 (join with the corpus table)
tags = (lake.scan("corpus_conll2000").filter(pl.col("split") == "dev")
        .select("sentence_id", "pos").explode("pos")
        .with_columns(pl.int_range(pl.len()).over("sentence_id").cast(pl.Int32).alias("word_id")))
per_tag = (acts.filter((pl.col("split") == "dev") & (pl.col("layer") == 3))
           .join(tags, on=["sentence_id", "word_id"])
           .group_by("pos").agg(pl.col("vector").list.get(42).mean().alias("mean_act"), pl.len())
           .sort("mean_act").collect())

# 3. rows per partition
counts = acts.group_by("model", "corpus", "split", "layer").agg(pl.len()).sort("split", "layer").collect()

# a whole layer as X [tokens x neurons] (float32), rows ordered by (sentence_id, word_id)
X, keys = lake.layer_matrix("minilm", "conll2000", "dev", layer=3)
'''


def run_demo(settings: Settings, limit: int | None = None) -> None:
    """Ingest CoNLL-2000, extract MiniLM for train/dev/test, show what was written."""
    result = ingest(DEMO_CORPUS, settings)
    print(f"ingested {DEMO_CORPUS}: " + ", ".join(f"{s}={n} sentences" for s, n in result.sentences.items()))
    for split in DEMO_SPLITS:
        r = run_extraction(ExtractConfig(model=DEMO_MODEL, corpus=DEMO_CORPUS, split=split, limit=limit), settings)
        print(f"extracted {DEMO_MODEL} {DEMO_CORPUS}/{split}: {r.words} words x {r.layers} layers, "
              f"{r.bytes / 1e6:.0f} MB, {r.words_per_second:,.0f} words/s (snapshot {r.snapshot_id})")
    sim = run_similarity(SimilarityConfig(model=DEMO_MODEL, corpus=DEMO_CORPUS, split=ANALYSIS_SPLIT), settings)
    print(f"\ngeneral redundancy on {DEMO_CORPUS}/{ANALYSIS_SPLIT} ({sim['tokens']} tokens x {sim['neurons']} neurons):")
    print("linear CKA between layers (0 = embeddings):")
    for i, row in enumerate(sim["similarity"].cka):
        print(f"  {i}: " + " ".join(f"{v:.2f}" for v in row))
    cc = run_clustering(ClusterConfig(model=DEMO_MODEL, corpus=DEMO_CORPUS, split=ANALYSIS_SPLIT), settings)
    print("correlation clustering (threshold on 1 - |r|: neurons kept):")
    print("  " + ", ".join(f"{r['threshold']:.1f}: {r['neurons_kept']} ({r['reduction']:.0%} fewer)" for r in cc.summary_))
    lake = Lake(settings)
    print("\nlake tables:")
    print(lake.summary())
    print(partition_counts(lake).filter(partition_counts(lake)["model"] == DEMO_MODEL).head(21))
    print(f"\nwarehouse: {settings.warehouse}\ncatalog:   {settings.catalog_uri}")
    print(f"MLflow UI: {tracking.ui_command(settings)}   (then open http://127.0.0.1:5000)")
    print("\nquery the tables with polars:\n" + QUERIES)
