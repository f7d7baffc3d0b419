"""Per-token costs of decoder LLM work on a GPU, for BENCHMARKS.md's 7B projections (issue 18).

Random-initialised Llama models (the cost of a forward pass does not depend on the
weights) at two shapes:

* SmolLM2-135M (30 blocks x 576, MLP 1,536, 9 heads / 3 KV heads, vocabulary 49,152);
* Llama-2-7B blocks (4,096 wide, MLP 11,008, 32 heads, vocabulary 32,000), built with
  4 and 8 blocks: the difference gives the cost of one block, the rest the embedding
  and LM head, so 32 blocks are projected, not guessed.

For each: tokens/s of (a) an evaluation forward (logits and the mean NLL: perplexity),
(b) an extraction forward (every hidden state and every MLP's inner activation, the
input of ``down_proj``, gathered from hooks and copied to pinned host memory, as
``raydund extract --unit mlp`` would). bfloat16, batches of 32 sequences x 256 tokens.

Usage: ``python benchmarks/gpu_llm.py`` from the repository root; prints JSON lines.
"""

import json
import time

import torch

DEVICE = "cuda"
BATCH, SEQ = 32, 256

SHAPES = {
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                    vocab_size=49152, layers=(30,)),
    "llama7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                    vocab_size=32000, layers=(4, 8)),
}


def build(shape: dict, layers: int, dtype=torch.bfloat16):
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = {k: v for k, v in shape.items() if k != "layers"}
    config = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=2048, **kwargs)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


def timed(fn, repeats: int = 5) -> float:
    fn()  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def measure(name: str, shape: dict, layers: int) -> dict:
    model = build(shape, layers)
    ids = torch.randint(0, shape["vocab_size"], (BATCH, SEQ), device=DEVICE)
    inner = []
    hooks = [block.mlp.down_proj.register_forward_pre_hook(lambda _m, args: inner.append(args[0]))
             for block in model.model.layers]
    width = shape["hidden_size"] * (layers + 1) + shape["intermediate_size"] * layers
    host = torch.empty((BATCH * SEQ, width), dtype=torch.bfloat16, pin_memory=True)

    @torch.inference_mode()
    def evaluate():
        inner.clear()
        out = model(input_ids=ids, labels=ids)
        return float(out.loss)

    @torch.inference_mode()
    def extract():
        inner.clear()
        out = model.model(input_ids=ids, output_hidden_states=True)
        flat = torch.cat([h.reshape(BATCH * SEQ, -1) for h in (*out.hidden_states, *inner)], dim=1)
        host.copy_(flat, non_blocking=True)
        torch.cuda.synchronize()

    tokens = BATCH * SEQ
    row = {"shape": name, "blocks": layers, "tokens_per_batch": tokens,
           "eval_tokens_per_s": round(tokens / timed(evaluate)),
           "extract_tokens_per_s": round(tokens / timed(extract)),
           "neurons_per_token": width,
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    for hook in hooks:
        hook.remove()
    return row


def tile_rates(rows: int = 16384, width: int = 4096) -> dict:
    """TFLOP/s of one co-moment tile ``X_a^T X_b`` (``rows x width`` each) in float64 and float32:
    the unit of work of out-of-core correlation (issue 19)."""
    out = {"tile": f"{rows} x {width} x {width}"}
    for dtype in (torch.float64, torch.float32):
        Xa = torch.randn(rows, width, device=DEVICE, dtype=dtype)
        Xb = torch.randn(rows, width, device=DEVICE, dtype=dtype)
        seconds = timed(lambda Xa=Xa, Xb=Xb: Xa.T @ Xb)
        out[f"{str(dtype).removeprefix('torch.')}_tflops"] = round(2 * rows * width * width / seconds / 1e12, 1)
    return out


def main() -> None:
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    print(json.dumps(tile_rates()), flush=True)
    rows = {}
    for name, shape in SHAPES.items():
        for layers in shape["layers"]:
            rows[(name, layers)] = measure(name, shape, layers)
            torch.cuda.empty_cache()  # the model went with measure()'s frame
            torch.cuda.reset_peak_memory_stats()
            print(json.dumps(rows[(name, layers)]), flush=True)
    # 7B: seconds per token = fixed (embeddings, LM head) + blocks x per-block; project 32 blocks
    a, b = rows[("llama7b", 4)], rows[("llama7b", 8)]
    for what in ("eval", "extract"):
        s4, s8 = 1 / a[f"{what}_tokens_per_s"], 1 / b[f"{what}_tokens_per_s"]
        per_block = (s8 - s4) / 4
        fixed = s4 - 4 * per_block
        print(json.dumps({"projection": "llama7b, 32 blocks", "what": what,
                          "tokens_per_s": round(1 / (fixed + 32 * per_block)),
                          "per_block_us_per_token": round(per_block * 1e6, 3),
                          "fixed_us_per_token": round(fixed * 1e6, 3)}), flush=True)


if __name__ == "__main__":
    main()
