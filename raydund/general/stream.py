"""The general-redundancy pass: activation files -> Ray tasks -> co-moments -> r and CKA.

The tokens of one (model, corpus, split) are sliced the way extraction wrote them:
one extraction shard (one file per layer, the same words in each) is one slice. The
slices are shared out among the workers, one per node by default (a task with all the
node's CPUs as BLAS threads): each streams its slices through one preallocated chunk
buffer into ONE accumulator (``groups`` > 1: several tasks per share, each with some
block rows of ``G``), then ships its state to the driver piece by piece, giving each
piece's pages back as it leaves. The driver folds every piece into its ``G`` as it
arrives. Every task subtracts the same shift (the first slice's mean), so the driver
just adds. No process ever holds all tokens x all neurons, and no state is ever held
twice.
"""

from __future__ import annotations

import contextlib
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
    SYRK_MAX_NEURONS,
    Moments,
    add_block_rows,
    add_lower_piece,
    augment_extras,
    extras,
    split_augmented,
    symmetrize,
    upper_pieces,
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
        Tasks per share of the slices, each with a share of the layer-pair block rows
        (default 1: a task owns all of G and does one ``dsyrk`` per chunk, the cheapest;
        more groups hold less of G per task and read the share once per group).
    skip_first : bool
        Leave out the first word of every sentence (outlier tokens; Davari et al.).
    chunk_rows : int
        Rows per product inside a task.
    cpus_per_task : float, optional
        CPUs (= BLAS threads) per task; default all the CPUs of a node: one worker, and
        one accumulator, per node.
    num_gpus : float
        GPUs per task; products run in float64 on the GPU when there is one.
    device : str, optional
        Force the products' device: ``"cpu"`` (NumPy BLAS), ``"cuda"``; default: a GPU when
        the task sees one (``RAYDUND_DEVICE`` overrides), see :func:`products_device`.
    tiles : {"auto", "on", "off"}
        ``on``: the out-of-core pass in tiles (:mod:`raydund.general.tiles`); ``auto``: tiles
        when the memory plan says N x N does not fit.
    tile_neurons : int, optional
        Neurons per tile side (default from the memory plan).
    """

    model: str
    corpus: str
    split: str
    unit: str = "word"
    groups: int | None = None
    skip_first: bool = False
    chunk_rows: int = 4096
    cpus_per_task: float | None = None
    num_gpus: float = 0
    device: str | None = None
    tiles: str = "auto"
    tile_neurons: int | None = None


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


#: Rows per Parquet read: the 13 lockstep readers of a paper-scale shard hold ~0.1 GB at 1,024
#: rows (at 4,096 rows with pre-buffered column chunks they held 1.2 GB: the whole row group).
READ_ROWS = 1024
#: Bytes of one piece of a worker's state on its way to the driver (one object each).
PIECE_BYTES = 64 * 2**20


def iter_slice(paths: dict[int, str], batch_rows: int = READ_ROWS, skip_first: bool = False):
    """Yield, batch by batch, one float32 matrix ``[rows x width]`` per layer of one slice.

    The layer files of a shard hold the same words in the same row order (the extraction
    actor writes every layer from the same chunks), so they are read in lockstep; the keys
    are checked batch by batch. Only one batch per layer is ever in memory: the readers
    stream pages (no pre-buffered column chunks), ``batch_rows`` rows at a time.
    """
    files = [_open(paths[layer]) for layer in sorted(paths)]
    rows = {f.metadata.num_rows for f in files}
    if len(rows) != 1:
        raise UserError(f"layer files of one shard differ in length: {sorted(paths.values())[0]} ...")
    streams = [f.iter_batches(batch_size=batch_rows, columns=KEY_COLUMNS, use_threads=False) for f in files]
    for batches in zip(*streams):
        sentence, word = batches[0].column("sentence_id"), batches[0].column("word_id")
        for b in batches[1:]:
            if not (b.column("sentence_id").equals(sentence) and b.column("word_id").equals(word)):
                raise UserError(f"layer files of one shard hold different words: {sorted(paths.values())[0]} ...")
        mats = [vectors_to_matrix(pa.Table.from_batches([b])) for b in batches]
        del batches
        if skip_first:
            keep = word.to_numpy() > 0
            mats = [m[keep] for m in mats]
        yield mats


def _open(uri: str) -> pq.ParquetFile:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    return pq.ParquetFile(fs.open_input_file(path), pre_buffer=False, buffer_size=1 << 20)


def first_mean(paths: dict[int, str], rows: int, skip_first: bool = False) -> np.ndarray:
    """Per-neuron float64 mean of (about) the first ``rows`` rows of a slice: the shift of the pass.

    Any fixed shift near the mean gives the same statistics (it is subtracted before the
    products only to keep them accurate); this reads one chunk's worth of rows.
    """
    total, n = None, 0
    for mats in iter_slice(paths, min(READ_ROWS, rows), skip_first):
        sums = np.concatenate([m.sum(axis=0, dtype=np.float64) for m in mats])
        total = sums if total is None else total + sums
        n += len(mats[0])
        if n >= rows:
            break
    if not n:
        raise UserError(f"no rows to read in {sorted(paths.values())[0]} ...")
    return total / n


class ChunkBuffer:
    """One preallocated float64 ``[rows x N]`` chunk in Fortran order, filled from float32
    batches minus the shift, across slice boundaries; a full chunk goes to ``flush``.

    Fortran order makes every layer's column block (and every block row ``D[:, off_l:]``) a
    contiguous array that BLAS takes without a copy. The last, partial chunk is compacted in
    place to a contiguous ``[k x N]`` array (no copy of the buffer).
    """

    def __init__(self, rows: int, shift: np.ndarray, off: np.ndarray, flush, width: int | None = None):
        self.rows, self.shift, self.off, self.flush = rows, shift, off, flush
        self.width = int(off[-1]) if width is None else int(width)  # columns past N: for ``flush`` to fill
        self.flat = np.empty(rows * self.width)
        self.D = self.flat.reshape((rows, self.width), order="F")
        self.pos = 0

    def add(self, mats: list[np.ndarray]) -> None:
        """Append per-layer float32 rows (any number), flushing every full chunk."""
        k, i, off = len(mats[0]), 0, self.off
        while i < k:
            take = min(k - i, self.rows - self.pos)
            for layer, m in enumerate(mats):  # written as transposes: both sides walk memory in order (5x)
                a, b = off[layer], off[layer + 1]
                np.subtract(m[i : i + take].T, self.shift[a:b, None], out=self.D[self.pos : self.pos + take, a:b].T)
            self.pos += take
            i += take
            if self.pos == self.rows:
                self.flush(self.D)
                self.pos = 0

    def finish(self) -> None:
        """Flush the partial chunk left, as a contiguous ``[k x N]`` Fortran array."""
        k, C, N = self.pos, self.rows, self.width
        if k == 0:
            return
        for j in range(1, N):  # column j moves from j * C to j * k (overlaps are handled by NumPy)
            self.flat[j * k : (j + 1) * k] = self.flat[j * C : j * C + k]
        self.flush(self.flat[: k * N].reshape((k, N), order="F"))
        self.pos = 0


def worker_task(slices: list[dict[int, str]], shift: np.ndarray, blocks: list[int], with_extras: bool,
                skip_first: bool, chunk_rows: int, device: str | None = None, threads: int | None = None,
                piece_bytes: int = PIECE_BYTES):
    """Ray task body (a streaming generator): block rows ``blocks`` of ``G`` (and optionally
    ``n, s, Q, U``) over some slices, streamed in chunks of ``chunk_rows`` tokens into ONE
    accumulator, then shipped to the driver piece by piece.

    Yields first ``{"n", "s", "Q", "U"}`` (empty without ``with_extras``), then the pieces:
    ``{"columns": (a, b), "packed": ...}`` (columns ``a..b-1`` of the upper triangle, when
    the task owns all of ``G`` as one ``dsyrk`` target; each piece's pages are given back as
    it leaves) or ``{"row": l, "block": ...}`` (one block row; freed as it leaves).
    ``threads``: BLAS threads (the task's CPUs).
    """
    from threadpoolctl import threadpool_limits

    device = products_device(device)
    widths = tuple(int(w) for w in (m.shape[1] for m in next(iter_slice(slices[0], 1))))
    off = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    N, L = int(off[-1]), len(widths)
    # one dsyrk target: n, s, Q and U ride along as L + 1 more columns of the chunk
    augment = with_extras and sorted(blocks) == list(range(L)) and N + L + 1 <= SYRK_MAX_NEURONS
    extra = Moments.empty(widths, shift) if with_extras and not augment else None
    acc: dict = {}

    def flush(D: np.ndarray) -> None:
        if augment:
            augment_extras(D, off)
        add_block_rows(acc, D, off, blocks, L, device)
        if extra is not None:
            extras(extra, [D[:, off[l] : off[l + 1]] for l in range(L)])

    with threadpool_limits(limits=threads, user_api="blas") if threads else contextlib.nullcontext():
        buffer = ChunkBuffer(chunk_rows, shift, off, flush, N + L + 1 if augment else N)
        for paths in slices:
            for mats in iter_slice(paths, READ_ROWS, skip_first):
                buffer.add(mats)
                del mats
        buffer.finish()
    del buffer
    pa.default_memory_pool().release_unused()  # the Parquet readers' pages go back to the OS
    if augment:
        yield split_augmented(acc["all"], N, L) if "all" in acc else {}
    else:
        yield {} if extra is None else {"n": extra.n, "s": extra.s, "Q": extra.Q, "U": extra.U}
    if "all" in acc:
        for a, b, packed in upper_pieces(acc["all"], piece_bytes, N):
            yield {"columns": (a, b), "packed": packed}
            del packed
        del acc["all"]
    for l in sorted(acc):
        rows = acc.pop(l)
        yield {"row": l, "block": rows.cpu().numpy() if hasattr(rows, "cpu") else rows}
        del rows


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


def node_cpus() -> float:
    """CPUs of the largest alive Ray node (one worker per node gets all of them)."""
    import ray

    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max([c for c in cpus if c > 0] or [1])


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
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    cpus = min(cfg.cpus_per_task or node_cpus(), cluster_cpus)  # never more than the cluster has
    # one task per worker and block group, each streaming its share of the slices into ONE
    # accumulator: the number of G-sized states is the number of workers (by default one per
    # node), not of slices; and no more workers than there is memory for
    wanted = max(1, min(len(slices), int(cluster_cpus // cpus)))
    tokens = slice_tokens(slices)
    workers = memory.fit_workers(N, L, tokens, wanted, groups, cfg.chunk_rows)
    memory.check(memory.similarity_plan(N, L, tokens, workers, groups, cfg.chunk_rows))
    if workers < wanted:  # the fewer workers get the cores of those that do not fit (BLAS threads)
        cpus = min(cluster_cpus, cpus * wanted // workers)
        log.info("%d worker(s) of %g CPUs instead of %d: one N x N accumulator each would not fit", workers, cpus,
                 wanted)
    shift = first_mean(slices[0], cfg.chunk_rows, cfg.skip_first)
    pa.default_memory_pool().release_unused()
    plan = balance_blocks(L, groups)
    task = ray.remote(num_cpus=cpus, num_gpus=cfg.num_gpus, num_returns="streaming",
                      _generator_backpressure_num_objects=2)(worker_task)
    shift_ref = ray.put(shift)
    shares = [slices[w::workers] for w in range(workers)]
    jobs = [(share, blocks, g == 0) for share in shares for g, blocks in enumerate(plan)]
    total = Moments.empty(widths, shift)  # zero pages: memory is taken as parts are added
    off = total.offsets
    running, cursor, packed = [], 0, False
    threads = max(1, int(cpus))
    with tqdm(total=len(jobs), desc=f"co-moments {cfg.corpus}/{cfg.split}", unit="task", disable=not progress) as bar:
        while cursor < len(jobs) or running:
            while cursor < len(jobs) and len(running) < workers:  # bounded in-flight work = bounded memory
                share, blocks, with_extras = jobs[cursor]
                running.append(task.remote(share, shift_ref, blocks, with_extras, cfg.skip_first, cfg.chunk_rows,
                                           cfg.device, threads, PIECE_BYTES))
                cursor += 1
            ready, _ = ray.wait(running, num_returns=1)
            try:
                ref = next(ready[0])
            except StopIteration:
                running.remove(ready[0])
                bar.update(1)
                continue
            part = ray.get(ref)
            packed |= _fold(total, part, off)
            del part, ref  # the piece leaves the object store now
    if packed:  # the pieces filled the lower triangle; the upper one is what Moments reads
        symmetrize(total.G, "lower")
    if total.n < 4:
        raise UserError(f"only {total.n} tokens: too few for correlations and debiased CKA")
    log.info("co-moments of %d tokens x %d neurons from %d slices (%d tasks)", total.n, N, len(slices), len(jobs))
    return total


def _fold(total: Moments, part: dict, off: np.ndarray) -> bool:
    """Add one piece of a worker's state into the driver's moments; True for a packed piece."""
    if "packed" in part:  # read from the object store without a copy, added row by row
        add_lower_piece(total.G, part["columns"][0], part["packed"])
        return True
    if "row" in part:
        l = part["row"]
        total.G[off[l] : off[l + 1], off[l] :] += part["block"]
    if "n" in part:
        total.n += part["n"]
        total.s += part["s"]
        total.Q += part["Q"]
        total.U += part["U"]
    return False


def layer_of(widths: tuple[int, ...]) -> np.ndarray:
    """Layer index of every neuron on the stacked axis."""
    return np.repeat(np.arange(len(widths)), widths)


__all__ = ["ChunkBuffer", "SimilarityConfig", "balance_blocks", "compute_moments", "first_mean", "iter_slice",
           "layer_of", "node_cpus", "products_device", "slice_tokens", "slices_of", "worker_task"]
