"""One rule for regression scores (probes and fine-tuning): a correlation with a constant is NaN."""

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from raydund.probes.model import metrics
from raydund.tasks import TASKS, primary_metric, regression_metrics


def test_correlations_match_scipy_and_keep_the_input_dtype():
    rng = np.random.default_rng(0)
    t = rng.normal(size=50).astype(np.float32)
    p = (t + rng.normal(scale=0.5, size=50)).astype(np.float32)
    got = regression_metrics(t, p)
    assert got["pearson"] == float(pearsonr(t, p)[0]) and got["spearman"] == float(spearmanr(t, p)[0])
    assert got["mse"] == float(np.mean((t - p) ** 2))


@pytest.mark.parametrize("t,p", [([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]), ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]),
                                 ([1.0], [2.0])])
def test_constant_or_single_rows_give_nan_correlations_and_a_real_mse(t, p):
    got = regression_metrics(t, p)
    assert math.isnan(got["pearson"]) and math.isnan(got["spearman"])
    assert got["mse"] == pytest.approx(np.mean((np.asarray(t) - np.asarray(p)) ** 2))


def test_probe_and_finetune_metrics_follow_the_same_rule():
    from raydund.finetune.metrics import task_metrics

    y, pred = np.array([1.0, 2.0, 3.0], np.float32), np.zeros(3, np.float32)
    probe, tuned = metrics(y, pred, "regression"), task_metrics("regression", pred, y)
    assert probe.keys() == tuned.keys() == {"pearson", "spearman", "mse"}
    assert all(math.isnan(m[k]) for m in (probe, tuned) for k in ("pearson", "spearman"))  # was 0.0 for fine-tuning
    assert probe["mse"] == pytest.approx(14 / 3) and tuned["mse"] == pytest.approx(14 / 3)  # float32 / float64 rows


def test_one_task_table():
    from raydund.corpora import spec
    from raydund.finetune import config

    assert TASKS == ("classification", "regression") and spec.TASKS is TASKS and config.TASKS is TASKS
    assert primary_metric("regression") == "pearson" and primary_metric("classification") == "accuracy"
