"""Several units from one forward pass (``--unit word,mlp``): the same vectors as one unit at a time,
one commit that replaces exactly the units recomputed, resumable from shard markers, bad lists refused."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from raydund.cli import main
from raydund.errors import UserError
from raydund.extract.encoder import Encoder, ModelSpec, load_model, parse_units
from raydund.extract.job import ExtractConfig, run_extraction
from raydund.lake import Lake

pytestmark = pytest.mark.usefixtures("ray_local")

SENTENCES = [["the", "quick", "brown", "fox", "jumped", "."], ["Stocks", "fell", "3.5", "%", "on", "Monday"],
             ["naïve", "café", ",", "really", "!"], ["dog"], ["a"] * 9] * 3


def corpus_lake(settings) -> Lake:
    lake = Lake(settings)
    lake.write_corpus("toy", {"train": pa.table({"sentence_id": pa.array(range(len(SENTENCES)), pa.int64()),
                                                  "words": SENTENCES, "pos": [["X"] * len(s) for s in SENTENCES]})})
    return lake


def by_word(encoder: Encoder) -> dict[str, dict]:
    """unit -> {(sentence, word): [layers x width]} over every chunk of the encoder."""
    out = {u: {} for u in encoder.units}
    for chunk in encoder.encode_words(SENTENCES):
        assert chunk.layers is chunk.units[encoder.units[0]]
        for unit, layers in chunk.units.items():
            for i, key in enumerate(zip(chunk.sentence_pos, chunk.word_ids)):
                out[unit][key] = layers[:, i]
    return out


@pytest.mark.parametrize("aggregation", ["last", "mean"])
def test_one_forward_gives_each_unit_bit_for_bit(tiny_model_dir, aggregation):
    model, tok = load_model(ModelSpec("ref", tiny_model_dir("llama")))
    together = by_word(Encoder(model, tok, aggregation=aggregation, batch_size=4, unit="attn,word,mlp"))
    assert list(together) == ["word", "mlp", "attn"]  # lake order, whatever the order given
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    for unit in ("word", "mlp", "attn"):
        alone = by_word(Encoder(model, tok, aggregation=aggregation, batch_size=4, unit=unit))[unit]
        assert alone.keys() == together[unit].keys()
        for key, ref in alone.items():
            np.testing.assert_array_equal(together[unit][key], ref)
    forwards = len(calls) // 3
    calls.clear()
    by_word(Encoder(model, tok, aggregation=aggregation, batch_size=4, unit="word,mlp,attn"))
    assert len(calls) == forwards, "three units, one forward pass per batch"


def committed(lake, unit) -> pl.DataFrame:
    rows = lake.activations().scan(row_filter=f"unit == '{unit}'").to_arrow()
    return pl.from_arrow(rows).select("unit", "layer", "sentence_id", "word_id", "word", "vector").sort(
        "layer", "sentence_id", "word_id")


@pytest.mark.slow
def test_multi_unit_job_equals_single_unit_jobs_and_replaces_only_its_units(settings, tmp_path, tiny_model_dir):
    import mlflow

    from raydund.config import Settings

    model_dir = tiny_model_dir("llama")
    base = dict(model=model_dir, corpus="toy", split="train", name="tiny-llama", shard_words=25, batch_size=4)
    single = corpus_lake(settings)
    for unit in ("word", "mlp", "attn"):
        run_extraction(ExtractConfig(unit=unit, **base), settings, progress=False)
    other = Settings.from_env({"RAYDUND_HOME": str(tmp_path / "multi")}).prepare()
    multi = corpus_lake(other)
    run_extraction(ExtractConfig(unit="attn", limit=3, **base), other, progress=False)  # an older, smaller attn
    before = committed(multi, "attn")
    result = run_extraction(ExtractConfig(unit="mlp,word", executor="ray", **base), other, progress=False)
    for unit in ("word", "mlp"):
        assert committed(multi, unit).equals(committed(single, unit)), unit
    assert committed(multi, "attn").equals(before), "a unit the job did not recompute stays as it was"
    n_words = sum(map(len, SENTENCES))
    assert result.units["word"]["layers"] == 3 and result.units["mlp"]["layers"] == 2
    assert result.layers == 5 and result.words == n_words
    mlflow.set_tracking_uri(other.tracking_uri)
    metrics = mlflow.get_run(result.run_id).data.metrics
    assert metrics["word/rows"] == 3 * n_words and metrics["mlp/rows"] == 2 * n_words
    assert metrics["word/bytes"] + metrics["mlp/bytes"] == metrics["bytes"]
    again = run_extraction(ExtractConfig(unit="word,mlp", **base), other, progress=False)  # same job: resumes
    assert mlflow.get_run(again.run_id).data.metrics["resumed_shards"] == metrics["files"] / 5
    for unit in ("word", "mlp"):
        assert committed(multi, unit).equals(committed(single, unit)), unit


@pytest.mark.slow
def test_killed_multi_unit_job_resumes_from_its_shard_markers(settings, tiny_model_dir, monkeypatch):
    import mlflow

    from raydund.extract.actor import ExtractActor

    lake = corpus_lake(settings)
    cfg = ExtractConfig(model=tiny_model_dir("llama"), corpus="toy", split="train", name="tiny-llama",
                        unit="word,mlp", shard_words=25, batch_size=4, executor="local")
    real = ExtractActor.write_shard
    written = []

    def killed_after_one(self, shard):
        if written:
            raise KeyboardInterrupt  # the job dies in its second shard
        written.append(shard["shard"])
        return real(self, shard)

    monkeypatch.setattr(ExtractActor, "write_shard", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_extraction(cfg, settings, progress=False)
    assert lake.activations().current_snapshot() is None, "nothing committed by the killed job"
    monkeypatch.setattr(ExtractActor, "write_shard", real)
    result = run_extraction(cfg, settings, progress=False)
    mlflow.set_tracking_uri(settings.tracking_uri)
    assert mlflow.get_run(result.run_id).data.metrics["resumed_shards"] == 1
    n_words = sum(map(len, SENTENCES))
    for unit, layers in (("word", 3), ("mlp", 2)):
        rows = committed(lake, unit)
        assert rows.height == rows.select("layer", "sentence_id", "word_id").n_unique() == layers * n_words


@pytest.mark.parametrize("bad, message", [
    ("word,,mlp", "an empty unit"), ("word,neurons", "unknown unit 'neurons'"), ("mlp,mlp", "repeated"),
    ("cls,word", "cannot be combined"), ("", "an empty unit"),
])
def test_bad_unit_lists_are_one_line_user_errors(settings, bad, message, capsys, monkeypatch):
    with pytest.raises(UserError, match=message):
        parse_units(bad)
    with pytest.raises(UserError, match=message):
        ExtractConfig(model="minilm", corpus="toy", split="train", unit=bad).check()
    monkeypatch.setenv("RAYDUND_HOME", str(settings.home))
    for var in ("RAYDUND_CATALOG_URI", "RAYDUND_WAREHOUSE", "MLFLOW_TRACKING_URI", "RAYDUND_ARTIFACT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    assert main(["extract", "--corpus", "toy", "--split", "train", "--unit", bad]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_single_units_keep_their_spelling():
    assert parse_units("word") == ("word",) and parse_units(" mlp ") == ("mlp",)
    assert parse_units("mlp,word") == parse_units(["word", "mlp"]) == ("word", "mlp")
    cfg = ExtractConfig(model="m", corpus="toy", split="train", unit="mlp, word").check()
    assert cfg.unit == "word,mlp" and cfg.units == ("word", "mlp")
