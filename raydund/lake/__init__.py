"""The lakehouse: Iceberg tables in a SQL catalog, read with polars.

Tables (namespace ``raydund``):

``corpus_<name>``
    one row per sentence: ``split, sentence_id, words, <one list column per label kind>``
    (GLUE: ``words_b`` and a scalar ``label``); partitioned by ``split``.
``activations``
    long layout, one row per (sentence, word, layer)::

        model, corpus, split, unit ("word" | "cls" | "mlp" | "attn"), layer, sentence_id, word_id, word,
        dtype, vector list<float32> (float32 storage) | vector_bits binary (float16/bfloat16)

    partitioned by ``model, corpus, split, unit, layer``.

Writers produce Parquet files (Ray workers, in parallel) and the driver registers
them in ONE commit that also deletes what the same (model, corpus, split, unit)
held before: a re-run replaces, never duplicates, and a failed job commits nothing.

Readers: :meth:`Lake.scan` gives a polars ``LazyFrame``; :meth:`Lake.layer_matrix`
gives one layer as a ``float32`` matrix ``X [tokens x neurons]``, the convention every
analysis uses.
"""

from raydund.lake.catalog import Lake, partition_counts
from raydund.lake.codec import (
                                ACTIVATION_PARTITIONS,
                                ACTIVATION_SCHEMA,
                                STORAGE_DTYPES,
                                TABLE_PROPERTIES,
                                decode_half,
                                encode_half,
                                vectors_to_matrix,
)
from raydund.lake.commit import commit_with_retry, condition
from raydund.lake.names import ACTIVATIONS, NAMESPACE, check_name, corpus_table_name, table_identifier

__all__ = [
    "ACTIVATIONS", "ACTIVATION_PARTITIONS", "ACTIVATION_SCHEMA", "NAMESPACE", "STORAGE_DTYPES", "TABLE_PROPERTIES",
    "Lake", "check_name", "commit_with_retry", "condition", "corpus_table_name", "decode_half", "encode_half",
    "partition_counts", "table_identifier", "vectors_to_matrix",
]
