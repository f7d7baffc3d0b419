"""A whole pruning study on a tiny random Llama: choices, evaluations, MLflow, lake, a model that generates."""

import numpy as np
import pytest
import torch

from raydund.config import Settings
from raydund.errors import UserError
from raydund.prune import evaluate, models, surgery
from raydund.prune.study import PruneConfig, lake_model_name, run_study, study_data
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
    assert len(rows) == 1 + 8 * 2 and {r["criterion"] for r in rows} >= {"none", "hybrid", "sleb", "gromov", "probe"}
    by = {(r["criterion"], r["n"]): r for r in rows}
    assert by["last", 2]["blocks"] == [3, 4]
    assert out["details"]["hidden_states"]["source"] == "lake"
    # SLEB's first choice is the single block whose removal gives the lowest calibration perplexity
    model, tok = models.load(str(folder))
    data = study_data(cfg, mirrored)
    cal = evaluate.join(data.calibration[:4])
    single = [evaluate.perplexity(surgery.drop_blocks(model, [b]), tok, cal, 4) for b in range(5)]
    assert out["details"]["sleb"]["order"][0] == int(np.argmin(single))
    assert out["details"]["sleb"]["calibration_ppl"][0] == pytest.approx(min(single), rel=1e-6)
    # hybrid: its choice has the lowest perplexity on all calibration sentences among its finalists,
    # every other criterion's choice was among the sets it scored, and it is no worse than any of them there
    full_cal = evaluate.join(data.calibration)
    finalists = out["details"]["hybrid"]["n"][2]["finalists"]
    hyb = by["hybrid", 2]["blocks"]
    assert min(finalists, key=finalists.get) == ",".join(map(str, hyb))
    direct = evaluate.perplexity(surgery.drop_blocks(model, hyb), tok, full_cal, 4)
    assert finalists[",".join(map(str, hyb))] == pytest.approx(direct, rel=1e-6)
    assert out["details"]["hybrid"]["n"][2]["scored"] >= len({tuple(by[c, 2]["blocks"]) for c in
                                                              ("sleb", "shortgpt", "gromov", "cka")})
    # the evaluation of a row is the model without its blocks, measured directly
    r = by["gromov", 2]
    small = surgery.drop_blocks(model, r["blocks"])
    assert r["ppl"] == pytest.approx(evaluate.perplexity(small, tok, evaluate.join(data.evaluation), 4), rel=1e-6)
    assert 0 <= r["sst2"] <= 1
    # the POS probe (word vectors from the resumed forward) as on the pruned model itself
    flat = [[x for s in lab for x in s] for lab in (data.probe_train_labels, data.evaluation_labels)]
    pos = evaluate.probe_accuracy(evaluate.word_vectors(small, tok, data.probe_train, 4), flat[0],
                                  evaluate.word_vectors(small, tok, data.evaluation, 4), flat[1])
    assert r["pos"] == pytest.approx(pos, abs=1e-12)
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


def test_criteria_read_the_lake_and_extract_only_once(tmp_path, mirrored):
    from raydund.lake import Lake
    from raydund.prune.states import lake_states

    folder = tiny_lm.save("llama", tmp_path / "tiny-llama", layers=3)
    data = study_data(_cfg(folder, metrics=("ppl",)), mirrored)
    H, labels = lake_states(str(folder), "ud_english_ewt", "train", data.calibration, mirrored,
                            data.calibration_labels)
    lake = Lake(mirrored)
    snapshot = lake.activations().current_snapshot().snapshot_id
    H2, _ = lake_states(str(folder), "ud_english_ewt", "train", data.calibration[:5], mirrored)
    assert lake.activations().current_snapshot().snapshot_id == snapshot  # reused, not re-extracted
    # every layer, first words left out; labels line up with the rows
    assert len(H) == 4 and all(h.shape == (sum(len(s) - 1 for s in data.calibration), 16) for h in H)
    assert labels == [x for s in data.calibration_labels for x in s[1:]]
    np.testing.assert_array_equal(H2[2], H[2][: sum(len(s) - 1 for s in data.calibration[:5])])
    # a sample of sentences, consecutive (a range filter) or not (a set filter), reads exactly their rows
    for ids in (range(2, 6), [0, 3, 7]):
        X, keys = lake.layer_matrix(lake_model_name(str(folder)), "ud_english_ewt", "train", 1, sentences=ids)
        assert sorted(set(keys.column("sentence_id").to_pylist())) == list(ids)
        assert len(X) == sum(len(data.calibration[i]) for i in ids)
    # layer 0 is the embedding of each word's last subword (an independent reference)
    model, tok = models.load(str(folder))
    E = model.get_input_embeddings().weight.detach().numpy()
    ref = []
    for words in data.calibration:
        seq, last = evaluate.word_token_index(tok, words)
        ref += [E[seq[i]] for i in last[1:]]
    np.testing.assert_allclose(H[0], np.array(ref), atol=1e-6)


def test_a_rerun_replaces_exactly_its_scope_full_model_row_included(tmp_path, mirrored):
    from raydund.lake import Lake

    folder = tiny_lm.save("llama", tmp_path / "tiny-llama", layers=3)

    def run(criteria, blocks):
        cfg = _cfg(folder, criteria=criteria, blocks=blocks, metrics=("ppl",), register=False, states="model")
        return run_study(cfg, mirrored, pool_factory=lambda data: LocalPool(Evaluator(cfg.model, data)))

    run(("last", "shortgpt"), (1, 2))
    run(("last",), (1,))
    rows = Lake(mirrored).catalog.load_table("raydund.prune_results").scan().to_arrow().to_pylist()
    keys = sorted((r["criterion"], r["n"]) for r in rows)
    # the full model once (re-measured by the second run), last n=1 once (replaced), the rest as the first run left it
    assert keys == [("last", 1), ("last", 2), ("none", 0), ("shortgpt", 1), ("shortgpt", 2)]
