"""LayerSelector + CCFS on planted structure (pure: no Ray, no lake)."""


import numpy as np
import pytest

from raydund.errors import UserError
from raydund.probes import analysis
from raydund.probes.data import TaskData
from raydund.transfer.ccfs import CCFS, Correlations, fs_ks

WIDTH, LAYERS = 8, 4
SETTINGS = analysis.ProbeSettings(epochs=15, lr=1e-2, batch_size=64)


def planted_transfer(T=3000, seed=0, lossy_cc=False):
    """The label is a function of neurons 8, 9, 10 (layer 1); layer 2 repeats layer 1 with noise;
    neurons 0 and 1 (layer 0) are near copies of each other; the rest is noise.

    ``lossy_cc``: the label is ``2 x8 + 1.5 x9 + x10 > 0`` and neuron 11 is a noisy copy of
    neuron 10 (r ~ 0.75), so a clustering at 0.4 merges them, keeps 11 and loses some score."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((T, LAYERS * WIDTH))
    X[:, 1] = X[:, 0] + 0.05 * rng.standard_normal(T)
    if lossy_cc:
        X[:, 11] = X[:, 10] + 0.9 * rng.standard_normal(T)
    X[:, 16:24] = X[:, 8:16] + 0.5 * rng.standard_normal((T, WIDTH))
    signal = 2 * X[:, 8] + 1.5 * X[:, 9] + X[:, 10] if lossy_cc else X[:, 8] + X[:, 9] - X[:, 10]
    labels = np.where(signal > 0, "pos", "neg")
    data = TaskData(X.astype(np.float32), labels, np.array(["w"] * T), (WIDTH,) * LAYERS)
    cut = lambda s: TaskData(data.X[s], data.labels[s], data.words[s], data.widths)  # noqa: E731
    splits = analysis.make_splits(cut(slice(0, 1800)), cut(slice(1800, 2400)), cut(slice(2400, T)),
                                  "classification")
    r = np.corrcoef(splits.train.X.astype(np.float64), rowvar=False)
    return splits, Correlations(r, np.repeat(np.arange(LAYERS), WIDTH), np.zeros(LAYERS * WIDTH, bool))


def test_ls_ccfs_recovers_the_planted_layer_and_neurons():
    splits, corr = planted_transfer()
    model = CCFS(SETTINGS, ls_thresholds=(0.01, 0.5), ccfs_thresholds=(0.01,)).fit(splits, corr)
    strict, loose = model.reduced_sets_
    assert strict.layer == 1  # layers 0..1 hold the label, layer 0 alone does not
    assert strict.cc_threshold >= 0.1 and strict.cc_neurons == 2 * WIDTH - 1  # 0 and 1 merged, nothing else
    assert set(strict.neurons.tolist()) == {8, 9, 10}
    s = strict.scores
    assert s["ccfs"]["dev"]["accuracy"] >= 0.99 * s["ls"]["dev"]["accuracy"]
    assert s["ls"]["dev"]["accuracy"] >= 0.99 * s["oracle"]["dev"]["accuracy"]
    assert s["ccfs"]["test"]["accuracy"] > 0.95 and s["ccfs"]["neurons"] == 3
    assert loose.layer == 0  # a 50% loss allowed: layer 0 (chance, ~0.5 of the oracle) is enough
    # the final probe's weights are those of the chosen neurons, and they predict like the pipeline's probe
    scores = splits.test.X[:, strict.neurons] @ strict.coef + strict.intercept
    acc = np.mean(np.array(["neg", "pos"])[scores.argmax(1)] == splits.test.labels)
    assert acc == pytest.approx(s["ccfs"]["test"]["accuracy"])


def test_thresholds_outside_zero_one_are_refused():
    with pytest.raises(UserError, match="ls thresholds must be in"):
        CCFS(SETTINGS, ls_thresholds=(1.5,))


def test_fs_grid_is_a_percentage_of_all_the_models_neurons():
    # the paper's counts: 0.1%, 0.2%, 0.3%, 1%, 3% of BERT's 9,984 neurons (4% rounds to 399; it prints 400)
    paper = fs_ks(500, 9984)
    assert {10, 20, 30, 100, 300, 399} <= set(paper) and paper[-1] == 500 and max(paper[:-1]) < 500
    # MiniLM (2,688 neurons), CC kept 375: the k of all neurons below 375, then 375 itself
    assert fs_ks(375, 2688) == [3, 5, 8, 11, 13, 27, 54, 81, 108, 134, 161, 188, 215, 242, 269, 375]
    kept = fs_ks(375, 2688, grid="kept-neurons")  # raydund's earlier grid: percentages of the 375
    assert kept[:4] == [1, 2, 4, 8] and 338 in kept and kept[-1] == 375
    assert fs_ks(1, 2688) == [1] and fs_ks(0, 2688) == []


def test_the_two_fs_grids_stop_at_different_k():
    splits, corr = planted_transfer()
    # 10% and 25% of all 32 neurons: 3 and 8; of the 15 CC keeps: 2 and 4
    ks = {grid: fs_ks(15, 32, (10, 25), grid) for grid in ("all-neurons", "kept-neurons")}
    assert ks == {"all-neurons": [3, 8, 15], "kept-neurons": [2, 4, 15]}
    chosen = {grid: CCFS(SETTINGS, percents=(10, 25), fs_grid=grid).fit(splits, corr).reduced_sets_[0]
              for grid in ks}
    assert chosen["all-neurons"].cc_neurons == chosen["kept-neurons"].cc_neurons == 15
    assert set(chosen["all-neurons"].neurons.tolist()) == {8, 9, 10}  # the planted three, on the grid
    assert len(chosen["kept-neurons"].neurons) == 4  # 3 is not on that grid, 2 lose the score
    assert set(chosen["kept-neurons"].neurons.tolist()) >= {8, 9, 10}


def test_fs_target_is_the_cc_score_by_default_and_the_ls_score_as_an_option():
    splits, corr = planted_transfer(lossy_cc=True)
    chosen = {target: CCFS(SETTINGS, ccfs_thresholds=(0.09,), cluster_thresholds=(0.0, 0.4),
                           fs_target=target).fit(splits, corr).reduced_sets_[0]
              for target in ("cc", "ls")}
    assert CCFS(SETTINGS).fs_target == "cc" and CCFS(SETTINGS).fs_grid == "all-neurons"
    for target, sel in chosen.items():
        s = {k: v["dev"]["accuracy"] for k, v in sel.scores.items()}
        assert sel.cc_threshold == 0.4 and s["cc"] < 0.95 * s["ls"]  # CC merged 10 into 11 and lost score
        assert s["ccfs"] >= 0.91 * s[target]
    # within 9% of CC's (lower) score two neurons do; within 9% of LS's it takes the third
    assert sorted(chosen["cc"].neurons.tolist()) == [8, 9]
    assert sorted(chosen["ls"].neurons.tolist()) == [8, 9, 11]
    s = chosen["cc"].scores
    assert s["ccfs"]["dev"]["accuracy"] < 0.91 * s["ls"]["dev"]["accuracy"]


def test_unknown_fs_grid_or_target_is_refused():
    with pytest.raises(UserError, match="fs grid must be one of all-neurons, kept-neurons"):
        CCFS(SETTINGS, fs_grid="kept")
    with pytest.raises(UserError, match="fs target must be one of cc, ls"):
        CCFS(SETTINGS, fs_target="oracle")
