"""Task metrics of a fine-tuned model: accuracy and F1, or Pearson, Spearman and MSE."""

from __future__ import annotations

import numpy as np


def task_metrics(task: str, predictions: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> dict:
    """Accuracy and F1 (classification) or Pearson, Spearman and MSE (regression).

    F1 is the positive class's for two classes (GLUE's MRPC/QQP metric), macro otherwise;
    ``macro_f1`` is always reported.
    """
    if task == "regression":
        from scipy.stats import pearsonr, spearmanr

        p, t = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
        constant = np.ptp(p) == 0 or np.ptp(t) == 0
        return {"pearson": 0.0 if constant else float(pearsonr(p, t)[0]),
                "spearman": 0.0 if constant else float(spearmanr(p, t)[0]),
                "mse": float(np.mean((p - t) ** 2))}
    from sklearn.metrics import f1_score

    p, t = np.asarray(predictions), np.asarray(targets)
    labels = list(range(num_classes or int(max(p.max(), t.max()) + 1)))
    binary = len(labels) == 2
    return {"accuracy": float(np.mean(p == t)),
            "f1": float(f1_score(t, p, labels=labels, average="binary" if binary else "macro",
                                 pos_label=1, zero_division=0)),
            "macro_f1": float(f1_score(t, p, labels=labels, average="macro", zero_division=0))}


def primary_metric(task: str) -> str:
    """The metric a task is judged by."""
    return "pearson" if task == "regression" else "accuracy"
