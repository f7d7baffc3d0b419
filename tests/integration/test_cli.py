"""The `raydund` command: help, and user mistakes as one line without a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(args, home):
    env = {**os.environ, "RAYDUND_HOME": str(home)}
    return subprocess.run([str(BIN / "raydund"), *args], env=env, capture_output=True, text=True, timeout=600)


def test_help_lists_the_stages(tmp_path):
    out = run(["--help"], tmp_path)
    assert out.returncode == 0
    for command in ("ingest", "extract", "tables", "demo", "bench"):
        assert command in out.stdout
    assert "--aggregation" in run(["extract", "--help"], tmp_path).stdout


@pytest.mark.parametrize("args,message", [
    (["extract", "--corpus", "nope", "--split", "train"],
     "no table 'raydund.corpus_nope' in the lake (tables: none yet); ingest it first: raydund ingest nope"),
    (["ingest", "no_such_corpus"], "unknown corpus 'no_such_corpus'"),
])
def test_user_mistake_is_one_line(tmp_path, args, message):
    out = run(args, tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0


def test_relative_locations_are_refused(tmp_path):
    env = {**os.environ, "RAYDUND_HOME": str(tmp_path), "RAYDUND_WAREHOUSE": "warehouse"}
    out = subprocess.run([str(BIN / "raydund"), "tables"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "absolute URI" in out.stderr


def test_ingest_is_all_or_nothing(tmp_path):
    from raydund.config import Settings
    from raydund.lake import Lake

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("a DT B-NP\nb NN I-NP\n\n")
    (data / "dev.txt").write_text("a DT B-NP\n\n")
    (data / "test.txt").write_text("a DT\n\n")  # a missing column on line 1
    entry = tmp_path / "toy.yaml"
    entry.write_text("name: toy\nformat: conll2000\nlabels: [pos, chunk]\nsplits:\n"
                     "  train: {path: train.txt}\n  dev: {path: dev.txt}\n  test: {path: test.txt}\n")
    env = {"RAYDUND_DATA_MIRROR": str(data)}
    os.environ.update(env)
    try:
        good = run(["ingest", str(entry), "--split", "train", "--split", "dev"], tmp_path / "home")
        assert good.returncode == 0, good.stderr
        assert "toy/train: 1 sentences, 2 tokens" in good.stdout
        lake = Lake(Settings.from_env({"RAYDUND_HOME": str(tmp_path / "home")}))
        before = lake.table("corpus_toy").current_snapshot().snapshot_id
        bad = run(["ingest", str(entry)], tmp_path / "home")
        assert bad.returncode == 2 and f"{data / 'test.txt'}:1: expected 3 columns" in bad.stderr
        assert lake.table("corpus_toy").current_snapshot().snapshot_id == before
        assert lake.read_corpus("toy", "train").num_rows == 1
    finally:
        for key in env:
            os.environ.pop(key)
