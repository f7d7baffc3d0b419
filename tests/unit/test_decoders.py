"""Decoder LLMs: words of natural text aligned to tokens, per family, against the tokenizer itself.

The reference never uses the code under test: a word's tokens are those that encoding the
sentence up to that word adds to the encoding of the sentence before it (decoder
tokenizers are prefix-stable at spaces), and every token's own offsets must fall inside
its word (plus the space before it). Vectors are checked against one unpadded forward pass
of the natural text.
"""

import numpy as np
import pytest
import torch

from raydund.extract.encoder import Encoder, ModelSpec, load_model
from raydund.extract.text import encode_natural, is_decoder

FAMILIES = ["llama", "mistral", "gemma", "qwen2", "gpt_neox", "gpt2"]
SENTENCES = [
    ["Hello", ",", "wörld", "!"],
    ["Prices", "rose", "3.14", "%", "in", "Zürich", "(", "naïve", ")", "café", "日本", "don't", "."],
    ["fox"],
    ["the", "quick", "brown", "fox", "jumped", "over", "the", "lazy", "dog", "42", "times", "..."],
]


def reference_spans(tokenizer, words):
    """(token ids of the sentence, [token positions of each word]) from prefix encodings."""
    full = tokenizer(" ".join(words))["input_ids"]
    spans, done = [], None
    for i in range(len(words)):
        ids = tokenizer(" ".join(words[: i + 1]))["input_ids"]
        assert ids == full[: len(ids)], "prefix-stable"
        before = len(done) if done is not None else (1 if tokenizer.bos_token_id == full[0] else 0)
        spans.append(list(range(before, len(ids))))
        done = ids
    assert len(done) == len(full)
    return full, spans


@pytest.mark.parametrize("arch", FAMILIES)
def test_alignment_matches_prefix_encodings_and_offsets(tiny_model_dir, arch):
    model, tokenizer = load_model(ModelSpec(arch, tiny_model_dir(arch)))
    assert is_decoder(model.config)
    for words, (ids, wids) in zip(SENTENCES, encode_natural(tokenizer, SENTENCES)):
        full, spans = reference_spans(tokenizer, words)
        assert ids == full
        expected = [None] * len(full)
        for w, span in enumerate(spans):
            assert span, f"word {words[w]!r} has tokens"
            for t in span:
                expected[t] = w
        assert wids == expected
        offsets = tokenizer(" ".join(words), return_offsets_mapping=True)["offset_mapping"]
        starts = np.cumsum([0] + [len(w) + 1 for w in words])
        for t, w in enumerate(wids):
            if w is None:
                assert ids[t] in tokenizer.all_special_ids
                continue
            lo, hi = offsets[t]
            assert max(starts[w] - 1, 0) <= lo and hi <= starts[w] + len(words[w]), (arch, t, words[w])


@pytest.mark.parametrize("arch,bos", [("llama", True), ("gemma", True), ("qwen2", False), ("gpt2", False)])
def test_bos_is_added_as_the_tokenizer_does_and_is_never_a_word(tiny_model_dir, arch, bos):
    _, tokenizer = load_model(ModelSpec(arch, tiny_model_dir(arch)))
    (ids, wids), = encode_natural(tokenizer, [["the", "dog"]])
    assert (ids[0] == tokenizer.bos_token_id) is bos
    assert wids[0] is (None if bos else 0)
    assert sorted({w for w in wids if w is not None}) == [0, 1]


def unbatched(model, tokenizer, words, aggregation):
    """[layers, words, hidden] from one unpadded forward of the sentence's text."""
    full, spans = reference_spans(tokenizer, words)
    with torch.no_grad():
        hidden = torch.stack(model(torch.tensor([full]), output_hidden_states=True).hidden_states)[:, 0]
    pick = {"first": lambda s: hidden[:, s[0]], "last": lambda s: hidden[:, s[-1]],
            "mean": lambda s: hidden[:, s].mean(1)}[aggregation]
    return torch.stack([pick(s) for s in spans], 1).numpy()


def collect(chunks, sentences):
    got = [None] * len(sentences)
    for chunk in chunks:
        for i, (p, w) in enumerate(zip(chunk.sentence_pos, chunk.word_ids)):
            if got[p] is None:
                got[p] = np.full((chunk.layers.shape[0], len(sentences[p]), chunk.layers.shape[2]), np.nan)
            got[p][:, w] = chunk.layers[:, i]
    return got


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("aggregation", ["last", "first", "mean"])
def test_batched_word_vectors_match_one_unpadded_pass(tiny_model_dir, arch, aggregation):
    model, tokenizer = load_model(ModelSpec(arch, tiny_model_dir(arch)))
    enc = Encoder(model, tokenizer, aggregation=aggregation, batch_size=3)
    assert enc.num_layers == model.config.num_hidden_layers + 1
    for words, vecs in zip(SENTENCES, collect(enc.encode_words(SENTENCES), SENTENCES)):
        np.testing.assert_allclose(vecs, unbatched(model, tokenizer, words, aggregation), atol=2e-5, rtol=1e-4)


def test_long_sentence_windows_on_a_decoder(tiny_model_dir):
    from raydund.extract.align import plan_windows, word_token_counts

    model, tokenizer = load_model(ModelSpec("llama", tiny_model_dir("llama")))
    words = SENTENCES[1] + SENTENCES[3] + SENTENCES[1]
    enc = Encoder(model, tokenizer, batch_size=4, max_tokens=24)
    got = collect(enc.encode_words([words]), [words])[0]
    counts = word_token_counts(encode_natural(tokenizer, [words])[0][1], len(words))
    windows, owner = plan_windows(counts, 24)
    assert len(windows) > 2 and not np.isnan(got).any()
    for i, (s, e) in enumerate(windows):
        ref = unbatched(model, tokenizer, words[s:e], "last")
        for w in np.flatnonzero(owner == i):
            np.testing.assert_allclose(got[:, w], ref[:, w - s], atol=2e-5, rtol=1e-4)


def test_decoder_sentence_vector_is_the_last_token_of_the_text(tiny_model_dir):
    model, tokenizer = load_model(ModelSpec("qwen2", tiny_model_dir("qwen2")))
    enc = Encoder(model, tokenizer, batch_size=2, unit="cls")
    first, second = [SENTENCES[0], SENTENCES[2], SENTENCES[3]], [SENTENCES[2], SENTENCES[0], SENTENCES[2]]
    for chunk in enc.encode_cls(first, second):
        for i, p in enumerate(chunk.sentence_pos):
            ids = tokenizer(" ".join(first[p] + second[p]), return_tensors="pt")["input_ids"]
            with torch.no_grad():
                ref = torch.stack(model(ids, output_hidden_states=True).hidden_states)[:, 0, -1]
            np.testing.assert_allclose(chunk.layers[:, i], ref.numpy(), atol=2e-5, rtol=1e-4)


def test_decoder_tokenizer_is_loaded_as_shipped(tiny_model_dir):
    """No add_prefix_space reload for decoders: the first word has no leading space, padding is right."""
    _, tokenizer = load_model(ModelSpec("gpt2", tiny_model_dir("gpt2")))
    assert not tokenizer.convert_ids_to_tokens(tokenizer("the dog")["input_ids"])[0].startswith("\u0120")
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is not None


def test_encoder_decoder_models_are_refused(tmp_path):
    from transformers import T5Config, T5Model

    from raydund.errors import UserError

    T5Model(T5Config(vocab_size=50, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="encoder-decoder"):
        load_model(ModelSpec("t5", str(tmp_path)))


def _bf16_copy(tiny_model_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    folder = tiny_model_dir("llama")
    AutoModel.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path)
    return folder, str(tmp_path)


def test_half_precision_model_runs_in_float32_on_the_cpu(tiny_model_dir, tmp_path):
    _, folder = _bf16_copy(tiny_model_dir, tmp_path)
    model, _ = load_model(ModelSpec("bf16", folder))
    assert model.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_half_precision_model_keeps_its_dtype_on_the_gpu(tiny_model_dir, tmp_path):
    source, folder = _bf16_copy(tiny_model_dir, tmp_path)
    model, tokenizer = load_model(ModelSpec("bf16", folder), device="cuda")
    assert model.dtype == torch.bfloat16
    got = collect(Encoder(model, tokenizer, batch_size=3).encode_words(SENTENCES), SENTENCES)
    cpu_model, cpu_tok = load_model(ModelSpec("f32", source))
    ref = collect(Encoder(cpu_model, cpu_tok, batch_size=3).encode_words(SENTENCES), SENTENCES)
    for g, r in zip(got, ref):
        assert g.dtype == np.float64 or g.dtype == np.float32
        np.testing.assert_allclose(g, r, atol=0.1, rtol=0.05)  # bfloat16 weights and arithmetic
