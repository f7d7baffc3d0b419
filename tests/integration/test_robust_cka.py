"""``raydund robust-cka`` on the real lake and MLflow: the sample, the variants and what is logged."""

import json

import numpy as np
import pytest
from references import ref_cka

from benchmarks.synthetic import write_activations
from raydund.cli import main
from raydund.errors import UserError
from raydund.general.robust_job import RobustConfig, run_robust_similarity
from raydund.lake import Lake


def test_sampled_sentences_are_aligned_across_layers_and_the_massive_dimension_is_named(settings, capsys, monkeypatch):
    import mlflow

    rng = np.random.default_rng(0)
    T, d = 600, 8
    shared = rng.standard_normal((T, d)).astype(np.float32)
    layers = [shared + 0.1 * rng.standard_normal((T, d)).astype(np.float32) for _ in range(3)]
    layers[2] = rng.standard_normal((T, d)).astype(np.float32)  # unrelated to the first two
    for X in layers:
        X[::100, 3] = 5000.0  # a massive dimension on every 100th token of every layer
    write_activations(Lake(settings), layers, model="m", corpus="c", split="dev", shard_tokens=200, sentence_len=5)

    cfg = RobustConfig(model="m", corpus="c", split="dev", tokens=300, k=5, seed=1)
    result, run_id = run_robust_similarity(cfg, settings)
    assert 300 <= result.tokens < 305 and result.tokens % 5 == 0  # whole 5-word sentences
    assert [o.tolist() for o in result.outliers] == [[3], [3], [3]]
    # the rows of every layer belong to the same sampled tokens: recompute by hand from the full layers
    lake = Lake(settings)
    full = [lake.layer_matrix("m", "c", "dev", layer) for layer in range(3)]
    from raydund.general.robust_job import sample_sentences

    ids = set(sample_sentences(full[0][1], 300, 1))
    rows = np.array([s in ids for s in full[0][1].column("sentence_id").to_pylist()])
    X0, X2 = full[0][0][rows], full[2][0][rows]
    assert result.cka[0, 2] == pytest.approx(ref_cka(X0, X2), rel=1e-6)
    assert result.cka[0, 2] > 0.5 > result.cka_no_outliers[0, 2]  # the planted dimension fools linear CKA only
    assert result.cka_no_outliers[0, 1] > 0.9

    mlflow.set_tracking_uri(settings.tracking_uri)
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(run_id, "robust_cka")}
    assert {"robust_cka/result.json", "robust_cka/cka.png", "robust_cka/mknn.png"} <= names
    logged = json.loads(open(client.download_artifacts(run_id, "robust_cka/result.json")).read())
    assert logged["outliers"] == {"0": [3], "1": [3], "2": [3]}
    assert client.get_run(run_id).data.params["sampled_tokens"] == str(result.tokens)

    # the command line: one clear line for a bad setting, JSON for scripts
    monkeypatch.setenv("RAYDUND_HOME", str(settings.home))
    assert main(["robust-cka", "--model", "m", "--corpus", "c", "--split", "dev", "--tokens", "2"]) == 2
    assert "tokens must be at least 4" in capsys.readouterr().err
    assert main(["robust-cka", "--model", "m", "--corpus", "c", "--split", "dev", "--tokens", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["massive_dimensions"] == [[3], [3], [3]] and len(out["adjacent"]["mknn"]) == 2
    with pytest.raises(UserError, match="no activations"):
        run_robust_similarity(RobustConfig(model="m", corpus="c", split="train"), settings)
