"""Pruning evaluations against unbatched transformers references on tiny random LMs."""

import numpy as np
import pytest
import torch

from raydund.errors import UserError
from raydund.prune import evaluate
from tests.support import tiny_lm

TEXTS = ["the quick brown fox", "stocks fell sharply in heavy trading on monday , really !",
         "unbelievable", "the lazy dog jumped over 42 foxes"]


@pytest.fixture(scope="module")
def tok():
    return tiny_lm.tokenizer()


def _seq_logprob(model, ids):
    """Reference: transformers' own mean loss on one unpadded sequence, times its scored tokens."""
    ids = torch.tensor([ids])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    return -loss * (ids.shape[1] - 1)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_perplexity_matches_unbatched_loss(family, tok):
    model = tiny_lm.model(family, vocab=len(tok))
    pre = evaluate.prefix_ids(tok)
    assert pre == [tok.bos_token_id]  # this tokenizer adds no BOS: the prefix is its BOS
    ref_nll = -sum(_seq_logprob(model, pre + tok(t).input_ids) for t in TEXTS)
    ref_count = sum(len(tok(t).input_ids) for t in TEXTS)
    total, count = evaluate.nll(model, tok, TEXTS, batch_size=3)  # padded batches of different lengths
    assert count == ref_count
    assert total == pytest.approx(ref_nll, rel=1e-5)
    assert evaluate.perplexity(model, tok, TEXTS, batch_size=2) == pytest.approx(np.exp(ref_nll / ref_count), rel=1e-5)


def test_label_scores_match_difference_of_sequence_logprobs(tok):
    model = tiny_lm.model("llama", vocab=len(tok))
    pre = evaluate.prefix_ids(tok)
    got = evaluate.label_scores(model, tok, TEXTS[:3], batch_size=4)
    for i, t in enumerate(TEXTS[:3]):
        ctx = pre + tok(evaluate.SST2_PROMPT.format(t)).input_ids
        for j, w in enumerate(evaluate.SST2_WORDS):
            full = ctx + tok(w, add_special_tokens=False).input_ids
            assert got[i, j] == pytest.approx(_seq_logprob(model, full) - _seq_logprob(model, ctx), abs=1e-4)
    acc = evaluate.zero_shot_accuracy(model, tok, TEXTS[:3], [0, 1, 1])
    assert acc == pytest.approx(np.mean(got.argmax(1) == [0, 1, 1]))


def test_word_alignment_last_subword(tok):
    words = ["Stocks", "fell", "42.5%", "in", "Zürich", ",", "naïvely", "!"]
    ids, last = evaluate.word_token_index(tok, words)
    pre = evaluate.prefix_ids(tok)
    assert ids[: len(pre)] == pre and min(last) >= len(pre)
    assert last == sorted(last) and last[-1] == len(ids) - 1
    for i in range(len(words)):  # decoding up to a word's last subword gives exactly the words so far
        assert tok.decode(ids[len(pre) : last[i] + 1]) == " ".join(words[: i + 1])
        if i:
            assert tok.decode(ids[len(pre) : last[i - 1] + 1]) != " ".join(words[: i + 1])


def test_word_vectors_and_hidden_states_match_transformers(tok):
    model = tiny_lm.model("llama", vocab=len(tok))
    sents = [t.split() for t in TEXTS]
    vecs = evaluate.word_vectors(model, tok, sents, batch_size=3)
    assert vecs.shape == (sum(map(len, sents)), 16)
    row = 0
    for s in sents:
        ids, last = evaluate.word_token_index(tok, s)
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(vecs[row : row + len(s)], hs[-1][0, last].numpy(), rtol=1e-4, atol=1e-5)
        row += len(s)
    H = evaluate.hidden_states(model, tok, TEXTS[:1])
    ids = evaluate.encode(tok, TEXTS[:1])[0]
    with torch.no_grad():
        hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert len(H) == 7 and H[0].shape == (len(ids) - 1, 16)  # prefix left out
    for level in range(6):
        np.testing.assert_allclose(H[level], hs[level][0, 1:].numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # H[L] is before the final norm
        np.testing.assert_allclose(model.model.norm(torch.tensor(H[6])).numpy(), hs[6][0, 1:].numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_probe_and_disjoint():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = np.where(x[:, 0] > 0, "A", "B")
    assert evaluate.probe_accuracy(x[:150], y[:150], x[150:], y[150:]) > 0.95
    evaluate.check_disjoint(["a b"], ["b a"])
    with pytest.raises(UserError, match="must not overlap"):
        evaluate.check_disjoint(["a b", "c"], ["c", "d"])


def test_word_hidden_states_pick_last_subwords(tok):
    model = tiny_lm.model("gpt2", vocab=len(tok))
    sents = [t.split() for t in TEXTS]
    Hw = evaluate.word_hidden_states(model, tok, sents, batch_size=3)
    assert len(Hw) == 7 and Hw[0].shape == (sum(map(len, sents)), 16)
    ids, last = evaluate.word_token_index(tok, sents[1])
    with torch.no_grad():
        hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    row = len(sents[0])
    for level in range(6):
        np.testing.assert_allclose(Hw[level][row : row + len(sents[1])], hs[level][0, last].numpy(),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_one_token_label_words_take_one_forward_per_text(family, tok):
    model = tiny_lm.model(family, vocab=len(tok))
    words = ("a", "b", ".")  # single tokens of the tiny tokenizer
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in words)
    got = evaluate.label_scores(model, tok, TEXTS, words=words, batch_size=3)  # rows of different lengths
    pre = evaluate.prefix_ids(tok)
    for i, t in enumerate(TEXTS):
        ctx = pre + tok(evaluate.SST2_PROMPT.format(t)).input_ids
        for j, w in enumerate(words):
            full = ctx + tok(w, add_special_tokens=False).input_ids
            assert got[i, j] == pytest.approx(_seq_logprob(model, full) - _seq_logprob(model, ctx), abs=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_perplexity_and_word_vectors_from_one_pass_equal_the_two_passes(family, tok):
    model = tiny_lm.model(family, vocab=len(tok))
    sents = [t.split() for t in TEXTS]
    assert evaluate.same_ids(tok, sents)
    ppl, vecs = evaluate.perplexity_and_word_vectors(model, tok, sents, batch_size=3)
    assert ppl == pytest.approx(evaluate.perplexity(model, tok, evaluate.join(sents), batch_size=2), rel=1e-6)
    np.testing.assert_allclose(vecs, evaluate.word_vectors(model, tok, sents, batch_size=2), atol=1e-5)
