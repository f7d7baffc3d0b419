"""The Iceberg lake: corpus tables, half-precision storage, partition replacement."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch

from raydund.errors import UserError
from raydund.lake import Lake, decode_half, encode_half


def corpus(n, offset=0):
    return pa.table({
        "sentence_id": pa.array(range(n), pa.int64()),
        "words": [[f"w{offset + i}", "x"] for i in range(n)],
        "pos": [["NN", "DT"]] * n,
    })


def test_write_corpus_replaces_only_the_given_splits(settings):
    lake = Lake(settings)
    lake.write_corpus("toy", {"train": corpus(3), "dev": corpus(2)})
    lake.write_corpus("toy", {"dev": corpus(4, offset=100)})
    assert lake.read_corpus("toy", "train").num_rows == 3
    dev = lake.read_corpus("toy", "dev")
    assert dev.column("words").to_pylist()[0] == ["w100", "x"]
    assert dev.num_rows == 4
    counts = lake.scan("corpus_toy").group_by("split").agg(pl.len()).sort("split").collect()
    assert counts.to_dict(as_series=False) == {"split": ["dev", "train"], "len": [4, 3]}


def test_missing_split_and_table_are_clear_errors(settings):
    lake = Lake(settings)
    lake.write_corpus("toy", {"train": corpus(2)})
    with pytest.raises(UserError, match="no split 'test'.*train"):
        lake.read_corpus("toy", "test")
    with pytest.raises(UserError, match="no table 'raydund.corpus_other'"):
        lake.read_corpus("other", "train")


@pytest.mark.parametrize("dtype,torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_storage_matches_torch_rounding(dtype, torch_dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((50, 24)) * rng.choice([1e-3, 1, 300], size=(50, 1))).astype(np.float32)
    got = decode_half(encode_half(x, dtype), dtype, 24)
    ref = torch.from_numpy(x).to(torch_dtype).float().numpy()
    np.testing.assert_array_equal(got, ref)


def test_half_decoding_of_a_sliced_array():
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    packed = encode_half(x, "float16").slice(3, 4)
    np.testing.assert_array_equal(decode_half(packed, "float16", 4), x[3:7])
