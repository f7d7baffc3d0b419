"""Synthetic activations with known structure, written in the extraction file layout.

For benchmarks at sizes no real model here can produce quickly (the paper's 13 x 768
neurons over 150k tokens) and for tests that plant structure and recover it. The data
go through the same path as extracted activations: one Parquet file per layer per
shard, registered in one Iceberg commit.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydund.extract.actor import PARQUET_OPTIONS, vectors_column
from raydund.lake import ACTIVATION_SCHEMA, Lake


def structured_chunk(rng: np.random.Generator, rows: int, widths: tuple[int, ...], mixing: np.ndarray,
                     means: np.ndarray) -> np.ndarray:
    """Rows of a residual-stream-like signal: shared low-rank factors plus noise, per-neuron means."""
    factors = rng.standard_normal((rows, mixing.shape[0]), dtype=np.float32)
    noise = rng.standard_normal((rows, sum(widths)), dtype=np.float32)
    return factors @ mixing + noise + means


def write_activations(lake: Lake, layers: list[np.ndarray] | None = None, *, model: str, corpus: str,
                      split: str, tokens: int | None = None, widths: tuple[int, ...] | None = None,
                      shard_tokens: int = 20_000, sentence_len: int = 20, rank: int = 64, seed: int = 0) -> int:
    """Write activations into the lake; return the snapshot id.

    Either give ``layers`` (one ``[tokens x width]`` matrix per layer) or ``tokens`` and
    ``widths`` to generate :func:`structured_chunk` data shard by shard (bounded memory).
    """
    rng = np.random.default_rng(seed)
    if layers is not None:
        tokens, widths = len(layers[0]), tuple(m.shape[1] for m in layers)
    else:
        N = sum(widths)
        mixing = (rng.standard_normal((rank, N), dtype=np.float32) * rng.uniform(0, 2, (rank, 1)).astype(np.float32))
        means = rng.uniform(-3, 3, N).astype(np.float32)
    table = lake.activations()
    scheme = table.location().split("://", 1)[0]
    fs, root = pafs.FileSystem.from_uri(f"{table.location()}/data/synthetic/{model}-{corpus}-{split}-{seed}")
    files = []
    off = np.concatenate([[0], np.cumsum(widths)])
    for shard, start in enumerate(range(0, tokens, shard_tokens)):
        stop = min(tokens, start + shard_tokens)
        rows = np.arange(start, stop)
        block = (np.hstack([m[start:stop] for m in layers]) if layers is not None
                 else structured_chunk(rng, stop - start, widths, mixing, means))
        folder = f"{root}/shard-{shard:06d}"
        fs.create_dir(folder, recursive=True)
        n = len(rows)
        for layer in range(len(widths)):
            columns = np.ascontiguousarray(block[:, off[layer] : off[layer + 1]], np.float32)
            vec, bits = vectors_column(columns, "float32")
            data = pa.Table.from_pydict({
                "model": [model] * n, "corpus": [corpus] * n, "split": [split] * n, "unit": ["word"] * n,
                "layer": pa.array(np.full(n, layer, np.int32)), "sentence_id": rows // sentence_len,
                "word_id": (rows % sentence_len).astype(np.int32), "word": pa.nulls(n, pa.string()),
                "dtype": ["float32"] * n, "vector": vec, "vector_bits": bits}, schema=ACTIVATION_SCHEMA)
            path = f"{folder}/layer-{layer:03d}.parquet"
            pq.write_table(data, path, filesystem=fs, **PARQUET_OPTIONS)
            files.append(f"{scheme}://{path}")
    return lake.commit_activation_files(files, model, corpus, split, "word", {"benchmarks.synthetic": seed})


__all__ = ["structured_chunk", "write_activations"]
