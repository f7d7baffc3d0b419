"""The batched encoder against an unbatched reference that aligns words the NeuroX way.

The reference runs one sentence per forward pass (no padding) and finds each word's
subwords by tokenizing the word on its own and walking the sequence, as NeuroX does:
nothing is shared with the code under test except the model and tokenizer.
"""

import numpy as np
import pytest
import torch

from raydund.extract.encoder import Encoder, ModelSpec, load_model

SENTENCES = [
    ["Unbelievable", "tokenization", "works", ",", "really", "!"],
    ["the", "dog"],
    ["Stocks", "fell", "sharply", "in", "heavy", "trading", "on", "Monday", "."],
    ["fox"],
    ["quick", "brown", "foxes", "jumped", "over", "the", "laziest", "dogs"],
]


def reference(model, tokenizer, words, aggregation):
    """[layers, words, hidden] for one sentence, one forward, NeuroX-style alignment."""
    enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = torch.stack(model(**enc, output_hidden_states=True).hidden_states)[:, 0]
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    positions = [i for i, t in enumerate(enc["input_ids"][0].tolist()) if t not in special]
    out, cursor = [], 0
    for word in words:
        n = len(tokenizer([word], is_split_into_words=True, add_special_tokens=False)["input_ids"])
        span = positions[cursor : cursor + n]
        cursor += n
        vecs = hidden[:, span]
        out.append({"first": vecs[:, 0], "last": vecs[:, -1], "mean": vecs.mean(1)}[aggregation])
    assert cursor == len(positions)
    return torch.stack(out, 1).numpy()


def collect(chunks, sentences, n_layers):
    """Reassemble encoder chunks into one [layers, words, hidden] array per sentence."""
    got = [None] * len(sentences)
    for chunk in chunks:
        for i, (p, w) in enumerate(zip(chunk.sentence_pos, chunk.word_ids)):
            if got[p] is None:
                got[p] = np.full((n_layers, len(sentences[p]), chunk.layers.shape[2]), np.nan, np.float32)
            got[p][:, w] = chunk.layers[:, i]
    return got


@pytest.mark.parametrize("arch", ["bert", "roberta", "xlnet"])  # decoders (GPT-2): tests/unit/test_decoders.py
@pytest.mark.parametrize("aggregation", ["first", "last", "mean"])
def test_batched_words_match_unbatched_reference(tiny_model_dir, arch, aggregation):
    model, tokenizer = load_model(ModelSpec(arch, tiny_model_dir(arch)))
    enc = Encoder(model, tokenizer, aggregation=aggregation, batch_size=3)
    got = collect(enc.encode_words(SENTENCES), SENTENCES, enc.num_layers)
    for words, vecs in zip(SENTENCES, got):
        ref = reference(model, tokenizer, words, aggregation)
        hidden = model.config.hidden_size if arch != "xlnet" else model.config.d_model
        assert vecs.shape == ref.shape == (enc.num_layers, len(words), hidden)
        np.testing.assert_allclose(vecs, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["bert", "xlnet"])
def test_long_sentence_windows_take_each_word_from_its_owner_window(tiny_model_dir, arch):
    from raydund.extract.align import plan_windows, word_token_counts

    model, tokenizer = load_model(ModelSpec(arch, tiny_model_dir(arch)))
    words = (SENTENCES[0] + SENTENCES[2]) * 3
    enc = Encoder(model, tokenizer, aggregation="last", batch_size=4, max_tokens=20)
    got = collect(enc.encode_words([words]), [words], enc.num_layers)[0]
    assert not np.isnan(got).any(), "every word of a long sentence gets a vector"
    counts = word_token_counts(tokenizer([words], is_split_into_words=True).word_ids(0), len(words))
    windows, owner = plan_windows(counts, 20)
    assert len(windows) > 2
    for i, (s, e) in enumerate(windows):
        ref = reference(model, tokenizer, words[s:e], "last")
        for w in np.flatnonzero(owner == i):
            np.testing.assert_allclose(got[:, w], ref[:, w - s], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,where", [("bert", "first"), ("xlnet", "last"), ("gpt2", "last")])
def test_cls_vector_position(tiny_model_dir, arch, where):
    model, tokenizer = load_model(ModelSpec(arch, tiny_model_dir(arch)))
    enc = Encoder(model, tokenizer, batch_size=2)
    chunks = list(enc.encode_cls(SENTENCES[:4], SENTENCES[1:5]))
    for chunk in chunks:
        for i, p in enumerate(chunk.sentence_pos):
            if arch == "gpt2":  # a decoder reads the pair as one natural text
                single = tokenizer(" ".join(SENTENCES[p] + SENTENCES[p + 1]), return_tensors="pt")
            else:
                single = tokenizer(SENTENCES[p], SENTENCES[p + 1], is_split_into_words=True, return_tensors="pt")
            with torch.no_grad():
                hidden = torch.stack(model(**single, output_hidden_states=True).hidden_states)[:, 0]
            ref = hidden[:, 0] if where == "first" else hidden[:, -1]
            if arch == "xlnet":
                assert single["input_ids"][0, -1] == tokenizer.cls_token_id
            np.testing.assert_allclose(chunk.layers[:, i], ref.numpy(), atol=2e-5, rtol=1e-4)
            assert chunk.word_ids[i] == -1


def test_dropped_word_gets_zero_vector_and_is_counted(tiny_model_dir):
    model, tokenizer = load_model(ModelSpec("bert", tiny_model_dir("bert")))
    enc = Encoder(model, tokenizer)
    words = ["the", "\u200b", "dog"]  # a zero-width space: BERT's normalizer removes it
    chunk = next(enc.encode_words([words]))
    assert enc.dropped_words == 1
    row = list(chunk.word_ids).index(1)
    assert np.all(chunk.layers[:, row] == 0)
    assert np.any(chunk.layers[:, list(chunk.word_ids).index(0)] != 0)


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2"])
def test_one_tokenizer_loader_for_extraction_and_finetuning(tiny_model_dir, arch):
    """load_model's tokenizer is load_tokenizer's: pre-split words encode, padding has a token."""
    from raydund.extract.models import load_tokenizer

    folder = tiny_model_dir(arch)
    tokenizer = load_tokenizer(folder)
    _, loaded = load_model(ModelSpec(arch, folder))
    words = ["Stocks", "fell", "."]
    assert tokenizer.is_fast and tokenizer.pad_token is not None
    assert tokenizer(words, is_split_into_words=True).word_ids() == loaded(words, is_split_into_words=True).word_ids()
    assert type(tokenizer) is type(loaded) and tokenizer.pad_token == loaded.pad_token
