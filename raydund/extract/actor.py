"""The Ray Data actor: loads the model once, turns shards of sentences into Parquet files.

Each call gets one shard (a contiguous run of length-sorted sentences) and writes one
file per layer of every unit it extracts (``shard-N/layer-L.parquet`` for one unit,
``shard-N/<unit>-layer-L.parquet`` for a comma list such as ``word,mlp``, all from the
same forward passes) straight to the warehouse, in the activation table's schema. Only
file paths and counts travel back through Ray's object store; the vectors never do.
A small ``_done/shard-N.json`` marker is written last, so a re-run of an interrupted
job skips the shards that finished. A shard that is written again (its actor died and
Ray retried the call) overwrites its own files: file names depend on the shard only.

Fault injection (tests and chaos drills only): when ``RAYDUND_FAULT_FILE`` names a JSON
file in the actor's environment, ``{"kill_in_shard": N}`` makes the actor writing shard
N kill its own process (SIGKILL) after its layer files are written and before its
marker, once (the file is renamed first, so only one actor fires it);
``{"sleep_per_shard": S}`` slows every shard by S seconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from raydund.errors import UserError
from raydund.extract.encoder import WORD_UNITS, Encoder, default_threads, first_nonfinite, zero_nonfinite
from raydund.extract.models import ModelSpec, load_model
from raydund.lake import ACTIVATION_SCHEMA, encode_half

log = logging.getLogger(__name__)

#: Environment variable naming the fault-injection file (see the module docstring).
FAULT_ENV = "RAYDUND_FAULT_FILE"

#: Rows buffered per layer before a Parquet row group is written ...
ROW_GROUP_ROWS = 8192
#: ... or fewer, when the buffered vectors of all layers and units reach this many bytes (memory stays
#: flat in the words of a shard and in the width of the units: SmolLM2 word+mlp is 256 KB per word).
ROW_GROUP_BYTES = 128 << 20

#: Parquet settings for float vectors: no dictionary (useless on floats), byte-stream-split + zstd-1.
PARQUET_OPTIONS = dict(
    compression="zstd",
    compression_level=1,
    use_dictionary=["model", "corpus", "split", "unit", "dtype", "word"],
    use_byte_stream_split=["vector.list.element"],
    write_statistics=True,
)


#: What :meth:`ExtractActor.write_shard` returns (and writes as the shard's marker): ``units``, and per unit
#: ``unit_layers`` (files) and ``unit_bytes``, in the order of ``files``.
RECORD_KEYS = ("shard", "files", "words", "bytes", "seconds", "dropped", "nonfinite", "units", "unit_layers",
               "unit_bytes")


def split_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a ``file://`` or ``s3://`` URI."""
    return pafs.FileSystem.from_uri(uri)


def done_marker(shard: int) -> str:
    """Name of the marker a finished shard leaves behind."""
    return f"_done/shard-{shard:06d}.json"


def inject_fault(shard: int) -> None:
    """Apply the fault the ``RAYDUND_FAULT_FILE`` file asks for at this point of ``shard``."""
    path = os.environ.get(FAULT_ENV)
    if not path or not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as fh:
            fault = json.load(fh)
    except (OSError, ValueError):
        return
    if fault.get("sleep_per_shard"):
        time.sleep(float(fault["sleep_per_shard"]))
    if fault.get("kill_in_shard") == shard:
        try:
            os.rename(path, f"{path}.fired")  # atomic: exactly one actor fires
        except OSError:
            return
        log.warning("fault injection: killing extraction actor %d in shard %d", os.getpid(), shard)
        os.kill(os.getpid(), signal.SIGKILL)


def _constant(value, n: int, type_: pa.DataType) -> pa.Array:
    return pa.array([value], type_).take(pa.array(np.zeros(n, dtype=np.int32)))


def vectors_column(matrix: np.ndarray, dtype: str) -> tuple[pa.Array, pa.Array]:
    """(``vector``, ``vector_bits``) columns for a ``[rows x hidden]`` float32 matrix."""
    n, dim = matrix.shape
    if dtype == "float32":
        values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
        offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, values), pa.nulls(n, pa.binary())
    return pa.nulls(n, pa.list_(pa.float32())), encode_half(matrix, dtype)


class ExtractActor:
    """Callable class for ``Dataset.map_batches``: one model per actor, one shard per call.

    Parameters
    ----------
    model : ModelSpec
        What to load.
    job : dict
        ``model_name, corpus, split, unit`` (one unit or a comma list,
        :func:`~raydund.extract.encoder.parse_units`), ``aggregation, dtype, batch_size, max_tokens,
        files_uri`` (absolute URI of this job's staging folder), ``allow_nonfinite``
        (zero and count NaN/infinite values instead of refusing the shard).
    threads : int, optional
        Torch threads (Ray sets one thread per declared CPU; extraction wants more).
    device : str, optional
        ``cuda`` or ``cpu`` (default: ``cuda`` when this process sees a GPU; Ray shows an
        actor the GPUs it reserved for it, none when it asked for none).
    """

    def __init__(self, model: ModelSpec, job: dict, threads: int | None = None, device: str | None = None):
        torch.set_num_threads(threads or default_threads())
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.job = job
        model_obj, tokenizer = load_model(model, device=device)
        self.encoder = Encoder(model_obj, tokenizer, aggregation=job["aggregation"],
                               batch_size=job["batch_size"], max_tokens=job.get("max_tokens"), unit=job["unit"])
        self.fs, self.root = split_uri(job["files_uri"])
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self.fs.create_dir(f"{self.root}/_done", recursive=True)
        log.info("extract actor ready on %s with %d threads", device, torch.get_num_threads())

    def __call__(self, batch: pa.Table) -> dict:
        out = {k: [] for k in RECORD_KEYS}
        for shard in batch.to_pylist():
            result = self.write_shard(shard)
            for k in out:
                out[k].append(result[k])
        return out

    def write_shard(self, shard: dict) -> dict:
        """Encode one shard and write one Parquet file per layer of every unit; return what was written."""
        start = time.perf_counter()
        enc = self.encoder
        sentence_ids = np.asarray(shard["sentence_id"], dtype=np.int64)
        sentences = [list(w) for w in shard["words"]]
        dropped_before = enc.dropped_words
        if enc.units[0] in WORD_UNITS:
            chunks = enc.encode_words(sentences)
        else:
            pair = shard.get("words_b")
            chunks = enc.encode_cls(sentences, [list(w) for w in pair] if pair is not None else None)
        folder = f"{self.root}/shard-{int(shard['shard']):06d}"
        self.fs.create_dir(folder, recursive=True)
        prefix = "" if len(enc.units) == 1 else "{unit}-"
        targets = [(unit, layer, f"{folder}/{prefix.format(unit=unit)}layer-{layer:03d}.parquet")
                   for unit in enc.units for layer in range(enc.layers_of(unit))]
        paths = [p for _, _, p in targets]
        writers = [pq.ParquetWriter(p, ACTIVATION_SCHEMA, filesystem=self.fs, **PARQUET_OPTIONS) for p in paths]
        buffers: list[list[pa.Table]] = [[] for _ in paths]
        pending: list[Future] = []
        words = nonfinite = buffered_rows = buffered_bytes = 0
        try:
            for chunk in chunks:  # the next forward pass runs while the writer thread encodes Parquet
                nonfinite += sum(self._check_finite(chunk, unit, layers, sentence_ids)
                                 for unit, layers in chunk.units.items())
                n = len(chunk.word_ids)
                words += n
                keys = {
                    "sentence_id": pa.array(sentence_ids[chunk.sentence_pos]),
                    "word_id": pa.array(chunk.word_ids, pa.int32()),
                    "word": self._word_strings(sentences, chunk),
                }
                for i, (unit, layer, _) in enumerate(targets):
                    buffers[i].append(self._layer_table(unit, layer, keys, chunk.units[unit][layer]))
                buffered_rows += n
                buffered_bytes += sum(a.nbytes for a in chunk.units.values())
                if buffered_rows >= ROW_GROUP_ROWS or buffered_bytes >= ROW_GROUP_BYTES:
                    pending.append(self._flush(writers, buffers))
                    buffers = [[] for _ in paths]
                    buffered_rows = buffered_bytes = 0
            if buffers[0]:
                pending.append(self._flush(writers, buffers))
            for future in pending:
                future.result()
        finally:
            for future in pending:
                future.exception()  # wait for the writer before closing files
            for writer in writers:
                writer.close()
        inject_fault(int(shard["shard"]))
        sizes = [self.fs.get_file_info(p).size for p in paths]
        result = {
            "shard": int(shard["shard"]),
            "files": [self._uri(p) for p in paths],
            "words": words,
            "bytes": int(sum(sizes)),
            "seconds": time.perf_counter() - start,
            "dropped": enc.dropped_words - dropped_before,
            "nonfinite": nonfinite,
            "units": list(enc.units),
            "unit_layers": [enc.layers_of(u) for u in enc.units],
            "unit_bytes": [int(sum(s for (u, _, _), s in zip(targets, sizes) if u == unit)) for unit in enc.units],
        }
        with self.fs.open_output_stream(f"{self.root}/{done_marker(result['shard'])}") as fh:
            fh.write(json.dumps(result).encode())
        return result

    def _check_finite(self, chunk, unit: str, layers: np.ndarray, sentence_ids: np.ndarray) -> int:
        """Refuse a chunk's ``unit`` (its ``layers``) holding NaN/infinite values, naming the sentence and layer;
        or zero and count them.

        Returns
        -------
        int
            Values replaced by 0 (``allow_nonfinite``); 0 when the chunk is finite.

        Raises
        ------
        UserError
            Non-finite values and ``allow_nonfinite`` is not set.
        """
        found = first_nonfinite(layers)
        if found is None:
            return 0
        if self.job.get("allow_nonfinite"):
            return zero_nonfinite(layers)
        layer, row = found
        sentence = int(sentence_ids[chunk.sentence_pos[row]])
        word = int(chunk.word_ids[row])
        where = f"word {word} of sentence {sentence}" if word >= 0 else f"sentence {sentence}"
        of_unit = f" of unit {unit}" if len(self.encoder.units) > 1 else ""
        raise UserError(f"model {self.job['model_name']!r} gives NaN/infinite activations for {where} "
                        f"of {self.job['corpus']}/{self.job['split']} at layer {layer}{of_unit}; nothing committed "
                        "(--allow-nonfinite zeroes and counts them)")

    def _flush(self, writers, buffers) -> Future:
        """Write one row group per layer on the writer thread (one flush at a time, in order)."""
        tables = [pa.concat_tables(b) for b in buffers]

        def write():
            for writer, table in zip(writers, tables):
                writer.write_table(table, row_group_size=1 << 20)

        return self._writer.submit(write)

    def _word_strings(self, sentences, chunk) -> pa.Array:
        if self.encoder.units[0] not in WORD_UNITS:
            return pa.array([self.encoder.tokenizer.cls_token] * len(chunk.word_ids), pa.string())
        return pa.array([sentences[p][w] for p, w in zip(chunk.sentence_pos, chunk.word_ids)], pa.string())

    def _layer_table(self, unit: str, layer: int, keys: dict, matrix: np.ndarray) -> pa.Table:
        job = self.job
        n = len(matrix)
        vector, bits = vectors_column(matrix, job["dtype"])
        columns = {
            "model": _constant(job["model_name"], n, pa.string()),
            "corpus": _constant(job["corpus"], n, pa.string()),
            "split": _constant(job["split"], n, pa.string()),
            "unit": _constant(unit, n, pa.string()),
            "layer": pa.array(np.full(n, layer, dtype=np.int32)),
            **keys,
            "dtype": _constant(job["dtype"], n, pa.string()),
            "vector": vector,
            "vector_bits": bits,
        }
        return pa.Table.from_pydict(columns, schema=ACTIVATION_SCHEMA)

    def _uri(self, path: str) -> str:
        scheme = self.job["files_uri"].split("://", 1)[0]
        return f"{scheme}://{path}" if scheme != "file" else f"file://{path}"
