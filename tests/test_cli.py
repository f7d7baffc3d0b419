"""The `raydund` command: help, and user mistakes as one line without a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(args, home):
    env = {**os.environ, "RAYDUND_HOME": str(home)}
    return subprocess.run([str(BIN / "raydund"), *args], env=env, capture_output=True, text=True, timeout=120)


def test_help_lists_the_stages(tmp_path):
    out = run(["--help"], tmp_path)
    assert out.returncode == 0
    for command in ("ingest", "extract", "tables", "demo", "bench"):
        assert command in out.stdout
    assert "--aggregation" in run(["extract", "--help"], tmp_path).stdout


@pytest.mark.parametrize("args,message", [
    (["extract", "--corpus", "nope", "--split", "train"], "no table 'raydund.corpus_nope'"),
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
