"""No credential inside a tracking or catalog URI reaches the CLI's output, error lines or logs."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from processes import base_env

from raydund.errors import UserError

BIN = Path(sys.executable).parent
LEAKY = {"MLFLOW_TRACKING_URI": "http://user:secret@127.0.0.1:1",
         "RAYDUND_CATALOG_URI": "postgresql://u:secret@127.0.0.1:1/db"}


@pytest.mark.parametrize("args", [
    ["catalog"],
    ["extract", "--model", "models:/nope/1", "--corpus", "c", "--split", "dev"],
    ["-v", "extract", "--model", "models:/nope/1", "--corpus", "c", "--split", "dev"],
    ["submit", "--no-wait", "similarity", "--corpus", "c", "--split", "dev"],
    ["tracking", "flush"],
])
def test_cli_never_prints_a_uri_password(args, tmp_path):
    env = {**base_env(), **LEAKY, "RAYDUND_HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([str(BIN / "raydund"), *args], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert "secret" not in out.stdout + out.stderr, out.stdout[-1500:] + out.stderr[-1500:]
    if out.returncode == 2:  # a user error: one line, the URI redacted
        assert out.stderr.strip().splitlines()[-1].startswith(("raydund: error:", "usage:"))


def test_registry_error_redacts_the_tracking_uri(tmp_path, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from raydund.config import Settings
    from raydund.extract.encoder import resolve_registered

    def missing(*args, **kwargs):
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no such version")

    monkeypatch.setattr(mlflow.MlflowClient, "get_model_version", missing)
    settings = Settings.from_env({"RAYDUND_HOME": str(tmp_path), **LEAKY})
    with pytest.raises(UserError) as err:
        resolve_registered("models:/nope/1", settings)
    assert "user:***@127.0.0.1:1" in str(err.value) and "secret" not in str(err.value)


def test_cli_errors_and_logs_are_redacted(capsys, monkeypatch):
    from raydund import cli
    from raydund.cli import corpora

    record = logging.LogRecord("raydund", logging.INFO, __file__, 1, "store %s", (LEAKY["RAYDUND_CATALOG_URI"],),
                               None)
    assert cli._RedactFilter().filter(record) and record.getMessage() == "store postgresql://u:***@127.0.0.1:1/db"

    def boom(args):
        raise UserError(f"cannot reach {LEAKY['MLFLOW_TRACKING_URI']}")

    monkeypatch.setattr(corpora, "cmd_catalog", boom)
    assert cli.main(["catalog"]) == 2
    assert capsys.readouterr().err == "raydund: error: cannot reach http://user:***@127.0.0.1:1\n"
