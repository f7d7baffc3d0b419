"""What a task is and how it is scored: the one table of task kinds and the shared metric rules.

A corpus declares its task kind in its catalog entry (:mod:`raydund.corpora.spec`); probes
(:mod:`raydund.probes.model`) and fine-tuning (:mod:`raydund.finetune`) score it with the
functions here, so a probe and a fine-tuned model judged on the same task report the same
numbers for the same predictions.
"""

from __future__ import annotations

import numpy as np

#: Task kinds: a label column is classified (one class per word or sentence) or regressed (a number).
TASKS = ("classification", "regression")


def primary_metric(task: str) -> str:
    """The score a task is judged by: ``accuracy``, or ``pearson`` for regression."""
    return "pearson" if task == "regression" else "accuracy"


def regression_metrics(targets, predictions) -> dict:
    """Pearson and Spearman correlation and mean squared error of regression predictions.

    A correlation with a constant (every prediction the same, or every target) is
    undefined: it is reported as NaN, never as a number, so a collapsed model cannot
    pass for an uncorrelated one; a comparison with NaN (``share >= 0.97``) is false. The
    same holds for fewer than two rows. The MSE is always defined (NaN only for no rows).

    Parameters
    ----------
    targets, predictions : array_like
        The gold values and the predicted ones, same length.

    Returns
    -------
    dict
        ``pearson``, ``spearman``, ``mse`` as floats.
    """
    t, p = np.asarray(targets), np.asarray(predictions)  # their own dtype: float32 rows stay float32
    mse = float(np.mean((t - p) ** 2)) if len(t) else float("nan")
    if len(t) < 2 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "mse": mse}
    from scipy.stats import pearsonr, spearmanr

    return {"pearson": float(pearsonr(t, p)[0]), "spearman": float(spearmanr(t, p)[0]), "mse": mse}
