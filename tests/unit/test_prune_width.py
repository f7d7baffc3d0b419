"""Width pruning: exact folding of planted duplicate neurons, real cuts that reload, scores, bad fractions."""

import numpy as np
import pytest
import torch

from raydund.errors import UserError
from raydund.prune import evaluate, width
from tests.support import tiny_lm

IDS = torch.tensor([[5, 17, 42, 8, 99, 3, 61, 7], [9, 9, 120, 4, 33, 250, 1, 2]])
TEXTS = ["the quick brown fox jumps over the lazy dog", "a tiny model reads a few words",
         "numbers like 42 and 7 appear here", "every sentence is calibration text", "one more line of it"]


def _planted(bias: bool):
    """A tiny Llama whose MLP neuron 1 = 2.5 x neuron 0 and neuron 3 = -0.7 x neuron 2 in every block
    (and, with ``bias``, neuron 5 a constant 0.3 x silu(1.2): zero gate/up rows, biases only)."""
    model = tiny_lm.model("llama", layers=3, vocab=len(tiny_lm.tokenizer()), seed=1)
    if bias:
        import transformers as tf

        cfg = model.config
        cfg.mlp_bias = True
        torch.manual_seed(1)
        model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for m in width.mlps(model):
            for j, p, c in ((1, 0, 2.5), (3, 2, -0.7)):
                m.gate_proj.weight[j] = m.gate_proj.weight[p]
                m.up_proj.weight[j] = c * m.up_proj.weight[p]
                if bias:
                    m.gate_proj.bias[j] = m.gate_proj.bias[p]
                    m.up_proj.bias[j] = c * m.up_proj.bias[p]
            if bias:
                m.gate_proj.weight[5] = 0
                m.up_proj.weight[5] = 0
                m.gate_proj.bias[5] = 1.2
                m.up_proj.bias[5] = 0.3
    return model


@pytest.mark.parametrize("method", ["fold", "fold-cost"])
@pytest.mark.parametrize("bias", [False, True])
def test_folding_planted_duplicates_is_exact(bias, method, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = _planted(bias), tiny_lm.tokenizer()
    stats = width.collect(model, tok, TEXTS, batch_size=2)
    n_removed = 3 if bias else 2
    plans = width.plan(model, stats, method, n_removed / 32)
    for p in plans:
        assert len(p.keep) == 32 - n_removed
        removed = set(p.removed.tolist())
        # one of each planted pair goes, folded into the other; the constant one into the bias
        assert len(removed & {0, 1}) == 1 and len(removed & {2, 3}) == 1 and (5 in removed) == bias
        assert all(q not in removed for q in p.into if q >= 0)
    small = width.prune(model, plans)
    with torch.no_grad():
        want, got = model(IDS).logits, small(IDS).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # without folding the same cut is not exact
    plain = width.prune(model, width.plan(model, stats, "cluster", n_removed / 32))
    with torch.no_grad():
        assert not torch.allclose(plain(IDS).logits, want, atol=1e-4)
    # shapes, config and a plain transformers reload
    for m in width.mlps(small):
        assert m.gate_proj.weight.shape == m.up_proj.weight.shape == (32 - n_removed, 16)
        assert m.down_proj.weight.shape == (16, 32 - n_removed) and m.down_proj.bias is not None
    assert small.config.intermediate_size == 32 - n_removed and small.config.mlp_bias
    assert model.config.intermediate_size == 32 and width.mlps(model)[0].down_proj.in_features == 32
    small.save_pretrained(tmp_path / "small")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(IDS).logits, got, rtol=0, atol=0)
    assert width.parameters(again) == width.parameters(small) < width.parameters(model) + 3 * (32 + 16)


def test_statistics_match_numpy():
    model, tok = _planted(False), tiny_lm.tokenizer()
    stats = width.collect(model, tok, TEXTS, batch_size=2)
    seen = []
    hook = width.mlps(model)[1].down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    seqs = evaluate.encode(tok, TEXTS)
    with torch.no_grad():
        # the same padded batches as collect (float32 activations depend on the batch shape in
        # the last bits); the reference keeps each sentence's real tokens after the prefix
        for idx, ids, mask in evaluate.batches(seqs, 2):
            model(input_ids=ids, attention_mask=mask)
            seen[-1] = torch.cat([seen[-1][r, 1 : len(seqs[i])] for r, i in enumerate(idx)])
    hook.remove()
    H = torch.cat(seen).double().numpy()
    s = stats[1]
    assert s.n == len(H)
    np.testing.assert_allclose(s.mean, H.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s.covariance(), np.cov(H.T) * (len(H) - 1), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(s.abs_mean, np.abs(H).mean(0), rtol=1e-10)
    # the magnitude score against a NumPy reference, and the plan removes its lowest
    W = width.mlps(model)[1].down_proj.weight.detach().double().numpy()
    ref = np.sqrt((W ** 2).sum(0)) * np.abs(H).mean(0)
    np.testing.assert_allclose(width.magnitude_scores(s, W), ref, rtol=1e-6)
    plan = width.plan(model, stats, "magnitude", 0.25)[1]
    assert sorted(set(range(32)) - set(plan.keep.tolist())) == sorted(np.argsort(ref)[:8].tolist())


def test_random_and_cluster_plans():
    model, tok = _planted(False), tiny_lm.tokenizer()
    stats = width.collect(model, tok, TEXTS, batch_size=2)
    a = width.plan(model, stats, "random", 0.5, seed=3)
    b = width.plan(model, stats, "random", 0.5, seed=3)
    assert all(np.array_equal(x.keep, y.keep) and len(x.keep) == 16 for x, y in zip(a, b))
    assert not all(np.array_equal(x.keep, y.keep) for x, y in zip(a, width.plan(model, stats, "random", 0.5, seed=4)))
    # clusters: exactly k neurons go; each removed neuron folds into a kept one of its own cluster
    for method in ("fold", "fold-cost"):
        for p in width.plan(model, stats, method, 0.4):
            assert len(p.keep) == 32 - 13 and len(p.removed) == 13 and set(p.into) <= set(p.keep.tolist())
    small = width.prune(model, width.plan(model, stats, "magnitude", 0.4))
    assert small.config.intermediate_size == 19 and not small.config.mlp_bias  # no bias without folding


def test_fold_cost_against_brute_force():
    """The first neuron fold-cost removes is the one of least ||W_j||^2 var_j (1 - max r^2), from NumPy."""
    model, tok = tiny_lm.model("llama", layers=1, vocab=len(tiny_lm.tokenizer()), seed=2), tiny_lm.tokenizer()
    stats = width.collect(model, tok, TEXTS, batch_size=2)
    seen = []
    hook = width.mlps(model)[0].down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0][0, 1:]))
    with torch.no_grad():
        for ids in evaluate.encode(tok, TEXTS):
            model(torch.tensor([ids]))
    hook.remove()
    H = torch.cat(seen).double().numpy()
    r = np.corrcoef(H.T)
    np.fill_diagonal(r, 0)
    W = width.mlps(model)[0].down_proj.weight.detach().double().numpy()
    cost = (W ** 2).sum(0) * H.var(0) * (1 - (r ** 2).max(1))
    j = int(np.argmin(cost))
    p = width.plan(model, stats, "fold-cost", 1 / 32)[0]
    assert p.removed.tolist() == [j] and p.into.tolist() == [int(np.argmax(r[j] ** 2))]
    a, b = np.polyfit(H[:, p.into[0]], H[:, j], 1)
    np.testing.assert_allclose([p.slope[0], p.intercept[0]], [a, b], rtol=1e-6, atol=1e-9)


def test_first_merges_matches_scipy_cut():
    from scipy.cluster.hierarchy import cut_tree, linkage

    x = np.random.default_rng(0).normal(size=(40, 3))
    Z = linkage(x, "average")
    for m in (0, 5, 20, 39):
        got = width.first_merges(Z, m)
        want = cut_tree(Z, n_clusters=40 - m)[:, 0]
        assert got.max() + 1 == 40 - m
        # the same partition: every cluster of one is exactly one cluster of the other
        assert len({(a, b) for a, b in zip(got, want)}) == 40 - m == len(set(want))


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.2, 0.001])
def test_bad_fractions(fraction):
    model, tok = _planted(False), tiny_lm.tokenizer()
    stats = width.collect(model, tok, TEXTS[:2], batch_size=2)
    with pytest.raises(UserError, match="fraction"):
        width.plan(model, stats, "magnitude", fraction)


def test_unknown_method_and_unsupported_model():
    model = _planted(False)
    with pytest.raises(UserError, match="unknown width-pruning method"):
        width.plan(model, [], "biggest", 0.1)
    with pytest.raises(UserError, match="gated MLPs"):
        width.mlps(tiny_lm.model("gpt2"))


def test_cli_options():
    from raydund.cli import build_parser
    from raydund.cli.options import config_from
    from raydund.cli.prune_width import OPTS
    from raydund.prune.width_study import WidthConfig

    args = build_parser().parse_args(["prune-width", "--fractions", "0.1,0.25", "0.4", "--methods", "fold-cost,random"])
    cfg = config_from(args, WidthConfig, OPTS)
    assert cfg.fractions == (0.1, 0.25, 0.4) and cfg.methods == ("fold-cost", "random") and cfg.model == "smollm2"
    assert config_from(build_parser().parse_args(["prune-width"]), WidthConfig, OPTS).methods == width.METHODS
    for bad in (["--fractions", "0.1,1"], ["--methods", "fold,bogus"]):
        with pytest.raises(UserError):
            config_from(build_parser().parse_args(["prune-width", *bad]), WidthConfig, OPTS)
