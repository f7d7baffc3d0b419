"""The README's main command: the paper's analyses on MiniLM, end to end.

CoNLL-2000 (POS, chunking) and PMB semantic tags: ingest, activations of every layer for
train/dev/test, general redundancy on dev (CKA, correlation clustering), task-specific
redundancy per task (layer-wise probes, control task, minimal neuron set, the clustering
sweep per task), LayerSelector + CCFS with a registered reduced model and timing, the
neuron browser, and one HTML report per corpus. Then a sentence-level task: MiniLM
fine-tuned on SST-2 (a subsample) with Ray Train, registered, its [CLS] extracted,
layer-wise probes and the clustering sweep on it. Last, the LLM part
(:mod:`raydund.workflows.llm_demo`): SmolLM2 beside MiniLM on UD-EWT (UPOS) and
CoNLL-2000 (POS), one comparison page per corpus.
"""

from __future__ import annotations

import logging

from raydund import tracking
from raydund.config import Settings
from raydund.corpora.job import ingest
from raydund.explore import build_browser
from raydund.extract.job import ExtractConfig, run_extraction
from raydund.general.job import ClusterConfig, run_clustering, run_similarity
from raydund.general.stream import SimilarityConfig
from raydund.lake import Lake, partition_counts
from raydund.probes.job import ProbeConfig, run_probes
from raydund.report.html import build_report
from raydund.transfer.job import TransferConfig, format_table, run_transfer
from raydund.workflows.llm_demo import LLM_MODEL, LLM_SENTENCES, llm_demo
from raydund.workflows.sentence_demo import DEMO_EPOCHS, DEMO_LR, sentence_demo

log = logging.getLogger(__name__)

#: The demo's tasks: corpus -> label columns (the paper's POS, Chunking and SEM).
DEMO_TASKS = {"conll2000": ("pos", "chunk"), "pmb_semtag": ("semtag",)}
#: Probes train on the first 30k train tokens (the paper: 150k) so the demo fits 2 CPU cores.
DEMO_TRAIN_TOKENS = 30_000
#: SST-2 test accuracy of MiniLM fine-tuned with the demo's recipe on all 67,349 train
#: sentences (measured: BENCHMARKS.md, "SST-2 fine-tuning"); the demo uses a subsample.
SST2_FULL_ACCURACY = 0.890
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


def prepare_corpus(settings: Settings, corpus: str, limit: int | None = None) -> None:
    """Ingest a corpus, extract MiniLM for train/dev/test, general redundancy on its dev split."""
    result = ingest(corpus, settings)
    print(f"ingested {corpus}: " + ", ".join(f"{s}={n} sentences" for s, n in result.sentences.items()))
    for split in DEMO_SPLITS:
        r = run_extraction(ExtractConfig(model=DEMO_MODEL, corpus=corpus, split=split, limit=limit), settings)
        print(f"extracted {DEMO_MODEL} {corpus}/{split}: {r.words} words x {r.layers} layers, "
              f"{r.bytes / 1e6:.0f} MB, {r.words_per_second:,.0f} words/s (snapshot {r.snapshot_id})")
    sim = run_similarity(SimilarityConfig(model=DEMO_MODEL, corpus=corpus, split=ANALYSIS_SPLIT), settings)
    print(f"\ngeneral redundancy on {corpus}/{ANALYSIS_SPLIT} ({sim['tokens']} tokens x {sim['neurons']} neurons):")
    print("linear CKA between layers (0 = embeddings):")
    for i, row in enumerate(sim["similarity"].cka):
        print(f"  {i}: " + " ".join(f"{v:.2f}" for v in row))
    cc = run_clustering(ClusterConfig(model=DEMO_MODEL, corpus=corpus, split=ANALYSIS_SPLIT), settings)
    print("correlation clustering (threshold on 1 - |r|: neurons kept):")
    print("  " + ", ".join(f"{r['threshold']:.1f}: {r['neurons_kept']} ({r['reduction']:.0%} fewer)"
                          for r in cc.summary_))


def analyse_tasks(settings: Settings, corpus: str, labels: tuple[str, ...], train_limit: int) -> str:
    """Task-specific redundancy per label, then LS + CCFS and the report; returns the report's path."""
    for label in labels:
        out = run_probes(ProbeConfig(model=DEMO_MODEL, corpus=corpus, label=label, train_limit=train_limit,
                                     cluster_split=ANALYSIS_SPLIT), settings)
        redundant = [r["probe"] for r in out["layerwise"] if r["redundant"]]
        oracle = next(r for r in out["layerwise"] if r["probe"] == "oracle")
        print(f"\n{corpus} {label}: oracle test accuracy {100 * oracle['test']['accuracy']:.2f}; "
              f"layers within 99% of it: {', '.join(redundant) or 'none'}; minimal neuron set: {out['minimal']['k']}")
    transfer = run_transfer(TransferConfig(model=DEMO_MODEL, corpus=corpus, labels=labels, train_limit=train_limit),
                            settings)
    print(f"\nLayerSelector + CCFS on {corpus} (thresholds 1% / 1%; dev and test accuracy %):")
    print(format_table(transfer["rows"]))
    for r in transfer["timing"]["reduced_vs_full"]:
        print(f"  {r['task']}: the reduced model ({r['layers']} layers, {r['neurons']} neurons) runs "
              f"{r['speedup']:.1f}x faster than the full model + oracle probe")
    for label, uri in transfer["registered"].items():
        print(f"  registered reduced model for {label}: {uri}")
    build_browser(settings, DEMO_MODEL, corpus, split=ANALYSIS_SPLIT)
    return str(build_report(settings, transfer["run_id"]))


def print_llm(summary: dict) -> None:
    """What the LLM part found, per corpus: the LLM beside the baseline."""
    for corpus, part in summary["corpora"].items():
        print(f"\nLLM part on {corpus}:")
        for role in ("baseline", "llm"):
            s = part[role]
            if s is None:
                print("  baseline: the analyses above")
                continue
            adjacent = s["adjacent_cka"]
            print(f"  {s['model']}: {s['words']['train']:,} train words ({s['words_per_second']:,.0f} words/s), "
                  f"{s['neurons']:,} neurons; adjacent-layer linear CKA >= 0.99 for {sum(v >= 0.99 for v in adjacent)} "
                  f"of {len(adjacent)} pairs, without massive-activation tokens for "
                  f"{sum(v >= 0.99 for v in s['adjacent_robust'])} (at most {s['massive_dimensions']} massive "
                  f"dimensions in a layer)")
            print("    clustering, neurons kept: " + ", ".join(f"{t:.1f}: {n}" for t, n in s["kept"].items()
                                                               if round(10 * t) % 3 == 0))
            for label, p in s["probes"].items():
                print(f"    {label}: oracle test {100 * p['oracle']:.1f}%, best single {p['best']} "
                      f"({100 * p['best_test']:.1f}%), minimal neuron set {p['minimal']}")
        print(f"  side by side: {part['page']}")
    print(f"LLM part: {summary['seconds'] / 60:.1f} min")


def paper_demo(settings: Settings, limit: int | None, train_limit: int) -> list[str]:
    """MiniLM on CoNLL-2000, PMB semantic tags and SST-2 (prints as it goes); returns the reports' paths."""
    reports = []
    for corpus, labels in DEMO_TASKS.items():
        prepare_corpus(settings, corpus, limit)
        reports.append(analyse_tasks(settings, corpus, labels, train_limit))
    sst = sentence_demo(settings, corpus="sst2")
    print(f"\nSST-2: MiniLM fine-tuned on the first {sst['train_sentences']:,} train sentences "
          f"({DEMO_EPOCHS} epoch, lr {DEMO_LR:.0e}, {sst['finetune_seconds'] / 60:.1f} min) reaches test "
          f"{sst['metric']} {100 * sst['finetune_test'][sst['metric']]:.1f}% "
          f"(the same recipe on all {sst['train_rows']:,}: "
          f"{100 * SST2_FULL_ACCURACY:.1f}%, BENCHMARKS.md); registered as {sst['uri']}")
    print("  [CLS] probes per layer (test %):")
    print("  " + ", ".join(f"{name}: {100 * v['test']:.1f}" for name, v in sst["probe_layers"].items()))
    print("  clustering sweep, neurons kept: " + ", ".join(f"{t:.1f}: {n}" for t, n in sst["clusters"].items()))
    return reports


def run_demo(settings: Settings, limit: int | None = None, train_limit: int = DEMO_TRAIN_TOKENS,
             llm: bool = True, paper: bool = True) -> None:
    """The paper's analyses on MiniLM: CoNLL-2000 (POS, chunking), PMB semantic tags and SST-2, end to end
    (``paper``); then (``llm``) SmolLM2 beside MiniLM on UD-EWT and CoNLL-2000."""
    reports = []
    if paper:
        reports = paper_demo(settings, limit, train_limit)
    if llm:
        first = {s: n if limit is None else min(n, limit) for s, n in LLM_SENTENCES.items()}
        print(f"\nthe LLM part: {LLM_MODEL} (first {', '.join(f'{n} {s}' for s, n in first.items())} "
              "sentences) beside MiniLM")
        summary = llm_demo(settings, limit=limit, train_limit=train_limit)
        print_llm(summary)
        reports += [part["page"] for part in summary["corpora"].values()]
    lake = Lake(settings)
    print("\nlake tables:")
    print(lake.summary())
    print(partition_counts(lake).filter(partition_counts(lake)["model"] == DEMO_MODEL).head(21))
    print(f"\nwarehouse: {settings.warehouse}\ncatalog:   {settings.catalog_uri}")
    print(f"MLflow UI: {tracking.redact(tracking.ui_command(settings))}   (then open http://127.0.0.1:5000)")
    print("\nquery the tables with polars:\n" + QUERIES)
    print("reports (open in a browser; the neuron browser is linked from each):")
    for path in reports:
        print(f"  {path}")
