"""Task metrics of a fine-tuned model: accuracy and F1, or Pearson, Spearman and MSE.

Regression scores and the primary metric are :mod:`raydund.tasks`', the same as the probes'
(a correlation with constant predictions is NaN). Classification differs on purpose: GLUE's
F1 (the positive class's for two classes) over every label, where the probes report
macro-F1 over the classes present and count unseen labels as errors.
"""

from __future__ import annotations

import numpy as np

from raydund.tasks import primary_metric, regression_metrics

__all__ = ["primary_metric", "task_metrics"]


def task_metrics(task: str, predictions: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> dict:
    """Accuracy and F1 (classification) or Pearson, Spearman and MSE (regression).

    F1 is the positive class's for two classes (GLUE's MRPC/QQP metric), macro otherwise;
    ``macro_f1`` is always reported. Regression: :func:`raydund.tasks.regression_metrics`
    in float64 (constant predictions: NaN correlations).
    """
    if task == "regression":
        return regression_metrics(np.asarray(targets, dtype=np.float64), np.asarray(predictions, dtype=np.float64))
    from sklearn.metrics import f1_score

    p, t = np.asarray(predictions), np.asarray(targets)
    labels = list(range(num_classes or int(max(p.max(), t.max()) + 1)))
    binary = len(labels) == 2
    return {"accuracy": float(np.mean(p == t)),
            "f1": float(f1_score(t, p, labels=labels, average="binary" if binary else "macro",
                                 pos_label=1, zero_division=0)),
            "macro_f1": float(f1_score(t, p, labels=labels, average="macro", zero_division=0))}
