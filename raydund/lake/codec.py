"""The activation table's schema and its vector codec (float32 lists, half-precision bit patterns)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

#: Schema of the activation table; files written by extraction workers follow it exactly.
ACTIVATION_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("corpus", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("unit", pa.string(), nullable=False),
        pa.field("layer", pa.int32(), nullable=False),
        pa.field("sentence_id", pa.int64(), nullable=False),
        pa.field("word_id", pa.int32(), nullable=False),
        pa.field("word", pa.string()),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32())),
        pa.field("vector_bits", pa.binary()),
    ]
)
ACTIVATION_PARTITIONS = ("model", "corpus", "split", "unit", "layer")

#: Storage dtypes: float32 in ``vector``, the two half types as bit patterns in ``vector_bits``.
STORAGE_DTYPES = ("float32", "float16", "bfloat16")

#: Iceberg/Parquet properties for float-heavy tables: no dictionary on floats, cheap codec.
TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
    "write.parquet.compression-level": "1",
}


def encode_half(matrix: np.ndarray, dtype: str) -> pa.Array:
    """Pack rows of a float32 matrix as float16/bfloat16 bit patterns, one binary value per row.

    bfloat16 keeps the upper 16 bits of each float32 with round-to-nearest-even.
    """
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if dtype == "float16":
        bits = matrix.astype(np.float16).view(np.uint16)
    elif dtype == "bfloat16":
        u = matrix.view(np.uint32).astype(np.uint64)
        bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    else:
        raise ValueError(f"not a half dtype: {dtype}")
    width = bits.shape[1] * 2
    offsets = np.arange(0, (bits.shape[0] + 1) * width, width, dtype=np.int32)
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(bits.tobytes())]
    return pa.BinaryArray.from_buffers(pa.binary(), bits.shape[0], buffers)


def decode_half(values: pa.Array, dtype: str, dim: int) -> np.ndarray:
    """Inverse of :func:`encode_half`: a float32 matrix ``[rows x dim]``."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    data = np.frombuffer(values.buffers()[2], dtype=np.uint16)
    start = values.offset * dim
    bits = data[start : start + len(values) * dim].reshape(len(values), dim)
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def vectors_to_matrix(table: pa.Table) -> np.ndarray:
    """Turn the vector column(s) of activation rows into a float32 matrix ``[rows x dim]``."""
    if table.num_rows == 0:
        return np.zeros((0, 0), dtype=np.float32)
    dtype = table.column("dtype")[0].as_py()
    if dtype == "float32":
        col = table.column("vector").combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(table.num_rows, -1).astype(np.float32, copy=False)
    bits = table.column("vector_bits").combine_chunks()
    dim = len(bits[0].as_py()) // 2
    return decode_half(bits, dtype, dim)
