"""Hooked units (MLP inner activations, attention outputs) against a recomputation from the weights.

For every block ``l`` and every word's last token, with ``h_l`` the residual stream entering
the block (unit ``word``, layer ``l``), ``a_l`` the hooked attention output and ``m_l`` the
hooked MLP activation, NumPy recomputes from the model's weights:

- ``m_l`` = act(gate(norm(h_l + a_l))) * up(norm(h_l + a_l)) (Llama), act(fc(ln(h_l + a_l))) (GPT-2);
- ``h_{l+1}`` = h_l + a_l + down(m_l) (the final norm applied after the last block).

Together they pin both units: the attention output is the only term the residual leaves.
"""

import numpy as np
import pytest

from raydund.errors import UserError
from raydund.extract.encoder import UNITS, Encoder, ModelSpec, load_model
from raydund.extract.units import hooked_modules, unit_width

SENTENCES = [["Hello", ",", "wörld", "!"], ["stocks", "fell", "3.5", "%", "on", "Monday", "."], ["fox"]]


def rows(model, tokenizer, unit):
    enc = Encoder(model, tokenizer, batch_size=2, unit=unit)
    out = {}
    for chunk in enc.encode_words(SENTENCES):
        for i, key in enumerate(zip(chunk.sentence_pos, chunk.word_ids)):
            out[key] = chunk.layers[:, i].astype(np.float64)
    keys = sorted(out)
    return np.stack([out[k] for k in keys], 1), enc.num_layers  # [layers x words x width]


def weight(module):
    return module.weight.detach().double().numpy()


def rms_norm(x, module, gemma=False):
    w = weight(module)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + module.variance_epsilon) * ((1 + w) if gemma else w)


def layer_norm(x, module):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + module.eps) * weight(module) + module.bias.detach().double().numpy()


def bias(module):
    return module.bias.detach().double().numpy()


def gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def silu(x):
    return x / (1 + np.exp(-x))


def gelu_new(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_hooked_units_match_a_recomputation_from_the_weights(tiny_model_dir, arch):
    model, tokenizer = load_model(ModelSpec(arch, tiny_model_dir(arch, layers=3)))
    h, n_hidden = rows(model, tokenizer, "word")
    m, n_mlp = rows(model, tokenizer, "mlp")
    a, n_attn = rows(model, tokenizer, "attn")
    blocks = {"llama": lambda: model.layers, "gpt2": lambda: model.h, "bert": lambda: model.encoder.layer}[arch]()
    assert n_hidden == 4 and n_mlp == n_attn == 3, "block l of a hooked unit is layer l"
    assert m.shape[2] == unit_width(model, "mlp") == (64 if arch == "gpt2" else 32)
    assert a.shape[2] == unit_width(model, "attn") == 16
    for layer, block in enumerate(blocks):
        mid = h[layer] + a[layer]
        if arch == "bert":  # post-norm: the norms come after each residual add
            x = layer_norm(mid, block.attention.output.LayerNorm)
            inner = gelu(x @ weight(block.intermediate.dense).T + bias(block.intermediate.dense))
            np.testing.assert_allclose(m[layer], inner, atol=1e-5, rtol=1e-4)
            out = layer_norm(x + m[layer] @ weight(block.output.dense).T + bias(block.output.dense),
                             block.output.LayerNorm)
            np.testing.assert_allclose(h[layer + 1], out, atol=1e-5, rtol=1e-4)
            continue
        if arch == "llama":
            x = rms_norm(mid, block.post_attention_layernorm)
            inner = silu(x @ weight(block.mlp.gate_proj).T) * (x @ weight(block.mlp.up_proj).T)
            out = mid + m[layer] @ weight(block.mlp.down_proj).T
        else:
            x = layer_norm(mid, block.ln_2)
            inner = gelu_new(x @ weight(block.mlp.c_fc) + block.mlp.c_fc.bias.detach().double().numpy())
            out = mid + m[layer] @ weight(block.mlp.c_proj) + block.mlp.c_proj.bias.detach().double().numpy()
        np.testing.assert_allclose(m[layer], inner, atol=1e-5, rtol=1e-4)
        if layer == len(blocks) - 1:
            out = rms_norm(out, model.norm) if arch == "llama" else layer_norm(out, model.ln_f)
        np.testing.assert_allclose(h[layer + 1], out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,inner", [("qwen2", 32), ("mistral", 32), ("gemma", 32), ("gpt_neox", 32)])
def test_every_decoder_family_has_both_units(tiny_model_dir, arch, inner):
    model, tokenizer = load_model(ModelSpec(arch, tiny_model_dir(arch)))
    for unit, width in (("mlp", inner), ("attn", 16)):
        values, layers = rows(model, tokenizer, unit)
        assert layers == 2 and values.shape == (2, sum(map(len, SENTENCES)), width) and np.isfinite(values).all()


def test_units_of_an_architecture_without_known_blocks_are_refused(tiny_model_dir):
    model, _ = load_model(ModelSpec("xlnet", tiny_model_dir("xlnet")))
    with pytest.raises(UserError, match="--unit mlp is not supported for architecture 'xlnet'"):
        hooked_modules(model, "mlp")


def test_cli_units_are_the_encoders():
    from raydund.cli.options import UNITS as CLI_UNITS

    assert CLI_UNITS == UNITS


def test_reduced_model_on_mlp_neurons_keeps_their_block_and_reads_the_same_values(tiny_model_dir, tmp_path):
    """A reduced model selecting MLP neurons of layer 1 keeps blocks 0..1 and reads them through the hook."""
    from raydund.transfer.reduced import ReducedModel, save_reduced

    folder = tiny_model_dir("llama", layers=3)
    neurons = np.array([2, 32 + 7, 32 + 30])  # one of block 0, two of block 1 (32 MLP neurons each)
    save_reduced(tmp_path / "r", folder, 1, neurons, np.eye(3), np.zeros(3),
                 {"unit": "mlp", "aggregation": "last", "classes": ["A", "B", "C"], "task": "pos"})
    reduced = ReducedModel.from_folder(tmp_path / "r")
    assert reduced.encoder.num_layers == 2
    full, _ = rows(*load_model(ModelSpec("llama", folder)), "mlp")
    got = np.concatenate(reduced.features(SENTENCES))
    np.testing.assert_allclose(got, np.stack([full[0, :, 2], full[1, :, 7], full[1, :, 30]], 1), atol=1e-5)
