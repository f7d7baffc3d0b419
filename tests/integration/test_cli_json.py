"""The CLI's --json on a real lake (Ray, Iceberg, MLflow): the same numbers the command prints."""


import numpy as np
import pytest
from cli_json import run_both


@pytest.fixture
def lake_env(settings, monkeypatch):
    for key, value in settings.env_vars().items():
        monkeypatch.setenv(key, value)
    from raydund.lake import Lake

    return Lake(settings)


@pytest.mark.usefixtures("ray_local")
def test_json_of_similarity_tables_and_runs_equals_the_printed_numbers(lake_env, capsys):
    from benchmarks.synthetic import write_activations

    rng = np.random.default_rng(0)
    layers = [rng.standard_normal((60, 4)).astype(np.float32) for _ in range(3)]
    layers[1] = layers[0] + 0.1 * layers[1]
    write_activations(lake_env, layers, model="m", corpus="c", split="dev", shard_tokens=30, sentence_len=5)

    text, data = run_both(["similarity", "--model", "m", "--corpus", "c", "--split", "dev", "-q"], capsys)
    (sim,) = data
    assert f"m c/dev: {sim['tokens']} tokens x {sim['neurons']} neurons ({sim['constant_neurons']} constant)" in text
    assert f"mean CKA of adjacent layers {sim['cka_adjacent_mean']:.3f}" in text
    assert f"(debiased {sim['cka_debiased_adjacent_mean']:.3f})" in text
    rows = text.strip().splitlines()[-3:]
    printed = np.array([[float(v) for v in row.split()[1:]] for row in rows])
    np.testing.assert_allclose(printed, np.array(sim["cka"]), atol=0.005)

    text, data = run_both(["tables"], capsys)
    assert {t["table"] for t in data["tables"]} >= {"raydund.activations", "raydund.runs"}
    for table in data["tables"]:
        line = next(line for line in text.splitlines() if table["table"] in line)
        assert str(table["rows"]) in line and str(table["snapshot_id"]) in line

    text, data = run_both(["runs"], capsys)
    assert [r["stage"] for r in data] == ["similarity", "similarity"]  # the two runs above
    for run in data:
        assert f"{run['run_id']}  {run['stage']:<10} m c" in text
        for table, snapshot in run["outputs"].items():
            assert f"    {table} @ {snapshot}" in text
