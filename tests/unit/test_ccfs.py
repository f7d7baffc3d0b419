"""LayerSelector + CCFS on planted structure (pure: no Ray, no lake)."""


import numpy as np
import pytest

from raydund.errors import UserError
from raydund.probes import analysis
from raydund.probes.data import TaskData
from raydund.transfer.ccfs import CCFS, Correlations

WIDTH, LAYERS = 8, 4
SETTINGS = analysis.ProbeSettings(epochs=15, lr=1e-2, batch_size=64)


def planted_transfer(T=3000, seed=0):
    """The label is a function of neurons 8, 9, 10 (layer 1); layer 2 repeats layer 1 with noise;
    neurons 0 and 1 (layer 0) are near copies of each other; the rest is noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((T, LAYERS * WIDTH))
    X[:, 1] = X[:, 0] + 0.05 * rng.standard_normal(T)
    X[:, 16:24] = X[:, 8:16] + 0.5 * rng.standard_normal((T, WIDTH))
    labels = np.where(X[:, 8] + X[:, 9] - X[:, 10] > 0, "pos", "neg")
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
