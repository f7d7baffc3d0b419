"""Hooked units through the lake: extraction with --unit mlp/attn, read back, and analysed like any unit."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from raydund.extract.encoder import Encoder, ModelSpec, load_model
from raydund.extract.job import ExtractConfig, run_extraction
from raydund.lake import Lake

pytestmark = pytest.mark.usefixtures("ray_local")

SENTENCES = [["the", "quick", "brown", "fox", "jumped", "."], ["Stocks", "fell", "3.5", "%", "on", "Monday"],
             ["naïve", "café", ",", "really", "!"], ["dog"]] * 3


def direct(model_dir, unit):
    model, tok = load_model(ModelSpec("ref", model_dir))
    enc = Encoder(model, tok, batch_size=5, unit=unit)
    rows = {}
    for chunk in enc.encode_words(SENTENCES):
        for i, key in enumerate(zip(chunk.sentence_pos, chunk.word_ids)):
            rows[key] = chunk.layers[:, i]
    keys = sorted(rows)
    return np.stack([rows[k] for k in keys], 1), keys


@pytest.mark.slow
@pytest.mark.parametrize("unit", ["mlp", "attn"])
def test_hooked_unit_round_trips_through_the_lake_beside_the_residual_stream(settings, tiny_model_dir, unit):
    from raydund.general.job import SimilarityConfig, run_similarity

    lake = Lake(settings)
    labels = [["P" if not w[0].isalnum() else "N" if w[0].isdigit() else "W" for w in s] for s in SENTENCES]
    lake.write_corpus("toy", {"train": pa.table({"sentence_id": pa.array(range(len(SENTENCES)), pa.int64()),
                                                  "words": SENTENCES, "pos": labels})})
    model_dir = tiny_model_dir("llama")
    for u in ("word", unit):
        run_extraction(ExtractConfig(model=model_dir, corpus="toy", split="train", unit=u, name="tiny-llama",
                                     shard_words=25, batch_size=4), settings, progress=False)
    ref, keys = direct(model_dir, unit)
    assert ref.shape[0] == 2
    for layer in range(2):
        X, row_keys = lake.layer_matrix("tiny-llama", "toy", "train", layer, unit=unit)
        assert list(zip(row_keys["sentence_id"].to_pylist(), row_keys["word_id"].to_pylist())) == keys
        assert row_keys["word"].to_pylist() == [SENTENCES[s][w] for s, w in keys]
        np.testing.assert_allclose(X, ref[layer], atol=1e-5)
    with pytest.raises(Exception, match="layers 0..1"):  # block l is layer l: no layer 2 of a hooked unit
        lake.layer_matrix("tiny-llama", "toy", "train", 2, unit=unit)
    assert lake.layer_matrix("tiny-llama", "toy", "train", 2, unit="word")[0].shape == (len(keys), 16)

    sim = run_similarity(SimilarityConfig(model="tiny-llama", corpus="toy", split="train", unit=unit), settings,
                         progress=False)["similarity"]
    assert sim.cka.shape == (2, 2) and np.allclose(np.diag(sim.cka), 1.0)
    assert sim.n == len(keys)
    if unit == "mlp":  # probes read a hooked unit like any per-word unit
        from raydund.probes.job import ProbeConfig, run_probes

        run_probes(ProbeConfig(model="tiny-llama", corpus="toy", label="pos", unit=unit, control=False,
                               splits=("train", "train", "train"), epochs=2, workers=1), settings)
        rows = lake.scan("probe_results").filter(pl.col("analysis") == "layerwise").collect()
        assert set(rows["layer"].drop_nulls().to_list()) >= {0, 1}
