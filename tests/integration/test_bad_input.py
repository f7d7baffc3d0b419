"""Bad input ends in one clear line (exit 2 from the CLI) and writes nothing (issue 15, defect 7)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raydund.cli import main
from raydund.config import CATALOG_DIR, Settings, load_yaml
from raydund.errors import UserError
from raydund.lake import Lake, check_name, corpus_table_name

LOCATION_VARS = ("RAYDUND_CATALOG_URI", "RAYDUND_WAREHOUSE", "MLFLOW_TRACKING_URI", "RAYDUND_ARTIFACT_ROOT")


def sentences_table(words):
    return pa.table({"sentence_id": pa.array(range(len(words)), pa.int64()), "words": words,
                     "pos": [["X"] * len(w) for w in words]})


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


@pytest.fixture
def home_env(monkeypatch, tmp_path):
    """``use(path)`` points RAYDUND_HOME at ``path`` (every other location derived from it)."""
    for var in LOCATION_VARS:
        monkeypatch.delenv(var, raising=False)

    def use(path):
        monkeypatch.setenv("RAYDUND_HOME", str(path))
        return Path(path)

    return use


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# -- one name rule -----------------------------------------------------------------------
def test_corpus_names_follow_one_rule_so_two_corpora_never_share_a_table(settings):
    for bad in ("a-b", "AB", "a.b", "1abc", "_a", "", "x" * 65, "../evil"):
        with pytest.raises(UserError, match="lowercase letters, digits and '_'"):
            check_name("corpus", bad)
        with pytest.raises(UserError, match="invalid corpus name"):
            corpus_table_name(bad)
    lake = Lake(settings)
    lake.write_corpus("a_b", {"dev": sentences_table([["x"]])})
    for twin in ("a-b", "A_B", "a.b"):  # these used to map onto corpus_a_b
        with pytest.raises(UserError, match="invalid corpus name"):
            lake.write_corpus(twin, {"dev": sentences_table([["y"], ["z"]])})
    assert lake.table_names() == ["raydund.corpus_a_b"]
    assert lake.table("corpus_a_b").scan().to_arrow().num_rows == 1
    # model names stay partition values: '-' and '.' are fine, paths are not
    assert check_name("model", "minilm-ft-sst2-v1.2") == "minilm-ft-sst2-v1.2"
    with pytest.raises(UserError, match="invalid model name"):
        check_name("model", "../m")


def test_every_catalog_name_passes_the_rule():
    corpora = sorted(p.stem for p in (CATALOG_DIR / "corpora").glob("*.yaml"))
    shipped = {"conll2000", "ud_english_ewt", "pmb_semtag", "ptb_wsj_sample", "sst2", "mrpc", "rte", "stsb"}
    assert shipped <= set(corpora)
    for name in corpora:
        assert check_name("corpus", load_yaml("corpora", name)["name"]) == name
    for path in sorted((CATALOG_DIR / "models").glob("*.yaml")):
        check_name("model", load_yaml("models", path.stem)["name"])


@pytest.mark.parametrize("argv", [
    ["similarity", "--corpus", "My-Corpus", "--split", "dev"],
    ["probe", "--corpus", "ab.c", "--label", "pos"],
    ["cluster", "--corpus", "toy", "--split", "../dev"],
    ["extract", "--corpus", "Toy", "--split", "dev"],
])
def test_cli_refuses_a_bad_name_before_touching_the_home(argv, home_env, tmp_path, capsys):
    home = home_env(tmp_path / "home")
    code, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1 and "invalid" in err[0] and "name" in err[0]
    assert not home.exists()


def test_ingest_refuses_a_catalog_entry_whose_name_breaks_the_rule(settings, tmp_path):
    from raydund.corpora.job import ingest

    data = tmp_path / "tiny.txt"
    data.write_text("Stocks NNS B-NP\nfell VBD B-VP\n\n", encoding="utf-8")
    entry = tmp_path / "Bad-Name.yaml"
    entry.write_text(f"format: conll2000\nlabels: [pos, chunk]\nsplits:\n  train: {{path: {data}}}\n",
                     encoding="utf-8")
    before = files_under(settings.home)
    with pytest.raises(UserError, match="invalid corpus name 'Bad-Name'"):
        ingest(str(entry), settings)
    assert files_under(settings.home) == before


# -- empty splits -------------------------------------------------------------------------
def test_an_empty_split_is_refused_and_nothing_is_written(settings, tmp_path, monkeypatch):
    from raydund.corpora import job as ingest_module

    lake = Lake(settings)
    with pytest.raises(UserError, match="split 'dev' has no sentences"):
        lake.write_corpus("toy", {"train": sentences_table([["a"]]), "dev": sentences_table([])})
    assert lake.table_names() == []

    # ingest: the reader's tables checked before the MLflow run or the lake see anything
    entry = tmp_path / "toy.yaml"
    entry.write_text("format: conll2000\nlabels: [pos, chunk]\nsplits:\n  dev: {path: dev.txt}\n", encoding="utf-8")
    monkeypatch.setattr(ingest_module, "read_corpus", lambda spec, splits, s: {"dev": sentences_table([])})
    before = files_under(settings.home)
    with pytest.raises(UserError, match=r"split 'dev' has no sentences \(dev.txt\)"):
        ingest_module.ingest(str(entry), settings)
    assert files_under(settings.home) == before

    from raydund.extract.job import ExtractConfig

    with pytest.raises(UserError, match="limit must be at least 1"):
        ExtractConfig(model="m", corpus="toy", split="dev", limit=0).check()


@pytest.mark.usefixtures("ray_local")
def test_jobs_on_a_split_without_rows_write_nothing(settings):
    from benchmarks.synthetic import write_activations
    from raydund.general.job import run_similarity
    from raydund.general.stream import SimilarityConfig
    from raydund.probes.job import ProbeConfig, run_probes

    lake = Lake(settings)
    lake.write_corpus("toy", {"dev": sentences_table([["a", "b"]] * 10)})
    rng = np.random.default_rng(0)
    write_activations(lake, [rng.standard_normal((20, 4)).astype(np.float32) for _ in range(2)],
                      model="m", corpus="toy", split="dev", shard_tokens=20, sentence_len=2)
    tables = lake.table_names()
    before = files_under(settings.home)
    with pytest.raises(UserError, match="split=test"):
        run_similarity(SimilarityConfig(model="m", corpus="toy", split="test"), settings, progress=False)
    with pytest.raises(UserError, match="split=test|no split 'test'"):
        run_probes(ProbeConfig(model="m", corpus="toy", label="pos", splits=("dev", "dev", "test")), settings)
    assert lake.table_names() == tables
    assert not [f for f in files_under(settings.home) if f not in before and not f.startswith("mlflow")]
    assert _runs(settings) == []


def _runs(settings):
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    return [r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")]


# -- a label column that does not exist --------------------------------------------------------
def test_a_missing_label_fails_before_any_layer_is_read(settings, monkeypatch):
    from raydund.probes.job import ProbeConfig, run_probes
    from raydund.transfer.job import TransferConfig, run_transfer

    lake = Lake(settings)
    lake.write_corpus("toy", {"dev": sentences_table([["a", "b"]] * 10)})

    def no_reading(*args, **kwargs):
        raise AssertionError("an activation layer was read")

    for name in ("layer_matrix", "layer_keys", "activation_files", "activations"):
        monkeypatch.setattr(Lake, name, no_reading)
    with pytest.raises(UserError, match=r"no label column 'nosuch'; its label columns: pos"):
        run_probes(ProbeConfig(model="m", corpus="toy", label="nosuch"), settings)
    with pytest.raises(UserError, match=r"no label column 'nosuch'; its label columns: pos"):
        run_transfer(TransferConfig(model="m", corpus="toy", labels=("pos", "nosuch")), settings)
    assert lake.table_names() == ["raydund.corpus_toy"]


# -- read commands on a mistyped home -----------------------------------------------------------
READ_COMMANDS = [
    ["tables"],
    ["tables", "--partitions"],
    ["explore", "top-words", "--corpus", "toy", "--layer", "0", "--neuron", "0"],
    ["explore", "label-neurons", "--corpus", "toy", "--label", "pos", "--value", "X"],
    ["explore", "heatmap", "--corpus", "toy", "--neuron", "0:0"],
    ["explore", "browser", "--corpus", "toy", "--no-track"],
    ["report", "0123456789abcdef"],
]


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_read_commands_on_a_mistyped_home_create_nothing(argv, home_env, tmp_path, capsys):
    home = home_env(tmp_path / "raydnud")  # the typo
    code, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1
    assert "lake is empty" in err[0] and str(home / "catalog.db") in err[0]
    assert not home.exists() and os.listdir(tmp_path) == []


def test_read_commands_never_create_what_a_lake_lacks(home_env, tmp_path, capsys):
    home = home_env(tmp_path / "home")
    Lake(Settings.from_env({"RAYDUND_HOME": str(home)}).prepare()).write_corpus(
        "toy", {"dev": sentences_table([["a"]])})
    before = files_under(home)
    assert main(["tables"]) == 0
    assert "raydund.corpus_toy" in capsys.readouterr().out
    code, err = run_cli(["explore", "top-words", "--corpus", "toy", "--layer", "0", "--neuron", "0"], capsys)
    assert code == 2 and len(err) == 1 and "activations" in err[0]
    assert files_under(home) == before
    assert Lake(Settings.from_env({"RAYDUND_HOME": str(home)})).table_names() == ["raydund.corpus_toy"]

    # a catalog file holding no raydund lake (another tool's, or an empty one) is not written to either
    other = home_env(tmp_path / "other")
    other.mkdir()
    (other / "catalog.db").touch()
    code, err = run_cli(["tables"], capsys)
    assert code == 2 and len(err) == 1 and "lake is empty" in err[0]
    assert (other / "catalog.db").stat().st_size == 0 and files_under(other) == ["catalog.db"]


# -- NaN/Inf activations ---------------------------------------------------------------------------
POISON = "fox"
NAN_SENTENCES = [["the", "quick", "dog"], ["stocks", "fell"], ["over", "the", "lazy", "dog"],
                 ["the", "quick", "brown", POISON, "jumped"], ["sharply", "fell", "stocks"], ["the", "dog"]]


@pytest.fixture
def poisoned_model(tiny_model_dir, tmp_path):
    """The tiny BERT with the embedding row of one word set to NaN: every layer of its sentence goes NaN."""
    from transformers import AutoModel, AutoTokenizer

    source = tiny_model_dir("bert")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source)
    token = tokenizer.convert_tokens_to_ids(POISON)
    assert token != tokenizer.unk_token_id
    with __import__("torch").no_grad():
        model.embeddings.word_embeddings.weight[token] = float("nan")
    folder = tmp_path / "poisoned"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def expected_nonfinite(model_dir) -> int:
    from raydund.extract.encoder import Encoder, ModelSpec, load_model

    model, tokenizer = load_model(ModelSpec("ref", model_dir))
    chunks = Encoder(model, tokenizer).encode_words(NAN_SENTENCES)
    return sum(int((~np.isfinite(chunk.layers)).sum()) for chunk in chunks)


@pytest.mark.usefixtures("ray_local")
def test_nonfinite_activations_are_refused_or_zeroed_and_counted(settings, poisoned_model):
    import json

    import mlflow

    from raydund.extract.job import ExtractConfig, run_extraction

    lake = Lake(settings)
    lake.write_corpus("toy", {"dev": sentences_table(NAN_SENTENCES)})
    cfg = dict(model=poisoned_model, corpus="toy", split="dev", shard_words=6, batch_size=2)
    with pytest.raises(UserError) as refused:
        run_extraction(ExtractConfig(**cfg), settings, progress=False)
    message = str(refused.value)
    assert "word 3 of sentence 3 of toy/dev at layer 0" in message and "--allow-nonfinite" in message
    assert "\n" not in message
    assert lake.activations().current_snapshot() is None  # nothing committed

    expected = expected_nonfinite(poisoned_model)
    assert expected > 0
    result = run_extraction(ExtractConfig(**cfg, allow_nonfinite=True), settings, progress=False)
    mlflow.set_tracking_uri(settings.tracking_uri)
    run = mlflow.get_run(result.run_id)
    assert run.data.metrics["nonfinite_values"] == expected and run.data.params["allow_nonfinite"] == "True"
    staging = Path(lake.activations().location().removeprefix("file://")) / "data" / "staging"
    records = [json.loads(p.read_text()) for p in staging.rglob("_done/*.json")]
    committed = {uri for _, uri in lake.activation_files("poisoned", "toy", "dev")}
    allowed = [r for r in records if set(r["files"]) <= committed]
    assert sum(len(r["files"]) for r in allowed) == len(committed)
    assert sum(r["nonfinite"] for r in allowed) == expected
    assert len({p.parent.parent.name for p in staging.rglob("_done/*.json")}) == 2  # the option is in the job key
    for layer in range(result.layers):
        X, keys = lake.layer_matrix("poisoned", "toy", "dev", layer)
        assert np.isfinite(X).all()
        rows = dict(zip(zip(keys["sentence_id"].to_pylist(), keys["word_id"].to_pylist()), X))
        assert not rows[(3, 3)].any()  # the poisoned word: zeros
        assert rows[(0, 0)].any()  # another sentence: untouched
