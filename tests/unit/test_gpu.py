"""The CUDA paths against the CPU paths they replace (skipped where no GPU is present).

CI has no GPU; these run on a lent accelerator (see BENCHMARKS.md, "GPU checks"):
the float64 co-moment products, the probe banks (float32 and ``auto`` -> bfloat16), the
encoder's forward pass and the pruning evaluations, each compared with the same computation
on the CPU.
"""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_co_moments_on_cuda_equal_the_cpu_blas_products():
    from raydund.general.moments import add_block_rows, to_numpy

    rng = np.random.default_rng(0)
    widths = [48, 48, 48]
    off = np.concatenate([[0], np.cumsum(widths)])
    D = np.asfortranarray(rng.standard_normal((2000, off[-1])) * [1e-3] * off[-1] + 5.0)
    for rows in ([0, 1, 2], [1]):
        cpu, gpu = {}, {}
        add_block_rows(cpu, D, off, rows, len(widths), device="cpu")
        add_block_rows(gpu, D, off, rows, len(widths), device="cuda")
        gpu = to_numpy(gpu)
        for key, value in cpu.items():
            got = gpu[key]
            if key == "all":  # the CPU path fills the upper triangle only
                got, value = np.triu(got), np.triu(value)
            np.testing.assert_allclose(got, value, rtol=1e-12, atol=1e-9)


def planted(T=6000, N=64, C=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((T, N)).astype(np.float32)
    y = (X[:, :C] + 0.3 * rng.standard_normal((T, C))).argmax(1)
    return X, y, C


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_probe_bank_on_cuda_learns_what_the_cpu_bank_learns(precision):
    from raydund.probes.model import ProbeBank, resolve_precision

    X, y, C = planted()
    masks = np.zeros((3, X.shape[1]), bool)
    masks[0] = True            # every neuron (the oracle)
    masks[1, :C] = True        # the planted neurons
    masks[2, C:] = True        # noise only
    kwargs = dict(masks=masks, epochs=5, lr=1e-2, batch_size=256, seed=0)
    cpu = ProbeBank(**kwargs, precision="float32", device="cpu").fit(X[:5000], y[:5000], C)
    gpu = ProbeBank(**kwargs, precision=precision, device="cuda").fit(X[:5000], y[:5000], C)
    # auto is float32 on CUDA: the step is launch-bound there and bfloat16's casts cost more (measured)
    assert gpu.precision_ == precision and resolve_precision("auto", "cuda") == "float32"
    acc = lambda bank: (bank.predict(X[5000:]) == y[5000:]).mean(1)  # noqa: E731
    a_cpu, a_gpu = acc(cpu), acc(gpu)
    assert a_gpu[0] > 0.7 and a_gpu[1] > 0.7 and a_gpu[2] < 0.4  # the planted structure, found on the GPU
    np.testing.assert_allclose(a_gpu, a_cpu, atol=0.02)
    if precision == "float32":  # same seed, same batches: the same weights up to float32 reduction order
        np.testing.assert_allclose(gpu.coef_, cpu.coef_, atol=2e-3)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_encoder_on_cuda_matches_the_cpu(tiny_model_dir, arch):
    from raydund.extract.encoder import Encoder, ModelSpec, load_model

    sentences = [["Stocks", "fell", "sharply", "on", "Monday", "."], ["the", "dog"], ["quick", "brown", "fox"]]
    spec = ModelSpec(arch, tiny_model_dir(arch))
    out = {}
    for device in ("cpu", "cuda"):
        model, tokenizer = load_model(spec, device=device)
        chunks = list(Encoder(model, tokenizer, batch_size=2).encode_words(sentences))
        order = np.concatenate([c.sentence_pos * 100 + c.word_ids for c in chunks])
        out[device] = np.concatenate([c.layers for c in chunks], axis=1)[:, np.argsort(order)]
    np.testing.assert_allclose(out["cuda"], out["cpu"], atol=1e-4, rtol=1e-3)


def test_pruning_evaluations_on_cuda_equal_the_cpu_ones(tmp_path):
    from raydund.prune import evaluate, models
    from raydund.prune.surgery import resumed
    from tests.support import tiny_lm

    folder = tiny_lm.save("llama", tmp_path / "tiny", layers=4)
    half = tiny_lm.model("llama", 4, 16, vocab=len(tiny_lm.tokenizer())).to(torch.bfloat16)
    half.save_pretrained(tmp_path / "bf16")
    tiny_lm.tokenizer().save_pretrained(tmp_path / "bf16")
    model, _ = models.load(str(tmp_path / "bf16"), device="cuda")
    assert model.dtype == torch.bfloat16 and model.device.type == "cuda"  # kept in its saved dtype
    cpu, tok = models.load(str(folder))
    gpu, _ = models.load(str(folder), dtype=torch.float32, device="cuda")
    texts = ["the quick brown fox jumps", "over the lazy dog again and again", "a b c"]
    sents = [t.split() for t in texts]
    assert evaluate.perplexity(gpu, tok, texts, 2) == pytest.approx(evaluate.perplexity(cpu, tok, texts, 2), rel=1e-4)
    np.testing.assert_allclose(evaluate.word_vectors(gpu, tok, sents, 2), evaluate.word_vectors(cpu, tok, sents, 2),
                               atol=1e-4)
    cache = evaluate.block_inputs(gpu, tok, texts, 2)
    with resumed(gpu, (2,), cache):
        p = evaluate.perplexity(gpu, tok, texts, 2)
    with resumed(cpu, (2,), None):
        assert p == pytest.approx(evaluate.perplexity(cpu, tok, texts, 2), rel=1e-4)
