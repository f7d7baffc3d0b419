"""Probes: planted answers recovered, NeuroX's ranking reproduced, regression end to end."""

import numpy as np
import pytest
import torch

from raydund.probes import analysis
from raydund.probes.data import TaskData, control_labels, layer_masks
from raydund.probes.model import ProbeBank, init_probe
from raydund.probes.rank import lca_ordering, probeless_ordering, top_neurons

WIDTH, LAYERS = 8, 4


def planted(T=3000, seed=0, layer=2, regression=False):
    """Labels are a linear function of layer ``layer`` only; other layers are noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((T, LAYERS * WIDTH)).astype(np.float32)
    w = rng.standard_normal((WIDTH, 3))
    score = X[:, layer * WIDTH : (layer + 1) * WIDTH] @ w
    labels = score[:, 0] if regression else np.array(["A", "B", "C"])[score.argmax(1)]
    words = np.array([f"w{i}" for i in rng.integers(0, 200, T)])
    return TaskData(X, labels, words, (WIDTH,) * LAYERS)


def split(data, parts=(0.6, 0.2, 0.2)):
    n = len(data.X)
    a, b = int(parts[0] * n), int((parts[0] + parts[1]) * n)
    take = lambda s: TaskData(data.X[s], data.labels[s], data.words[s], data.widths)  # noqa: E731
    return take(slice(0, a)), take(slice(a, b)), take(slice(b, n))


SETTINGS = analysis.ProbeSettings(epochs=15, lr=1e-2, batch_size=64)


def test_planted_layer_is_found_and_others_are_not_redundant():
    splits = analysis.make_splits(*split(planted()), "classification")
    out = analysis.layerwise(splits, SETTINGS)
    rows = {r["probe"]: r for r in out["rows"]}
    assert rows["oracle"]["dev"]["accuracy"] > 0.9
    assert rows["layer 2"]["dev"]["accuracy"] > 0.9 and rows["layer 2"]["share_of_oracle"] > 0.97
    for layer in (0, 1, 3):
        assert rows[f"layer {layer}"]["dev"]["accuracy"] < 0.6
        assert not rows[f"layer {layer}"]["redundant"]
    # prefixes reach the oracle once they include layer 2
    assert rows["layers 0-1"]["dev"]["accuracy"] < 0.6 < 0.9 < rows["layers 0-2"]["dev"]["accuracy"]
    assert set(rows["layer 2"]["dev"]["per_class"]) == {"A", "B", "C"}


def test_bank_probes_are_independent():
    """A probe trained in a bank equals the same probe trained alone (same seed, same batches)."""
    data = planted(T=600)
    y = analysis.encode(data.labels, ["A", "B", "C"])
    masks, _ = layer_masks(data.widths)
    bank = ProbeBank(masks[[0, 4, 2]], epochs=2, seed=3, precision="float32").fit(data.X, y, 3)
    for j, i in enumerate((0, 4, 2)):
        alone = ProbeBank(masks[i : i + 1], epochs=2, seed=3, precision="float32").fit(data.X, y, 3)
        np.testing.assert_allclose(bank.coef_[j], alone.coef_[0], atol=1e-5)
        np.testing.assert_allclose(bank.intercept_[j], alone.intercept_[0], atol=1e-5)
    assert np.all(bank.coef_[0][~masks[0]] == 0) and np.all(bank.coef_[2][~masks[2]] == 0)


def autograd_probe(X, y, mask, n_classes, seed, epochs, lr=1e-3, batch_size=128, l1=1e-5, l2=1e-5,
                   regression=False):
    """One probe, NeuroX's loss built by autograd (the reference for the written-out gradients)."""
    W0, b0 = init_probe(mask, n_classes, seed)
    W, b = W0[mask].clone().requires_grad_(), b0.clone().requires_grad_()
    opt = torch.optim.Adam([W, b], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    Xt, yt = torch.from_numpy(X[:, mask]), torch.as_tensor(y)
    for _ in range(epochs):
        order = torch.randperm(len(Xt), generator=gen)
        for start in range(0, len(Xt), batch_size):
            idx = order[start : start + batch_size]
            out = Xt[idx] @ W + b
            fit = (((out[:, 0] - yt[idx]) ** 2).mean() if regression
                   else torch.nn.functional.cross_entropy(out, yt[idx]))
            loss = fit + l1 * W.abs().sum() + l2 * W.pow(2).sum().sqrt()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return W.detach().numpy(), b.detach().numpy()


@pytest.mark.parametrize("regression", [False, True])
def test_bank_matches_autograd_reference(regression):
    """Layer, prefix and scattered top-k masks in one bank equal probes trained alone by autograd."""
    data = planted(T=700, regression=regression)
    y = data.labels.astype(np.float32) if regression else analysis.encode(data.labels, ["A", "B", "C"])
    C = 1 if regression else 3
    layers, _ = layer_masks(data.widths)
    scattered = np.zeros((2, data.X.shape[1]), dtype=bool)
    scattered[0, [3, 17, 30]] = True
    scattered[1, [3, 17, 30, 9, 1]] = True
    masks = np.concatenate([layers, scattered])
    bank = ProbeBank(masks, task="regression" if regression else "classification", epochs=3, seed=5,
                     lr=1e-2, batch_size=64, precision="float32").fit(data.X, y, C)
    for p, mask in enumerate(masks):
        W, b = autograd_probe(data.X, y, mask, C, seed=5, epochs=3, lr=1e-2, batch_size=64, regression=regression)
        np.testing.assert_allclose(bank.coef_[p][mask], W, atol=2e-5)
        np.testing.assert_allclose(bank.intercept_[p], b, atol=2e-5)
        assert np.all(bank.coef_[p][~mask] == 0)
    scores = bank.decision_function(data.X[:50])
    dense = np.einsum("tn,pnc->ptc", data.X[:50], bank.coef_) + bank.intercept_[:, None, :]
    np.testing.assert_allclose(scores, dense, atol=1e-4)


def test_minimal_set_contains_the_three_neurons_of_the_label():
    rng = np.random.default_rng(1)
    T = 4000
    X = rng.standard_normal((T, LAYERS * WIDTH)).astype(np.float32)
    signal = X[:, 3] + X[:, 12] - X[:, 29]
    labels = np.where(signal > 0, "pos", "neg")
    data = TaskData(X, labels, np.array(["w"] * T), (WIDTH,) * LAYERS)
    splits = analysis.make_splits(*split(data), "classification")
    layer = analysis.layerwise(splits, SETTINGS)
    ranks = analysis.rankings(splits, layer["oracle_weights"])
    assert set(ranks["lca"][:3]) == {3, 12, 29}
    oracle = next(r for r in layer["rows"] if r["probe"] == "oracle")["dev"]["accuracy"]
    found = analysis.minimal_set(splits, SETTINGS, ranks["lca"], oracle, percents=[3, 7, 10, 20, 50])
    assert found["k"] == 3 and set(found["neurons"]) == {3, 12, 29}


def test_lca_ordering_matches_neurox():
    neurox = pytest.importorskip("neurox.interpretation.linear_probe")
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 40)) * rng.uniform(0, 3, 40)
    probe = torch.nn.Linear(40, 5)
    probe.weight.data = torch.from_numpy(W.astype(np.float32))
    classes = {f"c{i}": i for i in range(5)}
    ref_order, ref_cut = neurox.get_neuron_ordering(probe, classes, search_stride=20)
    ours, cut = lca_ordering(W.astype(np.float32), search_stride=20)
    assert cut == ref_cut
    bounds = [0] + cut
    for a, b in zip(bounds, bounds[1:]):  # the same neurons at every step (NeuroX orders a step as a set)
        assert set(ours[a:b].tolist()) == set(int(n) for n in ref_order[a:b])
    for share in (0.1, 0.5, 0.9):
        assert set(top_neurons(W.astype(np.float32), share)) == set(neurox.get_top_neurons(probe, share, classes)[0])


def test_probeless_matches_brute_force():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 12))
    y = rng.integers(0, 4, 300)
    X[y == 2, 5] += 3
    means = np.stack([X[y == c].mean(0) for c in range(4)])
    brute = sum(np.abs(means[a] - means[b]) for a in range(4) for b in range(a + 1, 4))
    order = probeless_ordering(X, y)
    assert order[0] == 5
    np.testing.assert_array_equal(order, np.argsort(-brute, kind="stable"))


def test_regression_end_to_end():
    splits = analysis.make_splits(*split(planted(regression=True)), "regression")
    settings = analysis.ProbeSettings(task="regression", epochs=15, lr=1e-2, batch_size=64)
    rows = {r["probe"]: r for r in analysis.layerwise(splits, settings)["rows"]}
    assert rows["oracle"]["test"]["pearson"] > 0.95 and rows["layer 2"]["test"]["spearman"] > 0.95
    assert abs(rows["layer 0"]["test"]["pearson"]) < 0.2


def test_control_task_and_selectivity():
    words = np.array(["a", "b", "a", "c", "b", "a"])
    labels = np.array(["X", "Y", "X", "Y", "X", "Y"])
    ctrl, vocab = control_labels(words, labels, seed=0)
    assert len({(w, c) for w, c in zip(words, ctrl)}) == len(set(words))  # one label per word type
    again, _ = control_labels(words, labels, seed=0)
    assert (ctrl == again).all()
    splits = analysis.make_splits(*split(planted(T=1500)), "classification")
    layer = analysis.layerwise(splits, SETTINGS)
    control = analysis.control_task(splits, SETTINGS)
    rows = {r["probe"]: r for r in analysis.selectivity_rows(layer["rows"], control)}
    assert rows["layer 2"]["selectivity_dev"] > rows["layer 0"]["selectivity_dev"]


def test_standardized_probes_learn_tiny_activations_and_fold_back_to_raw_weights():
    """Activations scaled by 1e-3 (as [CLS] of low layers): raw probes stall, z-scored ones learn;
    the folded coef_/intercept_ score raw rows exactly as the z-scored probe does."""
    data = planted(T=1500, layer=1)
    small = TaskData(data.X * 1e-3, data.labels, data.words, data.widths)
    splits = analysis.make_splits(*split(small), "classification")
    raw = analysis.layerwise(splits, analysis.ProbeSettings(epochs=20, lr=1e-2))
    std = analysis.layerwise(splits, analysis.ProbeSettings(epochs=20, lr=1e-2, standardize=True))
    acc = lambda out: {r["probe"]: r["dev"]["accuracy"] for r in out["rows"]}  # noqa: E731
    assert acc(std)["layer 1"] > 0.9 > 0.6 > acc(raw)["layer 1"]
    bank = std["bank"]
    X = splits.dev.X
    mu, sd = splits.train.X.mean(0), splits.train.X.std(0)
    oracle = bank.masks.sum(1).argmax()
    z = (X - mu) / sd
    W_z = bank.coef_[oracle] * sd[:, None]  # back to the z-scored weights
    b_z = bank.intercept_[oracle] + mu @ bank.coef_[oracle]
    np.testing.assert_allclose(bank.decision_function(X)[oracle], z @ W_z + b_z, rtol=1e-3, atol=1e-3)


def test_metrics_match_scikit_learn():
    """Accuracy, macro-F1 and per-class recall from one confusion pass equal scikit-learn's."""
    from sklearn.metrics import f1_score, recall_score

    from raydund.probes.model import metrics

    rng = np.random.default_rng(3)
    y = rng.integers(-1, 6, 500)  # -1: a label never seen in training (always an error)
    y[y == 4] = 5  # class 4 is never a target, but is predicted
    pred = np.where(rng.random(500) < 0.6, np.maximum(y, 0), rng.integers(0, 7, 500))
    classes = list("abcdefg")
    out = metrics(y, pred, "classification", classes)
    labels = np.unique(y[y >= 0])
    assert out["accuracy"] == pytest.approx(np.mean(pred == y))
    assert out["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=labels, zero_division=0))
    recall = recall_score(y, pred, average=None, labels=labels, zero_division=0)
    assert out["per_class"] == pytest.approx({classes[i]: r for i, r in zip(labels, recall)})


def test_bfloat16_products_train_the_same_probes():
    """bfloat16 products (float32 accumulation, weights and Adam): the float32 bank's answers, to rounding."""
    data = planted(T=2000, seed=4)
    masks, _ = layer_masks(data.widths)
    y = analysis.encode(data.labels, ["A", "B", "C"])
    full = ProbeBank(masks, epochs=5, lr=1e-2, precision="float32").fit(data.X, y, 3)
    low = ProbeBank(masks, epochs=5, lr=1e-2, precision="bfloat16").fit(data.X, y, 3)
    assert low.coef_.dtype == np.float32
    np.testing.assert_allclose(low.coef_, full.coef_, atol=0.02)
    agree = (low.predict(data.X) == full.predict(data.X)).mean(axis=1)
    assert agree.min() > 0.98
    with pytest.raises(Exception, match="unknown probe precision"):
        ProbeBank(masks, precision="float8").fit(data.X, y, 3)


def test_bfloat16_regression_and_auto_precision():
    """Regression probes with bfloat16 products fit as well as float32; ``auto`` resolves to a real type."""
    from raydund.probes.model import resolve_precision

    data = planted(T=2000, seed=5, regression=True)
    masks, _ = layer_masks(data.widths)
    y = data.labels.astype(np.float32)
    full = ProbeBank(masks, task="regression", epochs=5, lr=1e-2, precision="float32").fit(data.X, y)
    low = ProbeBank(masks, task="regression", epochs=5, lr=1e-2, precision="bfloat16").fit(data.X, y)
    for a, b in zip(full.score(data.X, y), low.score(data.X, y)):
        assert b["pearson"] == pytest.approx(a["pearson"], abs=0.01)
    assert max(r["pearson"] for r in low.score(data.X, y)) > 0.95  # the planted layer
    auto = ProbeBank(masks[:1], task="regression", epochs=1, precision="auto").fit(data.X, y)
    assert auto.precision_ == resolve_precision("auto") in ("float32", "bfloat16")
    from raydund.probes.model import Shard  # a layer-block worker may hold no neuron any probe reads

    empty = Shard(columns=np.zeros(0, dtype=np.int64), reduce=lambda t: None, first=False)
    idle = ProbeBank(masks[:1], task="regression", epochs=1, precision="bfloat16").fit(data.X[:, :0], y, shard=empty)
    assert idle.coef_.shape == (1, 0, 1)
    assert resolve_precision("float32") == "float32"


@pytest.mark.parametrize("block_cost", [0.0, 5.0, 60.0, 1e9])
def test_merged_blocks_cover_each_mask_exactly(block_cost):
    """However blocks are merged, each probe reads exactly its own neurons (the rest masked)."""
    from raydund.probes.model import Plan

    rng = np.random.default_rng(7)
    order = rng.permutation(40)
    nested = np.zeros((6, 40), dtype=bool)
    for p, k in enumerate((1, 2, 4, 9, 20, 33)):
        nested[p, order[:k]] = True
    layers, _ = layer_masks((8, 8, 8, 8, 8))
    for masks in (nested, layers, rng.random((5, 40)) < 0.3):
        plan = Plan.of(masks, block_cost=block_cost)
        covered = np.zeros_like(masks, dtype=int)
        for blk, cols in enumerate(plan.columns):
            keep = plan.masks[blk] if plan.masks[blk] is not None else np.ones((len(cols), len(plan.readers(blk))))
            for j, p in enumerate(plan.readers(blk)):
                np.add.at(covered[p], cols, keep[:, j].astype(int))
        np.testing.assert_array_equal(covered, masks.astype(int))  # every pair once, none outside a mask
        assert set(np.concatenate(plan.columns)) == set(np.flatnonzero(masks.any(0)))
    assert len(Plan.of(nested, block_cost=0.0).columns) == 6
    assert len(Plan.of(nested, block_cost=1e9).columns) == 1  # fixed cost dominates: one masked block


@pytest.mark.parametrize("block_flop", [0.0, 2e4, 1e12])
@pytest.mark.parametrize("kind", ["nested", "scattered"])
def test_top_k_and_scattered_banks_match_autograd_however_merged(kind, block_flop, monkeypatch):
    """Banks trained unmerged, partly merged or as one masked block equal probes trained alone.

    Nested top-k sets merge steps between two k; scattered sets (one block per probe)
    merge into blocks that hold a neuron once per probe reading it.
    """
    import raydund.probes.model as model

    monkeypatch.setattr(model, "BLOCK_FLOP", block_flop)
    data = planted(T=500)
    y = analysis.encode(data.labels, ["A", "B", "C"])
    rng = np.random.default_rng(3)
    if kind == "nested":
        masks = analysis.masks_for(rng.permutation(data.X.shape[1]), [1, 2, 3, 5, 8, 13, 21], data.X.shape[1])
    else:
        masks = rng.random((6, data.X.shape[1])) < 0.3
        assert len(model.Plan.of(masks).columns) == len(masks)  # the one-block-per-probe plan
    bank = ProbeBank(masks, epochs=2, seed=2, lr=1e-2, batch_size=64, precision="float32").fit(data.X, y, 3)
    for p, mask in enumerate(masks):
        W, b = autograd_probe(data.X, y, mask, 3, seed=2, epochs=2, lr=1e-2, batch_size=64)
        np.testing.assert_allclose(bank.coef_[p][mask], W, atol=2e-5)
        np.testing.assert_allclose(bank.intercept_[p], b, atol=2e-5)
        assert np.all(bank.coef_[p][~mask] == 0)
