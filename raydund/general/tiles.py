"""Out-of-core similarity: the co-moments, r and layer CKA in tiles, never N x N in one process.

The neuron axis is cut into blocks of ``block`` neurons (regardless of layers). Tile
``(i, j)``, ``i <= j``, is one Ray task: it streams every activation slice, reading only
the layer files its two blocks touch, and sums ``G_IJ = D_I^T D_J`` of the shifted data
(float64). It then writes that tile of Pearson r (float32, one Parquet file) and, LAST,
a small ``_done`` record (JSON) with what layer CKA needs from the tile: per layer pair
``sum C^2`` and ``v^T G v`` over the tile's part of that pair, plus ``max |r|`` and
``sum |r|`` for queries that skip tiles. A re-run with the same key finds the records and
redoes only the missing tiles (as extraction does with its shards).

What every tile needs from all neurons (``n``, the sums ``s``, the variances, hence the
constant neurons and the standard deviations; and the small ``Q``, ``U`` of debiased
CKA) comes first from one cheap task that streams all layers (O(T N), no N^2 product):
``_extras.npz``. Layer CKA, biased and debiased, is then exact from the per-tile sums:
``||C_ab||_F^2`` is the sum over tiles of the sum of squares of their part of the
(a, b) block, and the debiased terms need only traces, ``v^T G v`` and ``Q, U``
(:func:`raydund.general.similarity._debiased`).

The same code runs on one machine and on a cluster: more nodes run more tiles at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import types

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydund.errors import UserError
from raydund.general.moments import torch_device
from raydund.general.similarity import _debiased, constant_neurons
from raydund.general.stream import READ_ROWS, iter_slice, layer_of, products_device

log = logging.getLogger(__name__)

EXTRAS = "_extras.npz"
DONE = "_done"


def blocks_of(neurons: int, block: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of every block of the neuron axis (``block`` neurons, the last fewer)."""
    block = max(1, int(block))
    return [(a, min(neurons, a + block)) for a in range(0, neurons, block)]


def tile_pairs(n_blocks: int) -> list[tuple[int, int]]:
    """Every tile of the upper block triangle, ``(i, j)`` with ``i <= j``, by rows."""
    return [(i, j) for i in range(n_blocks) for j in range(i, n_blocks)]


def tile_name(i: int, j: int) -> str:
    return f"tile-{i:05d}-{j:05d}"


def tile_key(parts: dict) -> str:
    """A short fingerprint of what a tile generation holds (inputs, shift, blocks)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _layers_touching(off: np.ndarray, a: int, b: int) -> list[int]:
    return [l for l in range(len(off) - 1) if off[l] < b and off[l + 1] > a]


def _columns(mats: dict[int, np.ndarray], off: np.ndarray, a: int, b: int, shift: np.ndarray,
             out: np.ndarray) -> None:
    """Fill ``out [rows x (b - a)]`` with neurons ``a..b-1`` of a batch, minus the shift."""
    for l, m in mats.items():
        lo, hi = max(a, int(off[l])), min(b, int(off[l + 1]))
        if lo < hi:
            np.subtract(m[:, lo - off[l] : hi - off[l]], shift[lo:hi], out=out[:, lo - a : hi - a])


def extras_task(slices: list[dict[int, str]], shift: np.ndarray, skip_first: bool) -> dict:
    """Ray task body: ``n``, ``s`` (sums of the shifted data), ``ss`` (sums of squares), ``Q``, ``U``.

    O(tokens x neurons) work: ``q_t^l = ||d_t^l||^2``, ``Q = q^T q``, ``U = q^T d``.
    """
    n, s, ss, Q, U = 0, None, None, None, None
    for paths in slices:
        for mats in iter_slice(paths, READ_ROWS, skip_first):
            widths = [m.shape[1] for m in mats]
            off = np.concatenate([[0], np.cumsum(widths)])
            if s is None:
                s, ss = np.zeros(off[-1]), np.zeros(off[-1])
                Q, U = np.zeros((len(widths), len(widths))), np.zeros((len(widths), off[-1]))
            q = np.empty((len(mats[0]), len(widths)))
            for l, m in enumerate(mats):  # one layer in float64 at a time
                D = m.astype(np.float64) - shift[off[l] : off[l + 1]]
                q[:, l] = np.einsum("ij,ij->i", D, D)
                s[off[l] : off[l + 1]] += D.sum(axis=0)
                ss[off[l] : off[l + 1]] += np.einsum("ij,ij->j", D, D)
            for l, m in enumerate(mats):  # U needs every layer's q first
                U[:, off[l] : off[l + 1]] += q.T @ (m.astype(np.float64) - shift[off[l] : off[l + 1]])
            n += len(q)
            Q += q.T @ q
            del mats
    return {"n": n, "s": s, "ss": ss, "Q": Q, "U": U}


@dataclasses.dataclass
class TileInputs:
    """What every tile task is given: where to write, the layout and the global per-neuron statistics."""

    root: str
    widths: tuple[int, ...]
    shift: np.ndarray
    n: int
    s: np.ndarray
    sd: np.ndarray  # sqrt of the centred co-moment diagonal; NaN for constant neurons
    skip_first: bool
    chunk_rows: int = 4096
    device: str | None = None  # the products' device (:func:`raydund.general.stream.products_device`)


def tile_task(slices: list[dict[int, str]], inp: TileInputs, i: int, j: int, rows: tuple[int, int],
              cols: tuple[int, int], threads: int | None = None) -> dict:
    """Ray task body: tile ``(i, j)`` of r and its CKA sums; writes the tile file, then its ``_done`` record.

    Returns the record (also written as ``_done/tile-i-j.json``).
    """
    import time

    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    off = np.concatenate([[0], np.cumsum(inp.widths)]).astype(np.int64)
    (a, b), (c, d) = rows, cols
    layers = sorted(set(_layers_touching(off, a, b)) | set(_layers_touching(off, c, d)))
    G = np.zeros((b - a, d - c), order="F")
    diagonal = (a, b) == (c, d)
    cap = inp.chunk_rows
    DI = np.empty((cap, b - a), order="F")
    DJ = DI if diagonal else np.empty((cap, d - c), order="F")
    pos, products = 0, 0.0
    device = products_device(inp.device)
    if device != "cpu":  # float64 torch products on the task's GPU (TF32 never applies to float64)
        import torch

        G = torch.zeros((b - a, d - c), dtype=torch.float64, device=torch_device(device))

    def flush(k: int) -> None:
        nonlocal G, products
        from scipy.linalg.blas import dgemm, dsyrk

        began = time.perf_counter()
        X = DI[:k] if k < cap else DI
        if device != "cpu":
            import torch

            Xt = torch.from_numpy(np.ascontiguousarray(X)).to(G.device)
            Yt = Xt if diagonal else torch.from_numpy(np.ascontiguousarray(DJ[:k] if k < cap else DJ)).to(G.device)
            G.addmm_(Xt.T, Yt)
        elif diagonal:
            G = dsyrk(1.0, np.asfortranarray(X), beta=1.0, c=G, trans=1, lower=0, overwrite_c=1)
        else:
            Y = DJ[:k] if k < cap else DJ
            G = dgemm(1.0, np.asfortranarray(X), np.asfortranarray(Y), beta=1.0, c=G, trans_a=1, overwrite_c=1)
        products += time.perf_counter() - began

    with threadpool_limits(limits=threads, user_api="blas"):
        for paths in slices:
            for mats in iter_slice({l: paths[l] for l in layers}, READ_ROWS, inp.skip_first):
                batch = dict(zip(layers, mats))
                k, at = len(mats[0]), 0
                while at < k:
                    take = min(k - at, cap - pos)
                    part = {l: m[at : at + take] for l, m in batch.items()}
                    _columns(part, off, a, b, inp.shift, DI[pos : pos + take])
                    if not diagonal:
                        _columns(part, off, c, d, inp.shift, DJ[pos : pos + take])
                    pos += take
                    at += take
                    if pos == cap:
                        flush(cap)
                        pos = 0
                del mats, batch
        if pos:
            flush(pos)
    DI = DJ = None  # the chunk buffers go before the tile statistics
    if device != "cpu":
        G = np.asfortranarray(G.cpu().numpy())  # the full product: already symmetric on the diagonal
    elif diagonal:
        G = np.triu(G) + np.triu(G, 1).T
    record = tile_statistics(G, inp, off, i, j, rows, cols)
    record["seconds"] = time.perf_counter() - start
    record["product_seconds"] = products
    return record


def tile_statistics(G: np.ndarray, inp: TileInputs, off: np.ndarray, i: int, j: int, rows: tuple[int, int],
                    cols: tuple[int, int]) -> dict:
    """From one tile of ``G``: write its r (float32 Parquet), then its ``_done`` record; return the record."""
    (a, b), (c, d) = rows, cols
    L = len(inp.widths)
    v = inp.s / inp.n
    vGv = np.zeros((L, L))
    for la in _layers_touching(off, a, b):
        ra = slice(max(a, off[la]) - a, min(b, off[la + 1]) - a)
        for lb in _layers_touching(off, c, d):
            cb = slice(max(c, off[lb]) - c, min(d, off[lb + 1]) - c)
            vGv[la, lb] = v[a:b][ra] @ G[ra, cb] @ v[c:d][cb]
    C = G
    C -= np.outer(inp.s[a:b], inp.s[c:d] / inp.n)
    hsic = np.zeros((L, L))
    for la in _layers_touching(off, a, b):
        ra = slice(max(a, off[la]) - a, min(b, off[la + 1]) - a)
        for lb in _layers_touching(off, c, d):
            cb = slice(max(c, off[lb]) - c, min(d, off[lb + 1]) - c)
            hsic[la, lb] = np.sum(C[ra, cb] ** 2)
    C /= inp.sd[a:b, None]
    C /= inp.sd[None, c:d]
    np.clip(C, -1.0, 1.0, out=C)
    if (a, b) == (c, d):
        idx = np.flatnonzero(~np.isnan(inp.sd[a:b]))
        C[idx, idx] = 1.0
    r = C.astype(np.float32)
    del C, G
    absr = np.abs(r)
    if (a, b) == (c, d):
        absr = np.where(np.triu(np.ones(absr.shape, bool), 1), absr, np.nan)  # strict upper: each pair once
    live = ~np.isnan(absr)
    record = {"row": i, "col": j, "row_start": a, "row_stop": b, "col_start": c, "col_stop": d,
              "max_abs_r": float(absr[live].max()) if live.any() else 0.0,
              "sum_abs_r": float(absr[live].sum(dtype=np.float64)), "pairs": int(live.sum()),
              "hsic": hsic.tolist(), "vGv": vGv.tolist(), "path": f"{inp.root}/{tile_name(i, j)}.parquet"}
    del absr, live
    fs, root = pafs.FileSystem.from_uri(inp.root)
    write_tile(fs, f"{root}/{tile_name(i, j)}.parquet", r, a)
    write_whole(fs, f"{root}/{DONE}/{tile_name(i, j)}.json", json.dumps(record).encode())  # last: tile complete
    return record


def write_whole(fs, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    tmp = f"{path}.tmp"
    with fs.open_output_stream(tmp) as fh:
        fh.write(data)
    fs.move(tmp, path)


def write_tile(fs, path: str, r: np.ndarray, first: int) -> None:
    """One tile of r: a row per row neuron (``position``), its r values as a fixed-size float32 list."""
    k, w = r.shape
    values = pa.FixedSizeListArray.from_arrays(pa.array(r.ravel()), w)
    table = pa.table({"position": np.arange(first, first + k, dtype=np.int32), "r": values})
    pq.write_table(table, path, filesystem=fs, compression="none", row_group_size=max(1, (64 << 20) // (4 * w)))


def read_tile(uri: str) -> np.ndarray:
    """A tile file's r as a float32 ``[rows x cols]`` array."""
    fs, path = pafs.FileSystem.from_uri(uri)
    table = pq.read_table(path, filesystem=fs, columns=["r"])
    col = table.column("r").combine_chunks()
    width = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)


def finished_tiles(root: str) -> dict[tuple[int, int], dict]:
    """``(i, j)`` -> ``_done`` record of every finished tile under ``root``."""
    fs, path = pafs.FileSystem.from_uri(root)
    done = {}
    for info in fs.get_file_info(pafs.FileSelector(f"{path}/{DONE}", allow_not_found=True)):
        if info.type == pafs.FileType.File and info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as fh:
                rec = json.loads(fh.read())
            done[(rec["row"], rec["col"])] = rec
    return done


def global_statistics(ex: dict, widths: tuple[int, ...]) -> dict:
    """Per-neuron mean offset, variance, constant mask and sd from the extras (``sd`` NaN where constant)."""
    n = ex["n"]
    var = ex["ss"] - ex["s"] ** 2 / n  # the centred co-moment diagonal
    constant = constant_neurons(var)
    sd = np.sqrt(np.where(constant, np.nan, np.clip(var, 0, None)))
    return {"var": var, "constant": constant, "sd": sd}


def layer_cka(records: list[dict], ex: dict, var: np.ndarray, widths: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Biased and debiased CKA of every layer pair (L x L), exactly, from the tiles' sums."""
    L = len(widths)
    off = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    hsic, vGv = np.zeros((L, L)), np.zeros((L, L))
    for rec in records:
        h, g = np.asarray(rec["hsic"]), np.asarray(rec["vGv"])
        hsic += h
        vGv += g
        if rec["row"] != rec["col"]:  # the mirrored tile is never computed: its sums are the transposes
            hsic += h.T
            vGv += g.T
    tr = np.array([var[off[l] : off[l + 1]].sum() for l in range(L)])
    trG = np.array([ex["ss"][off[l] : off[l + 1]].sum() for l in range(L)])
    norm = np.sqrt(np.diag(hsic))
    with np.errstate(invalid="ignore", divide="ignore"):
        biased = hsic / norm[:, None] / norm[None, :]
    m = types.SimpleNamespace(n=ex["n"], widths=tuple(widths), offsets=off, Q=ex["Q"], U=ex["U"])
    return biased, _debiased(hsic, tr, trG, 4 * vGv, m, ex["s"] / ex["n"])


def save_extras(root: str, ex: dict) -> None:
    import io

    fs, path = pafs.FileSystem.from_uri(root)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in ex.items()})
    write_whole(fs, f"{path}/{EXTRAS}", buf.getvalue())


def load_extras(root: str) -> dict | None:
    import io

    fs, path = pafs.FileSystem.from_uri(root)
    try:
        with fs.open_input_stream(f"{path}/{EXTRAS}") as fh:
            data = np.load(io.BytesIO(fh.read()))
    except FileNotFoundError:
        return None
    out = {k: data[k] for k in data.files}
    out["n"] = int(out["n"])
    return out


def check_widths(widths: tuple[int, ...], ex: dict) -> None:
    if len(ex["s"]) != sum(widths):
        raise UserError("the tile generation's statistics do not match the activations; re-run with a new key")


__all__ = ["TileInputs", "blocks_of", "extras_task", "finished_tiles", "global_statistics", "layer_cka",
           "layer_of", "read_tile", "tile_pairs", "tile_task"]
