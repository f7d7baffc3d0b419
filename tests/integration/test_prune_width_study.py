"""A whole width-pruning study on a tiny random Llama: plans, evaluations, MLflow, a model that generates."""

import pytest
import torch

from raydund.config import Settings
from raydund.errors import UserError
from raydund.prune import evaluate, models, width
from raydund.prune.width_study import WidthConfig, WidthEvaluator, run_width_study, study_data
from raydund.prune.workers import LocalPool
from tests.conftest import SHARED_DATA
from tests.support import tiny_lm

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no shared/data beside the checkout")


@pytest.fixture
def mirrored(tmp_path):
    return Settings.from_env({"RAYDUND_HOME": str(tmp_path / "home"),
                              "RAYDUND_DATA_MIRROR": str(SHARED_DATA)}).prepare()


@pytest.mark.slow
def test_width_study_end_to_end(tmp_path, mirrored):
    import mlflow

    folder = tiny_lm.save("llama", tmp_path / "tiny-llama", layers=3)
    cfg = WidthConfig(model=str(folder), fractions=(0.25, 0.5), calibration_sentences=16, eval_sentences=6,
                      timing_sentences=2, batch_size=4)
    out = run_width_study(cfg, mirrored, pool_factory=lambda data: LocalPool(WidthEvaluator(cfg.model, data)))
    rows = out["rows"]
    assert len(rows) == 1 + len(width.METHODS) * 2 and {r["method"] for r in rows} == {"none", *width.METHODS}
    by = {(r["method"], r["fraction"]): r for r in rows}
    # a row is the model pruned by that plan, measured directly
    model, tok = models.load(str(folder))
    data = study_data(cfg, mirrored)
    stats = width.collect(model, tok, data.calibration, 4)
    small = width.prune(model, width.plan(model, stats, "fold", 0.5))
    assert by["fold", 0.5]["ppl"] == pytest.approx(evaluate.perplexity(small, tok, data.evaluation, 4), rel=1e-6)
    assert by["fold", 0.5]["parameters"] == width.parameters(small) < by["none", 0.0]["parameters"]
    assert by["magnitude", 0.5]["mlp_parameters"] == 3 * 3 * 16 * 16
    assert all(r["ms_per_token"] > 0 for r in rows)
    # the lake holds every row, which the report reads back through the run's snapshot
    from raydund.lake import Lake
    from raydund.report import pruning

    run, lake_rows = pruning.width_latest(Lake(mirrored), folder.name, "ud_english_ewt")
    assert run.run_id == out["raydund_run_id"] and run.mlflow_run_id == out["run_id"]
    assert lake_rows == sorted(({"method": r["method"], "fraction": r["fraction"],
                                 **{m: r[m] for m in ("ppl", "parameters", "mlp_parameters", "size_mb",
                                                      "ms_per_token")}} for r in rows),
                               key=lambda r: (r["method"] != "none", r["method"], r["fraction"]))
    mlflow.set_tracking_uri(mirrored.tracking_uri)
    children = mlflow.search_runs(search_all_experiments=True, filter_string="params.method = 'random'")
    assert len(children) == 2
    # the registered model generates like the best pruned model
    best = out["best"]
    assert best["fraction"] == 0.5 and best["ppl"] == min(r["ppl"] for r in rows if r["fraction"] == 0.5)
    gen = mlflow.pyfunc.load_model(out["registered"]).predict(["the quick brown"])
    ref_model = width.prune(model, width.plan(model, stats, best["method"], 0.5))
    enc = tok("the quick brown", return_tensors="pt")
    with torch.no_grad():
        ref = ref_model.generate(**enc, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen == [tok.decode(ref[0, enc.input_ids.shape[1]:], skip_special_tokens=True)]


def test_bad_configs(tmp_path, mirrored):
    with pytest.raises(UserError, match="unknown width-pruning methods"):
        WidthConfig(model="x", methods=("biggest",))
    with pytest.raises(UserError, match="fraction"):
        WidthConfig(model="x", fractions=(0.1, 1.0))
    with pytest.raises(UserError, match="must not overlap"):
        study_data(WidthConfig(model="x", eval_split="train"), mirrored)
