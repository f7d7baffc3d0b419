"""The demo's LLM part end to end on a tiny random Llama beside a tiny BERT (real Ray, Iceberg, MLflow)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from references import ref_cka
from test_explore import TAGS, toy_sentences

from raydund.lake import Lake, runs
from raydund.workflows.llm_demo import llm_demo

SENTENCES = {"train": 16, "dev": 12, "test": 10}


def corpus_table(sentences: list[list[str]]) -> pa.Table:
    return pa.table({"sentence_id": pa.array(range(len(sentences)), pa.int64()), "words": sentences,
                     "pos": [[TAGS[w] for w in s] for s in sentences]})


@pytest.mark.slow
def test_llm_part_on_a_tiny_llama_beside_a_tiny_bert(settings, tiny_model_dir, ray_local):
    llama, bert = tiny_model_dir("llama", layers=4), tiny_model_dir("bert", layers=2)
    sentences = toy_sentences(90, seed=3)
    lake = Lake(settings)
    lake.write_corpus("toy", {split: corpus_table(sentences[i::3]) for i, split in enumerate(("train", "dev", "test"))})

    out = llm_demo(settings, model=llama, baseline=bert, tasks={"toy": ("pos",)}, sentences=SENTENCES, limit=14,
                   robust_tokens=60, name="tiny-llama")
    part = out["corpora"]["toy"]
    llm, base = part["llm"], part["baseline"]
    assert llm["model"] == "tiny-llama" and base is not None  # the baseline had no results: analysed here
    # the first sentences of each split, --limit applied on top of the LLM part's own limits
    for split, n in (("train", 14), ("dev", 12), ("test", 10)):
        expected = sum(len(s) for s in sentences[("train", "dev", "test").index(split)::3][:n])
        assert llm["words"][split] == base["words"][split] == expected
    # general redundancy of the LLM: 4 blocks + embeddings, CKA as NumPy computes it from the stored layers
    dev = [lake.layer_matrix("tiny-llama", "toy", "dev", layer)[0] for layer in range(5)]
    assert llm["neurons"] == 5 * 16
    np.testing.assert_allclose(llm["adjacent_cka"], [ref_cka(dev[i], dev[i + 1]) for i in range(4)], atol=1e-6)
    for model in ("tiny-llama", base["model"]):
        probe = runs.latest(lake, "probes", model, "toy", "probe_results", task="pos", unit="word")
        assert probe is not None and 0 <= llm["probes"]["pos"]["oracle"] <= 1
    # one comparison page: both models in every section, the runs it read named
    page = settings.report_dir(f"{base['model']}+tiny-llama", "toy") / "index.html"
    assert part["page"] == str(page)
    text = page.read_text(encoding="utf-8")
    for name in (f"cka_{base['model']}", "cka_tiny-llama", "cc_threshold_curves", "layerwise_pos_tiny-llama",
                 "layerwise_pos_depth", "robust_adjacent_tiny-llama", f"robust_adjacent_{base['model']}"):
        assert f'alt="{name}"' in text
    built = json.loads((page.parent / "sources.json").read_text())
    assert {(r["model"], r["stage"]) for r in built} == {
        (m, s) for m in (base["model"], "tiny-llama") for s in ("similarity", "cluster", "probes", "robust-cka")}

    # a second run reuses the baseline's results (as the demo does for MiniLM x CoNLL-2000)
    again = llm_demo(settings, model=llama, baseline=bert, tasks={"toy": ("pos",)}, sentences=SENTENCES, limit=14,
                     robust_tokens=60, name="tiny-llama")
    assert again["corpora"]["toy"]["baseline"] is None
