"""Reads of a tiled similarity run: r by neuron, by layer block, by threshold, skipping tiles.

The ``neuron_correlation_tiles`` table of a run is small (one row per tile: neuron ranges,
layer ranges, ``max |r|``, path); every read is a polars filter on it first, then only
the tile files that can hold an answer are opened. Tiles hold the upper block triangle
(``row_block <= col_block``); the lower one is read as their transposes.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from raydund.errors import UserError
from raydund.general.tiles import read_tile
from raydund.general.tiles_job import NEURON_CORRELATION_TILES, NEURON_STATISTICS
from raydund.lake import Lake, runs


def is_tiled(run: runs.Run) -> bool:
    """Whether a similarity run wrote its r in tiles."""
    return any(k.endswith(f".{NEURON_CORRELATION_TILES}") for k in run.outputs)


def tile_index(lake: Lake, run: runs.Run) -> pl.DataFrame:
    """The run's tiles (one row each), as committed by the run (its snapshot, its scope)."""
    frame = pl.from_arrow(runs.read(lake, run, NEURON_CORRELATION_TILES).to_arrow())
    if frame.height == 0:
        raise UserError(f"similarity run {run.run_id} has no tiles; re-run similarity")
    return frame.sort(["row_block", "col_block"])


def neuron_statistics(lake: Lake, run: runs.Run) -> pl.DataFrame:
    """position, layer, neuron, mean, std, constant of every neuron, by position."""
    return pl.from_arrow(runs.read(lake, run, NEURON_STATISTICS).to_arrow()).sort("position")


def _tile(row: dict) -> np.ndarray:
    return read_tile(row["path"])


def iter_pairs_above(index: pl.DataFrame, c: float):
    """Per tile that can hold one, the pairs ``i < j`` with ``|r_ij| >= c``: ``(i, j, r)`` NumPy arrays
    (int32, int32, float32). Tiles whose ``max |r|`` is below ``c`` are never opened."""
    for row in index.filter(pl.col("max_abs_r") >= c).iter_rows(named=True):
        r = _tile(row)
        hit = np.abs(r) >= c
        if row["row_block"] == row["col_block"]:
            hit &= np.triu(np.ones(r.shape, bool), 1)
        a, b = np.nonzero(hit)
        yield (a + row["row_start"]).astype(np.int32), (b + row["col_start"]).astype(np.int32), r[a, b]
        del r, hit, a, b


def pairs_above(index: pl.DataFrame, c: float, columns: tuple[int, int] | None = None) -> pl.DataFrame:
    """Every pair ``i < j`` with ``|r_ij| >= c``: columns ``i``, ``j``, ``r`` (float32).

    Tiles whose ``max |r|`` is below ``c`` are never opened. ``columns``: only pairs whose
    ``j`` lies in ``[start, stop)`` (for streaming big answers block column by block column).
    """
    want = index
    if columns is not None:
        want = want.filter((pl.col("col_stop") > columns[0]) & (pl.col("col_start") < columns[1]))
    parts = [pl.DataFrame({"i": i, "j": j, "r": r}) for i, j, r in iter_pairs_above(want, c)]
    if not parts:
        return pl.DataFrame(schema={"i": pl.Int32, "j": pl.Int32, "r": pl.Float32})
    out = pl.concat(parts)
    if columns is not None:
        out = out.filter((pl.col("j") >= columns[0]) & (pl.col("j") < columns[1]))
    return out.sort(["i", "j"])


def submatrix(index: pl.DataFrame, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """r at the rows x columns given (neuron positions, ascending), opening only the tiles they touch."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    out = np.full((len(rows), len(cols)), np.nan, dtype=np.float32)
    for row in index.iter_rows(named=True):
        a, b, c, d = row["row_start"], row["row_stop"], row["col_start"], row["col_stop"]
        for R, C, flip in ((rows, cols, False), (cols, rows, True)):
            if flip and row["row_block"] == row["col_block"]:
                continue
            ri = np.flatnonzero((R >= a) & (R < b))
            ci = np.flatnonzero((C >= c) & (C < d))
            if not len(ri) or not len(ci):
                continue
            r = _tile(row)
            block = r[np.ix_(R[ri] - a, C[ci] - c)]
            if flip:
                out[np.ix_(ci, ri)] = block.T
            else:
                out[np.ix_(ri, ci)] = block
            del r
    return out


def neuron_row(index: pl.DataFrame, position: int) -> np.ndarray:
    """r of one neuron against every neuron (float32, N)."""
    N = int(index["col_stop"].max())
    return submatrix(index, np.array([position]), np.arange(N))[0]


def layer_block(index: pl.DataFrame, stats: pl.DataFrame, layer_a: int, layer_b: int) -> np.ndarray:
    """r between two layers' neurons (``[width_a x width_b]``), from the tiles those layers touch."""
    layers = stats["layer"].to_numpy()
    rows, cols = np.flatnonzero(layers == layer_a), np.flatnonzero(layers == layer_b)
    lo, hi = min(layer_a, layer_b), max(layer_a, layer_b)
    touching = index.filter(
        ((pl.col("row_layer_max") >= lo) & (pl.col("row_layer_min") <= hi))
        & ((pl.col("col_layer_max") >= lo) & (pl.col("col_layer_min") <= hi)))
    return submatrix(touching, rows, cols)


def assemble(index: pl.DataFrame, dtype=np.float32) -> np.ndarray:
    """The whole r (N x N) from the tiles: only for a run whose r fits in memory."""
    N = int(index["col_stop"].max())
    r = np.empty((N, N), dtype=dtype)
    for row in index.iter_rows(named=True):
        t = _tile(row)
        a, b, c, d = row["row_start"], row["row_stop"], row["col_start"], row["col_stop"]
        r[a:b, c:d] = t
        if row["row_block"] != row["col_block"]:
            r[c:d, a:b] = t.T
        del t
    return r


__all__ = ["assemble", "is_tiled", "iter_pairs_above", "layer_block", "neuron_row", "neuron_statistics",
           "pairs_above", "submatrix", "tile_index"]
