"""Memory plans: what each stage will hold, checked against the machine BEFORE it starts.

The big arrays of the analysis are known from four numbers: neurons ``N`` (all layers
stacked), layers ``L``, tokens ``T`` and the number of workers. A :class:`StagePlan`
lists them by name and adds them up phase by phase (arrays that never live at the same
time are not summed); :func:`check` raises :class:`~raydund.errors.UserError` with the
numbers when the peak is over the limit, so a stage that cannot fit says so before it
reads a byte. Sizes are in bytes; messages use GB = 1e9 bytes (the N x N float64 matrix
of BERT-large's 25,600 neurons is 5.2 GB).

The limit is ``RAYDUND_MEMORY_LIMIT_GB`` when set, otherwise the machine's RAM minus a
headroom for the OS, Ray's daemons and the libraries every process imports
(:data:`HEADROOM_SHARE` of RAM, at least :data:`HEADROOM_MIN` bytes).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from raydund.errors import UserError

log = logging.getLogger(__name__)

GB = 1e9
#: Share of RAM kept free for the OS, Ray's daemons and imported libraries.
HEADROOM_SHARE = 0.10
#: ... but at least this many bytes.
HEADROOM_MIN = 2 * 2**30
#: Resident size of one Python process with numpy/pyarrow/torch imported (a Ray worker, the driver).
PROCESS_BYTES = int(0.4 * GB)
F64, F32 = 8, 4
#: Share of the limit the similarity workers' accumulators may take together (see :func:`fit_workers`).
ACCUMULATOR_SHARE = 0.25


@dataclasses.dataclass
class StagePlan:
    """The arrays a stage holds, grouped by phases that do not overlap in time.

    Attributes
    ----------
    stage : str
        ``similarity``, ``clustering`` or ``probes``.
    phases : dict
        Phase name -> {array name -> bytes}. The peak is the largest phase total.
    shape : dict
        The sizes the plan was made from (neurons, layers, tokens, workers, ...).
    """

    stage: str
    phases: dict[str, dict[str, int]]
    shape: dict

    @property
    def peak(self) -> int:
        """Bytes of the largest phase."""
        return max(sum(parts.values()) for parts in self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: sum(self.phases[p].values()))

    def describe(self) -> str:
        """One line: the peak phase and its largest arrays."""
        parts = sorted(self.phases[self.peak_phase].items(), key=lambda kv: -kv[1])
        listed = ", ".join(f"{name} {size / GB:.2f}" for name, size in parts if size >= 0.01 * GB)
        return f"{self.peak_phase}: {listed}"

    def as_dict(self) -> dict:
        """Plain numbers (GB) for logs and MLflow params."""
        return {"stage": self.stage, "peak_gb": round(self.peak / GB, 3), "peak_phase": self.peak_phase,
                **{f"{p}_gb": round(sum(v.values()) / GB, 3) for p, v in self.phases.items()}, **self.shape}


def memory_limit() -> int:
    """Bytes a stage may use: ``RAYDUND_MEMORY_LIMIT_GB``, else RAM minus the headroom."""
    value = os.environ.get("RAYDUND_MEMORY_LIMIT_GB")
    if value:
        try:
            return int(float(value) * GB)
        except ValueError:
            raise UserError(f"RAYDUND_MEMORY_LIMIT_GB={value!r} is not a number of GB") from None
    total = total_ram()
    return int(total - max(HEADROOM_MIN, HEADROOM_SHARE * total))


def total_ram() -> int:
    """Physical memory of this machine in bytes."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil ships with ray
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check(plan: StagePlan, limit: int | None = None) -> StagePlan:
    """Raise :class:`UserError` when ``plan`` does not fit in ``limit`` bytes; return it otherwise."""
    limit = memory_limit() if limit is None else int(limit)
    if plan.peak > limit:
        sizes = ", ".join(f"{k}={v}" for k, v in plan.shape.items())
        raise UserError(
            f"stage {plan.stage} needs ~{plan.peak / GB:.1f} GB ({sizes}; {plan.describe()} GB), "
            f"limit {limit / GB:.1f} GB (RAYDUND_MEMORY_LIMIT_GB or detected RAM - headroom)")
    log.info("memory plan: stage %s needs ~%.2f GB of %.1f GB (%s)", plan.stage, plan.peak / GB, limit / GB,
             plan.describe())
    return plan


# -- the stages ---------------------------------------------------------------------------
def packed_bytes(neurons: int) -> int:
    """The upper triangle of an N x N float64 matrix, diagonal included."""
    return neurons * (neurons + 1) // 2 * F64


def condensed_bytes(neurons: int) -> int:
    """A condensed distance vector (strict upper triangle) in float64."""
    return neurons * (neurons - 1) // 2 * F64


#: Rows per Parquet read of the similarity pass (``general.stream.READ_ROWS``).
READ_ROWS = 1024
#: Bytes of one piece of a similarity worker's state in transit (``general.stream.PIECE_BYTES``).
PIECE_BYTES = 64 * 2**20
PAGE = 4096


def block_row_bytes(neurons: int, layers: int, groups: int) -> int:
    """The resident bytes of the largest share of ``G`` one task holds when ``groups`` tasks split it.

    One group holds one N x N ``dsyrk`` accumulator up to ``SYRK_MAX_NEURONS`` neurons, of
    which only the upper triangle's pages are ever written (and taken from the OS: the
    packed triangle plus at most one page per column); above, its block rows (the upper
    block triangle).
    """
    from raydund.general.moments import SYRK_MAX_NEURONS

    if groups <= 1 and neurons <= SYRK_MAX_NEURONS:
        return packed_bytes(neurons) + neurons * PAGE
    width = neurons / layers
    loads = [0.0] * max(1, min(groups, layers))
    for layer in range(layers):  # the same greedy split as stats.job.balance_blocks
        g = loads.index(min(loads))
        loads[g] += width * (neurons - layer * width)
    return int(max(loads) * F64)


def similarity_plan(neurons: int, layers: int, tokens: int = 0, workers: int = 1, groups: int = 1,
                    chunk_rows: int = 4096) -> StagePlan:
    """The co-moment pass and r/CKA: ``workers`` accumulators, the driver's G turned into r in place.

    Phases: ``accumulate`` (every worker holds its accumulator, its chunk buffer, and the
    lockstep Parquet readers with one float32 batch per layer; the driver's G is untouched
    zero pages), ``transfer`` (the workers' states reach the driver piece by piece: a
    piece's pages leave the worker as it is shipped, so a draining accumulator and the rows
    of G it filled together stay within one triangle; the other workers still hold theirs;
    then G is made symmetric), ``statistics`` (G -> covariance -> r in place; r written to
    the lake as float32 rows, one batch at a time; row-block temporaries).
    """
    N, W = int(neurons), max(1, int(workers))
    nn = N * N * F64
    acc = block_row_bytes(N, layers, groups)
    rows = min(chunk_rows, max(tokens, 1) if tokens else chunk_rows)
    piece = min(PIECE_BYTES, acc)
    procs = (W + 1) * PROCESS_BYTES
    phases = {
        "accumulate": {"accumulators": W * acc, "chunk buffers (float64)": W * rows * N * F64,
                       "Parquet readers and float32 batches": W * 4 * min(READ_ROWS, rows) * N * F32,
                       "processes": procs},
        "transfer": {"accumulators not yet shipped": (W - 1) * acc, "driver G": nn,
                     "pieces in flight (worker, object store, driver)": 4 * piece, "processes": procs},
        "statistics": {"G -> r (N x N float64)": nn, "row-block temporaries": 2 * min(1024, N) * N * F64,
                       # the object store's shared-memory pages stay resident after the transfer
                       "object store pages (pieces)": 2 * piece,
                       "r float32 rows being written (batch, Arrow and Parquet copies)": 4 * min(1024, N) * N * F32,
                       "processes": PROCESS_BYTES},
    }
    return StagePlan("similarity", phases, {"neurons": N, "layers": int(layers), "tokens": int(tokens),
                                            "workers": W, "groups": int(groups)})


#: Bytes of one tile task per ``block**2``: G (float64, and its mirrored copy on the diagonal),
#: C -> r in place, r and |r| as float32, the Parquet copies of r.
TILE_BYTES_PER_PAIR = 40


def tile_task_bytes(block: int, widest: int, chunk_rows: int = 4096) -> int:
    """Peak bytes of one tile task: its tile arrays, its two chunk buffers and its layer readers."""
    readers = 2 * 4 * READ_ROWS * max(widest, block) * F32 * 2  # up to two layers per block side, decoded copies
    return TILE_BYTES_PER_PAIR * block * block + 2 * chunk_rows * block * F64 + readers


def tiled_similarity_plan(neurons: int, layers: int, tokens: int, block: int, tasks: int = 1, widest: int = 0,
                          chunk_rows: int = 4096) -> StagePlan:
    """The tiled pass (:mod:`raydund.general.tiles`): ``tasks`` tiles at once, never N x N.

    Phases: ``extras`` (one task streams all layers: ``n, s, ss`` and the L x N ``U``),
    ``tiles`` (every running task holds one tile; the driver holds the per-neuron vectors).
    """
    N, L = int(neurons), int(layers)
    vectors = (6 * N + 2 * L * N) * F64
    procs = (tasks + 1) * PROCESS_BYTES
    phases = {
        "extras": {"a batch of all layers (float32, decoded copies)": READ_ROWS * N * F32 * 3,
                   "one layer in float64": 2 * READ_ROWS * (widest or N // max(L, 1)) * F64,
                   "per-neuron vectors and U": vectors, "processes": 2 * PROCESS_BYTES},
        "tiles": {"tile tasks": tasks * tile_task_bytes(block, widest or N // max(L, 1), chunk_rows),
                  "per-neuron vectors and U (driver and object store)": 2 * vectors, "processes": procs},
    }
    return StagePlan("similarity (tiled)", phases, {"neurons": N, "layers": L, "tokens": int(tokens),
                                                    "block": int(block), "tasks": int(tasks)})


def choose_tile_block(neurons: int, layers: int, tokens: int, tasks: int = 1, widest: int = 0,
                      limit: int | None = None, largest: int = 8192) -> int:
    """The widest block (a multiple of 256, at most ``largest``) whose tiled plan fits half the limit."""
    limit = memory_limit() if limit is None else limit
    block = min(largest, max(256, -(-int(neurons) // 256) * 256))
    while block > 256 and sum(tiled_similarity_plan(neurons, layers, tokens, block, tasks, widest)
                              .phases["tiles"].values()) > limit // 2:
        block -= 256
    return block


def similarity_fits(neurons: int, layers: int, tokens: int, limit: int | None = None) -> bool:
    """Whether the in-memory pass (one N x N G on the driver) fits: else the tiled pass is used."""
    limit = memory_limit() if limit is None else limit
    return similarity_plan(neurons, layers, tokens).peak <= limit


def clustering_fits(neurons: int, layers: int = 1, thresholds: int = 10, limit: int | None = None) -> bool:
    """Whether exact average linkage on all neurons fits (r float32 + condensed float64 distances)."""
    limit = memory_limit() if limit is None else limit
    return clustering_plan(neurons, layers, thresholds).peak <= limit


def exact_component_limit(limit: int | None = None, share: float = 0.25) -> int:
    """The most neurons (or clusters) linked exactly at once out of core: a component's dense r
    (float32) and condensed float64 distances, or a continuation's K x K float64 mean distances,
    ~ 8 bytes per pair, in ``share`` of the limit."""
    limit = memory_limit() if limit is None else limit
    return max(2, int(np.sqrt(share * limit / 8)))


def fit_workers(neurons: int, layers: int, tokens: int, wanted: int, groups: int = 1, chunk_rows: int = 4096,
                limit: int | None = None) -> int:
    """The most workers (at most ``wanted``, at least 1) whose similarity plan fits the limit
    and whose accumulators together take at most :data:`ACCUMULATOR_SHARE` of it.

    The pass is bound by BLAS, so one worker given all the cores is as fast as several
    with one core each; extra workers only buy parallel Parquet decoding, at one G-sized
    accumulator each (BERT-large: 2.7 GB), so they are used only where they are cheap.
    """
    limit = memory_limit() if limit is None else limit
    acc = block_row_bytes(neurons, layers, groups)
    for w in range(max(1, wanted), 1, -1):
        if (similarity_plan(neurons, layers, tokens, w, groups, chunk_rows).peak <= limit
                and w * acc <= ACCUMULATOR_SHARE * limit):
            return w
    return 1


def clustering_plan(neurons: int, layers: int = 1, thresholds: int = 10, block_rows: int = 512) -> StagePlan:
    """Correlation clustering: r (float32) from the lake, the condensed float64 distances built
    from it in row blocks, linkage in place on them (fastcluster, ``preserve_input=False``)."""
    N = int(neurons)
    block = min(block_rows, N) * N * F64
    phases = {
        "load": {"r float32": N * N * F32, "reader batches": min(N, 2048) * N * F32, "processes": PROCESS_BYTES},
        "distances": {"r float32": N * N * F32, "condensed distances float64": condensed_bytes(N),
                      "row-block temporaries": 3 * block, "processes": PROCESS_BYTES},
        "linkage": {"r float32": N * N * F32, "condensed distances float64 (linkage works in place)":
                    condensed_bytes(N), "linkage and labels": (N - 1) * 4 * F64 + thresholds * N * F64
                    + 8 * N * F64, "processes": PROCESS_BYTES},
    }
    return StagePlan("clustering", phases, {"neurons": N, "layers": int(layers), "thresholds": int(thresholds)})


def probe_plan(neurons: int, layers: int, tokens: int, eval_tokens: int = 0, classes: int = 50,
               tasks: int = 1, object_store: bool = True) -> StagePlan:
    """Layer-wise probes (every layer, the oracle, the prefixes) on ``X [tokens x N]`` float32.

    ``tokens`` is the training rows, ``eval_tokens`` dev + test. With ``object_store`` the
    driver's arrays are put in Ray's object store once (two copies while the put runs, one
    after). Each of ``tasks`` parallel analyses holds its bank: weights, gradients and two
    Adam moments for the sum of the probes' sizes, the dense coefficients and the scores.
    """
    N, L, C = int(neurons), int(layers), int(classes)
    data = (int(tokens) + int(eval_tokens)) * N * F32
    width = N / max(L, 1)
    probe_size = N + N + int(width * (L - 1) * L / 2)  # layers + oracle + prefixes 0..l
    probes = 2 * L
    bank = 4 * probe_size * C * F32 + probes * N * C * F32 + probes * max(int(eval_tokens), 1) * C * F32
    phases = {
        "load": {"X train/dev/test float32": data, "one layer being read": 3 * int(tokens + eval_tokens) * int(width)
                 * F32, "processes": PROCESS_BYTES},
        "train": {"X train/dev/test float32": data, "probe banks": tasks * bank,
                  "processes": (tasks + 1) * PROCESS_BYTES},
    }
    if object_store:
        phases["put"] = {"X on the driver": data, "X in the object store": data, "processes": PROCESS_BYTES}
    return StagePlan("probes", phases, {"neurons": N, "layers": L, "tokens": int(tokens),
                                        "eval_tokens": int(eval_tokens), "classes": C, "tasks": int(tasks)})


def activation_shape(lake, model: str, corpus: str, split: str, unit: str = "word") -> tuple[int, tuple[int, ...]]:
    """Tokens and per-layer widths of stored activations, from file metadata and one row per layer."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from raydund.lake import vectors_to_matrix

    files = lake.activation_files(model, corpus, split, unit)
    first = min(layer for layer, _ in files)
    tokens, widths = 0, {}
    for layer, uri in files:
        fs, path = pafs.FileSystem.from_uri(uri)
        pf = pq.ParquetFile(fs.open_input_file(path))
        if layer == first:
            tokens += pf.metadata.num_rows
        if layer not in widths and pf.metadata.num_rows:
            batch = next(pf.iter_batches(batch_size=1, columns=["dtype", "vector", "vector_bits"]))
            widths[layer] = vectors_to_matrix(pa.Table.from_batches([batch])).shape[1]
    return tokens, tuple(widths[k] for k in sorted(widths))


__all__ = ["GB", "StagePlan", "activation_shape", "check", "choose_tile_block", "clustering_fits", "clustering_plan",
           "condensed_bytes", "exact_component_limit", "fit_workers", "memory_limit", "packed_bytes", "probe_plan",
           "similarity_fits", "similarity_plan", "tiled_similarity_plan"]
