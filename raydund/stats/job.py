"""The general-redundancy pass: activation files -> Ray tasks -> co-moments -> r and CKA.

The tokens of one (model, corpus, split) are sliced the way extraction wrote them:
one extraction shard (one file per layer, the same words in each) is one slice. For
every slice, ``groups`` Ray tasks each compute some block rows of ``G`` (layer ``l``
against layers ``m >= l``), one of them also the small accumulators ``n, s, Q, U``;
every task subtracts the same shift (the first slice's mean), so the driver just adds
what comes back. No process ever holds all tokens x all neurons.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raydund.errors import UserError
from raydund.lake import Lake, vectors_to_matrix
from raydund.stats.moments import Moments, block_rows, extras

log = logging.getLogger(__name__)

KEY_COLUMNS = ["sentence_id", "word_id", "dtype", "vector", "vector_bits"]


@dataclasses.dataclass
class SimilarityConfig:
    """What to measure.

    Attributes
    ----------
    model, corpus, split, unit : str
        The activations to read (as extracted).
    groups : int, optional
        Tasks per token slice, each with a share of the layer-pair blocks
        (default: enough that a task's blocks stay under ~256 MB).
    skip_first : bool
        Leave out the first word of every sentence (outlier tokens; Davari et al.).
    chunk_rows : int
        Rows per product inside a task.
    num_gpus : float
        GPUs per task; products run in float64 on the GPU when there is one.
    """

    model: str
    corpus: str
    split: str
    unit: str = "word"
    groups: int | None = None
    skip_first: bool = False
    chunk_rows: int = 4096
    num_gpus: float = 0


def slices_of(files: list[tuple[int, str]]) -> list[dict[int, str]]:
    """Group activation files into token slices: the files of one extraction shard."""
    by_folder: dict[str, dict[int, str]] = defaultdict(dict)
    for layer, path in files:
        by_folder[os.path.dirname(path)][layer] = path
    layers = sorted({layer for layer, _ in files})
    slices = [by_folder[k] for k in sorted(by_folder)]
    for s in slices:
        if sorted(s) != layers:
            raise UserError("activation files are not laid out one file per layer per shard; re-run extraction")
    return slices


def balance_blocks(n_layers: int, groups: int) -> list[list[int]]:
    """Split block rows 0..L-1 (row l holds L-l blocks) into groups of about equal work."""
    groups = max(1, min(groups, n_layers))
    loads = [0] * groups
    out: list[list[int]] = [[] for _ in range(groups)]
    for layer in range(n_layers):  # largest rows first: greedy onto the lightest group
        g = int(np.argmin(loads))
        out[g].append(layer)
        loads[g] += n_layers - layer
    return [sorted(g) for g in out if g]


def read_slice(paths: dict[int, str], skip_first: bool = False) -> list[np.ndarray]:
    """One float32 matrix ``[tokens x width]`` per layer of one slice, rows in (sentence, word) order.

    Kept per layer (not stacked) so a task never holds a second copy of the slice.
    """
    mats, keys = [], None
    for layer in sorted(paths):
        table = _read(paths[layer]).sort_by([("sentence_id", "ascending"), ("word_id", "ascending")])
        k = (table.column("sentence_id").to_numpy(), table.column("word_id").to_numpy())
        if keys is None:
            keys = k
        elif not (np.array_equal(keys[0], k[0]) and np.array_equal(keys[1], k[1])):
            raise UserError(f"layer files of one shard hold different words: {paths[layer]}")
        X = vectors_to_matrix(table)
        mats.append(X[keys[1] > 0] if skip_first else X)
    return mats


def stacked_rows(mats: list[np.ndarray], start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of all layers side by side, as float64."""
    return np.hstack([m[start:stop] for m in mats]).astype(np.float64, copy=False)


def _read(uri: str) -> pa.Table:
    import pyarrow.fs as pafs  # noqa: PLC0415

    fs, path = pafs.FileSystem.from_uri(uri)
    return pq.read_table(path, filesystem=fs, columns=KEY_COLUMNS)


def slice_task(paths: dict[int, str], shift: np.ndarray, blocks: list[int], with_extras: bool,
               skip_first: bool, chunk_rows: int) -> dict:
    """Ray task body: block rows of ``G`` (and optionally ``n, s, Q, U``) for one slice."""
    mats = read_slice(paths, skip_first)
    widths = tuple(m.shape[1] for m in mats)
    tokens = len(mats[0])
    off = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    device = _device()
    out = {"blocks": {l: np.zeros((widths[l], off[-1] - off[l])) for l in blocks}}
    acc = Moments.empty(widths, shift) if with_extras else None
    for start in range(0, tokens, chunk_rows):
        D = stacked_rows(mats, start, start + chunk_rows)
        D -= shift
        for l, rows in block_rows(D, off, blocks, device).items():
            out["blocks"][l] += rows
        if acc is not None:
            extras(acc, D)
    if acc is not None:
        out.update(n=acc.n, s=acc.s, Q=acc.Q, U=acc.U)
    out["tokens"] = tokens
    return out


def _device() -> str:
    try:
        import torch  # noqa: PLC0415

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def compute_moments(lake: Lake, cfg: SimilarityConfig, progress: bool = True) -> Moments:
    """Stream every slice of the activations through Ray tasks; return the summed moments."""
    import ray  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from raydund.extract.job import ensure_ray  # noqa: PLC0415

    ensure_ray()
    slices = slices_of(lake.activation_files(cfg.model, cfg.corpus, cfg.split, cfg.unit))
    first = read_slice(slices[0], cfg.skip_first)
    widths = tuple(m.shape[1] for m in first)
    shift = stacked_rows(first, 0, cfg.chunk_rows).mean(axis=0)
    del first
    N, L = sum(widths), len(widths)
    groups = cfg.groups or max(1, int(np.ceil(N * N * 8 / 2 / (256 << 20))))
    plan = balance_blocks(L, groups)
    task = ray.remote(num_cpus=1, num_gpus=cfg.num_gpus)(slice_task)
    shift_ref = ray.put(shift)
    jobs = [(paths, blocks, g == 0) for paths in slices for g, blocks in enumerate(plan)]
    total = Moments.empty(widths, shift)
    off = total.offsets
    pending, cursor = [], 0
    limit = max(2, int(ray.available_resources().get("CPU", 2)) * 2)  # bounded in-flight work = bounded memory
    with tqdm(total=len(jobs), desc=f"co-moments {cfg.corpus}/{cfg.split}", unit="task", disable=not progress) as bar:
        while cursor < len(jobs) or pending:
            while cursor < len(jobs) and len(pending) < limit:
                paths, blocks, with_extras = jobs[cursor]
                pending.append(task.remote(paths, shift_ref, blocks, with_extras, cfg.skip_first, cfg.chunk_rows))
                cursor += 1
            ready, pending = ray.wait(pending, num_returns=1)
            part = ray.get(ready[0])
            for l, rows in part["blocks"].items():
                total.G[off[l] : off[l + 1], off[l] :] += rows
            if "n" in part:
                total.n += part["n"]
                total.s += part["s"]
                total.Q += part["Q"]
                total.U += part["U"]
            bar.update(1)
    if total.n < 4:
        raise UserError(f"only {total.n} tokens: too few for correlations and debiased CKA")
    log.info("co-moments of %d tokens x %d neurons from %d slices (%d tasks)", total.n, N, len(slices), len(jobs))
    return total


def layer_of(widths: tuple[int, ...]) -> np.ndarray:
    """Layer index of every neuron on the stacked axis."""
    return np.repeat(np.arange(len(widths)), widths)


__all__ = ["SimilarityConfig", "balance_blocks", "compute_moments", "layer_of", "read_slice", "slices_of",
           "slice_task"]
