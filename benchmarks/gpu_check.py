"""GPU figures for BENCHMARKS.md ("GPU checks"): run on a CUDA machine, prints JSON lines.

* probe banks at the paper's MiniLM x POS shape (layer-wise bank: 6 layers + embeddings,
  the prefixes and the oracle = 14 probes over 2,688 neurons; 45,000 train tokens,
  44 classes, 10 epochs, batch 128), float32 and bfloat16 products, fit seconds;
* the streaming co-moment products (float64) at BERT-base's shape (9,984 neurons) in
  4,096-row chunks from host memory, GFLOP/s against 2 T N^2.

Usage: ``python benchmarks/gpu_check.py`` from the repository root.
"""

import json
import time

import numpy as np
import torch

DEVICE = "cuda"


def layer_masks(widths) -> np.ndarray:
    """Each layer, the prefixes 0..l (l >= 1) and the oracle, as the layer-wise analysis trains them."""
    off = np.concatenate([[0], np.cumsum(widths)])
    rows = [(off[i], off[i + 1]) for i in range(len(widths))] + [(0, off[i + 1]) for i in range(1, len(widths))]
    masks = np.zeros((len(rows), off[-1]), bool)
    for p, (a, b) in enumerate(rows):
        masks[p, a:b] = True
    return masks


def probe_bank_seconds(precision: str, T=45_000, widths=(384,) * 7, C=44, epochs=10) -> dict:
    from raydund.probes.model import ProbeBank

    rng = np.random.default_rng(0)
    N = sum(widths)
    X = rng.standard_normal((T, N)).astype(np.float32)
    y = (X[:, :C] + 0.5 * rng.standard_normal((T, C))).argmax(1)
    masks = layer_masks(widths)
    bank = ProbeBank(masks=masks, epochs=1, batch_size=128, precision=precision, device=DEVICE)
    bank.fit(X[:2000], y[:2000], C)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    bank = ProbeBank(masks=masks, epochs=epochs, batch_size=128, precision=precision, device=DEVICE)
    bank.fit(X, y, C)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    acc = float((bank.predict(X[-5000:])[-1] == y[-5000:]).mean())
    return {"check": "probe_bank", "precision": bank.precision_, "probes": int(masks.shape[0]), "neurons": N,
            "tokens": T, "classes": C, "epochs": epochs, "fit_s": round(seconds, 2), "oracle_train_acc": acc}


def comoment_rate(T=49_152, N=9_984, chunk=4_096) -> dict:
    from raydund.general.moments import add_block_rows

    rng = np.random.default_rng(0)
    off = np.arange(0, N + 1, N // 26)
    off[-1] = N
    D = np.asfortranarray(rng.standard_normal((chunk, N)))
    acc = {}
    add_block_rows(acc, D, off, list(range(len(off) - 1)), len(off) - 1, device="cuda")  # warm-up
    torch.cuda.synchronize()
    acc = {}
    start = time.perf_counter()
    for _ in range(T // chunk):
        add_block_rows(acc, D, off, list(range(len(off) - 1)), len(off) - 1, device="cuda")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    flops = 2.0 * T * N * N
    return {"check": "comoments_float64", "tokens": T, "neurons": N, "seconds": round(seconds, 2),
            "gflops": round(flops / seconds / 1e9, 1)}


if __name__ == "__main__":
    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__}))
    for precision in ("float32", "bfloat16"):
        print(json.dumps(probe_bank_seconds(precision)), flush=True)
    print(json.dumps(comoment_rate()), flush=True)
