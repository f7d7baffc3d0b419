"""Run a CLI command twice, as text and with ``--json``, for tests that compare the two."""

import json

from raydund.cli import main


def run_both(argv, capsys) -> tuple[str, object]:
    """The command's text output and its ``--json`` document (one line), both exiting 0."""
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "one JSON document on one line"
    return text, json.loads(out)
