"""raydund's activations against NeuroX 1.0.9 on the real MiniLM model.

NeuroX runs one sentence per forward pass and aligns words by re-tokenizing them;
raydund batches, pads and aligns with word_ids(), then stores through Ray and
Iceberg. For the same sentences, `last` aggregation, the vectors agree to 1e-4.
"""

import contextlib
import io
import json

import h5py
import numpy as np
import pyarrow as pa
import pytest

from raydund.extract.encoder import resolve_model
from raydund.extract.job import ExtractConfig, run_extraction
from raydund.lake import Lake

pytestmark = pytest.mark.slow  # the real MiniLM model

neurox = pytest.importorskip("neurox.data.extraction.transformers_extractor",
                             reason="NeuroX 1.0.9 is installed by `make setup`")

SENTENCES = [
    "Confidence in the pound is widely expected to take another sharp dive .",
    "Unbelievably , tokenization works",
    "He reckons the current account deficit will narrow to only # 1.8 billion in September .",
    "The dog",
    "Mr. Vinken is chairman of Elsevier N.V. , the Dutch publishing group .",
    "Rolls-Royce Motor Cars Inc. said it expects its U.S. sales to remain steady at about 1,200 cars in 1990 .",
    "a",
]


@pytest.mark.usefixtures("ray_local")
def test_lake_activations_match_neurox_last(settings, tmp_path):
    source = resolve_model("minilm").source
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    with contextlib.redirect_stdout(io.StringIO()):
        neurox.extract_representations(source, str(text), str(tmp_path / "nx.hdf5"), aggregation="last")
    words = [s.split() for s in SENTENCES]
    lake = Lake(settings)
    lake.write_corpus("ref", {"dev": pa.table({"sentence_id": pa.array(range(len(words)), pa.int64()),
                                               "words": words})})
    run_extraction(ExtractConfig(model="minilm", corpus="ref", split="dev", batch_size=4), settings, progress=False)

    with h5py.File(tmp_path / "nx.hdf5") as h5:
        assert len(json.loads(h5["sentence_to_index"][0])) == len(SENTENCES)
        ref = {i: h5[str(i)][()] for i in range(len(SENTENCES))}  # datasets "0".."n-1": [layers, words, 384]
    n_layers = ref[0].shape[0]
    assert n_layers == 7
    for layer in range(n_layers):
        X, keys = lake.layer_matrix("minilm", "ref", "dev", layer)
        expected = np.concatenate([ref[i][layer] for i in range(len(SENTENCES))])
        assert X.shape == expected.shape == (sum(map(len, words)), 384)
        np.testing.assert_allclose(X, expected, atol=1e-4, rtol=0)
