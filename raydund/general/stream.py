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

from raydund import memory
from raydund.errors import UserError
from raydund.general.moments import (
    Moments,
    add_block_rows,
    add_packed_lower,
    centred_chunk,
    extras,
    pack_upper,
    symmetrize,
    to_numpy,
)
from raydund.lake import Lake, vectors_to_matrix

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
        Tasks per token slice, each with a share of the layer-pair block rows (default 1:
        a task owns all of G and does one ``dsyrk`` per chunk, the cheapest; more groups
        spread one slice over more workers and hold less of G per task).
    skip_first : bool
        Leave out the first word of every sentence (outlier tokens; Davari et al.).
    chunk_rows : int
        Rows per product inside a task.
    cpus_per_task : float
        CPUs (= BLAS threads) per task. One thread per task lets one task decode Parquet
        while another multiplies; wider tasks hold less memory per core.
    num_gpus : float
        GPUs per task; products run in float64 on the GPU when there is one.
    device : str, optional
        Force the products' device: ``"cpu"`` (NumPy BLAS), ``"cuda"``; default: a GPU when
        the task sees one (``RAYDUND_DEVICE`` overrides), see :func:`products_device`.
    """

    model: str
    corpus: str
    split: str
    unit: str = "word"
    groups: int | None = None
    skip_first: bool = False
    chunk_rows: int = 4096
    cpus_per_task: float = 1
    num_gpus: float = 0
    device: str | None = None


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


def iter_slice(paths: dict[int, str], batch_rows: int, skip_first: bool = False):
    """Yield, batch by batch, one float32 matrix ``[rows x width]`` per layer of one slice.

    The layer files of a shard hold the same words in the same row order (the extraction
    actor writes every layer from the same chunks), so they are read in lockstep; the keys
    are checked batch by batch. Only a few batches are ever in memory.
    """
    files = [_open(paths[layer]) for layer in sorted(paths)]
    rows = {f.metadata.num_rows for f in files}
    if len(rows) != 1:
        raise UserError(f"layer files of one shard differ in length: {sorted(paths.values())[0]} ...")
    streams = [f.iter_batches(batch_size=batch_rows, columns=KEY_COLUMNS) for f in files]
    for batches in zip(*streams):
        sentence, word = batches[0].column("sentence_id"), batches[0].column("word_id")
        for b in batches[1:]:
            if not (b.column("sentence_id").equals(sentence) and b.column("word_id").equals(word)):
                raise UserError(f"layer files of one shard hold different words: {sorted(paths.values())[0]} ...")
        mats = [vectors_to_matrix(pa.Table.from_batches([b])) for b in batches]
        if skip_first:
            keep = word.to_numpy() > 0
            mats = [m[keep] for m in mats]
        yield mats


def _open(uri: str) -> pq.ParquetFile:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    return pq.ParquetFile(fs.open_input_file(path))


def slice_task(slices: list[dict[int, str]], shift: np.ndarray, blocks: list[int], with_extras: bool,
               skip_first: bool, chunk_rows: int, device: str | None = None) -> dict:
    """Ray task body: block rows ``blocks`` of ``G`` (and optionally ``n, s, Q, U``) over some
    slices, streamed in chunks of ``chunk_rows`` tokens into one accumulator.

    When the task owns all of ``G`` (and it is one ``dsyrk`` target, up to
    ``SYRK_MAX_NEURONS``) its upper triangle comes back packed (``"packed"``, half the
    bytes of G through the object store); otherwise the block rows (``"blocks"``, the
    upper block triangle: also about half).
    """
    device = products_device(device)
    acc, extra, off = {}, None, None
    chunks = (mats for paths in slices for mats in iter_slice(paths, chunk_rows, skip_first))
    for mats in chunks:
        if off is None:
            widths = tuple(m.shape[1] for m in mats)
            off = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
            extra = Moments.empty(widths, shift) if with_extras else None
        if not len(mats[0]):
            continue
        D = centred_chunk(mats, shift, off)
        add_block_rows(acc, D, off, blocks, len(off) - 1, device)
        if extra is not None:
            extras(extra, [D[:, off[l] : off[l + 1]] for l in range(len(off) - 1)])
        del D, mats  # the next chunk's buffers replace these, never sit beside them
    acc = to_numpy(acc)
    pa.default_memory_pool().release_unused()  # the Parquet readers' pages go back to the OS
    out = {}
    if "all" in acc:
        out["packed"] = pack_upper(acc.pop("all"))  # the N x N accumulator is freed right after
    out["blocks"] = acc
    if extra is not None:
        out.update(n=extra.n, s=extra.s, Q=extra.Q, U=extra.U)
    return out


def products_device(requested: str | None = None) -> str:
    """Where the co-moment products run: ``"cpu"`` (NumPy BLAS) or a torch device.

    ``requested`` wins, then ``RAYDUND_DEVICE``; otherwise ``"cuda"`` when this process
    sees a GPU (a Ray task given ``num_gpus`` does; one without sees none) and ``"cpu"``
    when it does not or torch is missing. Both run :func:`~raydund.general.moments.add_block_rows`.
    """
    choice = requested or os.environ.get("RAYDUND_DEVICE") or "auto"
    if choice != "auto":
        return choice
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def slice_tokens(slices: list[dict[int, str]]) -> int:
    """Tokens of all slices, from the Parquet footers of one layer (no data read)."""
    return sum(_open(paths[min(paths)]).metadata.num_rows for paths in slices)


def compute_moments(lake: Lake, cfg: SimilarityConfig, progress: bool = True) -> Moments:
    """Stream every slice of the activations through Ray tasks; return the summed moments."""
    import ray
    from tqdm import tqdm

    from raydund.extract.job import ensure_ray

    ensure_ray()
    slices = slices_of(lake.activation_files(cfg.model, cfg.corpus, cfg.split, cfg.unit))
    widths = tuple(m.shape[1] for m in next(iter_slice(slices[0], 1)))  # one row per layer
    N, L = sum(widths), len(widths)
    groups = cfg.groups or 1
    cpus = min(cfg.cpus_per_task, ray.cluster_resources().get("CPU", 1))  # never more than the cluster has
    # one task per worker and block group, each streaming its share of the slices into ONE
    # accumulator: the number of G-sized partial states is the number of workers, not of slices;
    # and no more workers than there is memory for (BERT-large's 25,600 neurons: one)
    wanted = max(1, min(len(slices), int(ray.cluster_resources().get("CPU", 1) // cpus)))
    tokens = slice_tokens(slices)
    workers = memory.fit_workers(N, L, tokens, wanted, groups, cfg.chunk_rows)
    memory.check(memory.similarity_plan(N, L, tokens, workers, groups, cfg.chunk_rows))
    if workers < wanted:  # the fewer workers get the cores of those that do not fit (BLAS threads)
        cpus = min(ray.cluster_resources().get("CPU", 1), cpus * wanted // workers)
        log.info("%d worker(s) of %g CPUs instead of %d: one N x N accumulator each would not fit", workers, cpus,
                 wanted)
    first = next(iter_slice(slices[0], cfg.chunk_rows, cfg.skip_first))
    shift = np.concatenate([m.astype(np.float64).mean(axis=0) for m in first])
    del first
    plan = balance_blocks(L, groups)
    task = ray.remote(num_cpus=cpus, num_gpus=cfg.num_gpus)(slice_task)
    shift_ref = ray.put(shift)
    shares = [slices[w::workers] for w in range(workers)]
    jobs = [(share, blocks, g == 0) for share in shares for g, blocks in enumerate(plan)]
    total = Moments.empty(widths, shift)  # zero pages: memory is taken as parts are added
    off = total.offsets
    pending, cursor, packed = [], 0, False
    limit = workers  # bounded in-flight work = bounded memory
    with tqdm(total=len(jobs), desc=f"co-moments {cfg.corpus}/{cfg.split}", unit="task", disable=not progress) as bar:
        while cursor < len(jobs) or pending:
            while cursor < len(jobs) and len(pending) < limit:
                share, blocks, with_extras = jobs[cursor]
                pending.append(task.remote(share, shift_ref, blocks, with_extras, cfg.skip_first, cfg.chunk_rows,
                                           cfg.device))
                cursor += 1
            ready, pending = ray.wait(pending, num_returns=1)
            part = ray.get(ready[0])
            if "packed" in part:  # read from the object store without a copy, added row by row
                add_packed_lower(total.G, part["packed"])
                packed = True
            for l, rows in part["blocks"].items():
                if l == "all":
                    total.G += rows
                else:
                    total.G[off[l] : off[l + 1], off[l] :] += rows
            if "n" in part:
                total.n += part["n"]
                total.s += part["s"]
                total.Q += part["Q"]
                total.U += part["U"]
            del part, ready  # release the partial state from the object store now
            bar.update(1)
    if packed:  # the parts filled the lower triangle; the upper one is what Moments reads
        symmetrize(total.G, "lower")
    if total.n < 4:
        raise UserError(f"only {total.n} tokens: too few for correlations and debiased CKA")
    log.info("co-moments of %d tokens x %d neurons from %d slices (%d tasks)", total.n, N, len(slices), len(jobs))
    return total


def layer_of(widths: tuple[int, ...]) -> np.ndarray:
    """Layer index of every neuron on the stacked axis."""
    return np.repeat(np.arange(len(widths)), widths)


__all__ = ["SimilarityConfig", "balance_blocks", "compute_moments", "iter_slice", "layer_of", "products_device",
           "slice_task", "slice_tokens", "slices_of"]
