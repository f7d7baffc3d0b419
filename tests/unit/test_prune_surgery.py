"""Depth-pruning surgery: a real smaller model, exact forward, exact cached generation, save/load."""

import pytest
import torch

from raydund.errors import UserError
from raydund.prune import surgery
from tests.support import tiny_lm

IDS = torch.tensor([[5, 17, 42, 8, 99, 3, 61, 7]])


def _skipping(model, drop):
    """Reference: the full model with the dropped blocks turned into identities (forward hooks)."""
    handles = []
    for i in drop:
        def hook(module, args, kwargs, output):
            inp = args[0] if args else kwargs["hidden_states"]
            return (inp, *output[1:]) if isinstance(output, tuple) else inp
        handles.append(surgery.blocks(model)[i].register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            return model(IDS).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", tiny_lm.FAMILIES)
def test_forward_equals_skipping_blocks(family):
    model = tiny_lm.model(family)
    drop = (1, 4)
    small = surgery.drop_blocks(model, drop)
    assert surgery.num_blocks(small) == 4 and small.config.num_hidden_layers == 4
    assert surgery.num_blocks(model) == 6  # the original is untouched
    assert small.config.raydund_kept_blocks == [0, 2, 3, 5]
    with torch.no_grad():
        got = small(IDS).logits
    torch.testing.assert_close(got, _skipping(model, drop), rtol=1e-5, atol=1e-5)
    # and it differs from the full model (the blocks did something)
    with torch.no_grad():
        assert not torch.allclose(got, model(IDS).logits, atol=1e-4)
    idx = [m.layer_idx for b in surgery.blocks(small) for m in b.modules() if hasattr(m, "layer_idx")]
    assert sorted(set(idx)) == [0, 1, 2, 3]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_cached_generation_equals_uncached(family):
    small = surgery.drop_blocks(tiny_lm.model(family), [0, 3, 5])
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = small.generate(IDS, use_cache=True, **kw)
        plain = small.generate(IDS, use_cache=False, **kw)
    assert cached.shape[1] == IDS.shape[1] + 12
    assert torch.equal(cached, plain)


def test_save_load_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    small = surgery.drop_blocks(tiny_lm.model("llama"), [2, 3])
    small.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert surgery.num_blocks(back) == 4 and back.config.raydund_kept_blocks == [0, 1, 4, 5]
    with torch.no_grad():
        torch.testing.assert_close(back(IDS).logits, small(IDS).logits)


def test_dropped_context_restores():
    model = tiny_lm.model("llama")
    with torch.no_grad():
        before = model(IDS).logits
        with surgery.dropped(model, [1, 2]) as m:
            assert m is model and surgery.num_blocks(model) == 4
            during = model(IDS).logits
        after = model(IDS).logits
    torch.testing.assert_close(during, _skipping(model, [1, 2]))
    assert torch.equal(before, after) and model.config.num_hidden_layers == 6
    assert not hasattr(model.config, "raydund_kept_blocks")


def test_bad_requests():
    model = tiny_lm.model("gpt2")
    with pytest.raises(UserError, match="out of range"):
        surgery.drop_blocks(model, [6])
    with pytest.raises(UserError, match="all 6"):
        surgery.drop_blocks(model, range(6))
    with pytest.raises(UserError, match="does not support"):
        surgery.block_path(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gpt_neox"])
def test_resumed_forward_equals_dropped_model(family):
    from raydund.prune import evaluate

    tok = tiny_lm.tokenizer()
    model = tiny_lm.model(family, vocab=len(tok))
    texts = ["the quick brown fox", "stocks fell sharply in heavy trading", "unbelievable", "the lazy dog"]
    cache = evaluate.block_inputs(model, tok, texts, batch_size=3)
    for drop in [(3,), (2, 5), (0, 4), (1,), ()]:
        ref = evaluate.perplexity(surgery.drop_blocks(model, drop), tok, texts, batch_size=3)
        with surgery.resumed(model, drop, cache) as m:
            got = evaluate.perplexity(m, tok, texts, batch_size=3)
        assert got == pytest.approx(ref, rel=1e-6)
        assert surgery.num_blocks(model) == 6 and model.config.num_hidden_layers == 6
    with pytest.raises(RuntimeError, match="does not match"), surgery.resumed(model, (2,), cache) as m:
        evaluate.perplexity(m, tok, texts[:2], batch_size=3)
    # from the stream of the model without a base set (a SLEB step): resumed at the first other block
    seqs = evaluate.encode(tok, texts)
    base = (1, 3)
    cache = evaluate.seq_block_inputs(model, seqs, batch_size=3, base=base)
    assert [x is None for x in cache[0]] == [i in base for i in range(6)]
    for drop in [(1, 3, 4), (1, 3, 5), (0, 1, 3), (1, 2, 3), (1, 3)]:
        ref = evaluate.perplexity(surgery.drop_blocks(model, drop), tok, texts, batch_size=3)
        with surgery.resumed(model, drop, cache, base) as m:
            got = evaluate.perplexity(m, tok, texts, batch_size=3)
        assert got == pytest.approx(ref, rel=1e-6)
    runs = []
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: runs.append(i)) for i, b in enumerate(surgery.blocks(model))]
    with surgery.resumed(model, (1, 3, 4), cache, base) as m:
        evaluate.perplexity(m, tok, texts, batch_size=3)
    for h in hooks:
        h.remove()
    assert set(runs) == {5}  # blocks 0 and 2 are replayed, not run
    with pytest.raises(ValueError, match="keeps"), surgery.resumed(model, (1, 4), cache, base):
        pass
