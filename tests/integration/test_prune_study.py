"""A whole pruning study on a tiny random Llama: choices, evaluations, MLflow, lake, a model that generates."""

import numpy as np
import pytest
import torch

from raydund.config import Settings
from raydund.errors import UserError
from raydund.prune import evaluate, models, surgery
from raydund.prune.study import PruneConfig, run_study, study_data
from raydund.prune.workers import Evaluator, LocalPool
from tests.conftest import SHARED_DATA
from tests.support import tiny_lm

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no shared/data beside the checkout")


@pytest.fixture
def mirrored(tmp_path):
    return Settings.from_env({"RAYDUND_HOME": str(tmp_path / "home"),
                              "RAYDUND_DATA_MIRROR": str(SHARED_DATA)}).prepare()


def _cfg(folder, **kw):
    base = dict(model=str(folder), blocks=(1, 2), calibration_sentences=8, sleb_sentences=4, eval_sentences=6,
                probe_train_sentences=8, sst2_sentences=6, batch_size=4, workers=2)
    return PruneConfig(**{**base, **kw})


def test_study_end_to_end(tmp_path, mirrored):
    import mlflow

    folder = tiny_lm.save("llama", tmp_path / "tiny-llama", layers=5)
    cfg = _cfg(folder)
    out = run_study(cfg, mirrored, pool_factory=lambda data: LocalPool(Evaluator(cfg.model, data)))
    rows = out["rows"]
    assert len(rows) == 1 + 7 * 2 and {r["criterion"] for r in rows} >= {"none", "sleb", "gromov", "probe"}
    by = {(r["criterion"], r["n"]): r for r in rows}
    assert by["last", 2]["blocks"] == [3, 4]
    # SLEB's first choice is the single block whose removal gives the lowest calibration perplexity
    model, tok = models.load(str(folder))
    data = study_data(cfg, mirrored)
    cal = evaluate.join(data.calibration[:4])
    single = [evaluate.perplexity(surgery.drop_blocks(model, [b]), tok, cal, 4) for b in range(5)]
    assert out["details"]["sleb"]["order"][0] == int(np.argmin(single))
    assert out["details"]["sleb"]["calibration_ppl"][0] == pytest.approx(min(single), rel=1e-6)
    # the evaluation of a row is the model without its blocks, measured directly
    r = by["gromov", 2]
    small = surgery.drop_blocks(model, r["blocks"])
    assert r["ppl"] == pytest.approx(evaluate.perplexity(small, tok, evaluate.join(data.evaluation), 4), rel=1e-6)
    assert 0 <= r["sst2"] <= 1 and 0 <= r["pos"] <= 1
    # lake table and MLflow runs
    from raydund.lake import Lake

    table = Lake(mirrored).catalog.load_table("raydund.prune_results").scan().to_arrow()
    assert table.num_rows == len(rows) * 3
    mlflow.set_tracking_uri(mirrored.tracking_uri)
    children = mlflow.search_runs(search_all_experiments=True, filter_string="params.criterion = 'sleb'")
    assert len(children) >= 2
    # the best pruned model per n generates like the pruned model itself
    uri = out["registered"][2]
    best = out["best"][2]
    gen = mlflow.pyfunc.load_model(uri).predict(["the quick brown"])
    enc = tok("the quick brown", return_tensors="pt")
    with torch.no_grad():
        ref = surgery.drop_blocks(model, best["blocks"]).generate(**enc, max_new_tokens=20, do_sample=False,
                                                                 pad_token_id=tok.pad_token_id)
    assert gen == [tok.decode(ref[0, enc.input_ids.shape[1]:], skip_special_tokens=True)]


def test_bad_configs(tmp_path, mirrored):
    with pytest.raises(UserError, match="unknown criteria"):
        PruneConfig(model="x", criteria=("nope",))
    with pytest.raises(UserError, match="unknown metrics"):
        PruneConfig(model="x", metrics=("bleu",))
    cfg = _cfg(tmp_path, eval_split="train", calibration_sentences=8)
    with pytest.raises(UserError, match="must not overlap"):
        study_data(cfg, mirrored)


@pytest.mark.slow
def test_study_on_ray_actors(tmp_path, mirrored, ray_local):
    folder = tiny_lm.save("gpt2", tmp_path / "tiny-gpt2", layers=4)
    out = run_study(_cfg(folder, criteria=("sleb", "shortgpt", "last"), metrics=("ppl",), register=False), mirrored)
    by = {(r["criterion"], r["n"]): r for r in out["rows"]}
    assert by["last", 1]["blocks"] == [3] and len(out["details"]["sleb"]["order"]) == 2
