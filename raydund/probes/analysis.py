"""Task-specific redundancy (paper section 6): layer-wise probes, control tasks, neuron
ranking and minimal neuron sets, and the clustering sweep scored on a task.

Functions of a :class:`Splits` (labels of train/dev/test, and where their activations
are): no lake, no MLflow (``raydund.probes.job`` wires those). Every group of probes
over the same rows is one :class:`~raydund.probes.model.ProbeBank`, trained and scored
through the splits: in this process for :class:`Splits`, by the layer-block actors of
:class:`raydund.probes.shards.ShardedSplits` otherwise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from raydund.probes.data import TaskData, control_labels, encode, layer_masks
from raydund.probes.model import ProbeBank, metrics, primary_metric
from raydund.probes.rank import lca_ordering, probeless_scores, top_k_grid
from raydund.probes.settings import ProbeSettings


@dataclasses.dataclass
class Splits:
    """Encoded train/dev/test of one task, with their activations in this process.

    The analyses reach the activations only through :meth:`fit`, :meth:`predict`,
    :meth:`weights` and :meth:`class_mean_scores`, so a subclass can keep them elsewhere.
    """

    train: TaskData
    dev: TaskData
    test: TaskData
    classes: list | None  # None for regression

    def targets(self, part: TaskData) -> np.ndarray:
        return part.labels.astype(np.float64) if self.classes is None else encode(part.labels, self.classes)

    @property
    def n_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    @property
    def n_neurons(self) -> int:
        return int(sum(self.train.widths))

    def fit(self, settings: ProbeSettings, masks: np.ndarray, y: np.ndarray | None = None,
            n_classes: int | None = None) -> ProbeBank:
        """A bank of probes (``masks``) trained on train (its targets unless ``y`` is given)."""
        if y is None:
            y, n_classes = self.targets(self.train), self.n_classes
        return settings.bank(masks).fit(self.train.X, y, n_classes)

    def predict(self, bank: ProbeBank, part: str) -> np.ndarray:
        """``[P x T]`` predictions of every probe on ``part`` (``train``, ``dev`` or ``test``)."""
        return bank.predict(getattr(self, part).X)

    def weights(self, bank: ProbeBank, probe: int) -> np.ndarray:
        """``[N x C]`` weights of one probe."""
        return bank.coef_[probe]

    def intercept(self, bank: ProbeBank, probe: int) -> np.ndarray:
        """``[C]`` intercept of one probe."""
        return bank.intercept_[probe]

    def linear_scores(self, part: str, neurons: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """``X[:, neurons] @ coef + intercept`` on ``part``: a selected probe's scores."""
        return getattr(self, part).X[:, neurons] @ coef + intercept

    def class_mean_scores(self) -> np.ndarray:
        """Per neuron, the probeless ranker's score (:func:`~raydund.probes.rank.probeless_scores`) on train."""
        return probeless_scores(self.train.X, self.targets(self.train))


def make_splits(train: TaskData, dev: TaskData, test: TaskData, task: str) -> Splits:
    """Fix the class list from train (sorted) for classification."""
    classes = None if task == "regression" else sorted(set(train.labels.tolist()))
    return Splits(train, dev, test, classes)


def evaluate(bank: ProbeBank, splits: Splits, names: list[str]) -> list[dict]:
    """One row per probe: its name and metrics on dev and test."""
    dev, test = ([metrics(y, pred, bank.task, splits.classes) for pred in splits.predict(bank, name)]
                 for name, y in (("dev", splits.targets(splits.dev)), ("test", splits.targets(splits.test))))
    return [{"probe": name, "dev": d, "test": t} for name, d, t in zip(names, dev, test)]


def layerwise(splits: Splits, settings: ProbeSettings, redundant_share: float = 0.99) -> dict:
    """Every layer alone, the oracle (all layers) and the prefixes 0..l, in one bank.

    A layer is redundant for the task when its probe reaches ``redundant_share`` of the
    oracle's dev score (Table 7 / Figure 4).
    """
    masks, names = layer_masks(splits.train.widths)
    bank = splits.fit(settings, masks)
    rows = evaluate(bank, splits, names)
    key = primary_metric(settings.task)
    oracle = next(r for r in rows if r["probe"] == "oracle")
    for r in rows:
        r["share_of_oracle"] = r["dev"][key] / oracle["dev"][key] if oracle["dev"][key] else float("nan")
        r["redundant"] = bool(r["probe"].startswith("layer ") and r["share_of_oracle"] >= redundant_share)
    oracle_index = names.index("oracle")
    return {"rows": rows, "oracle_weights": splits.weights(bank, oracle_index), "bank": bank}


def control_task(splits: Splits, settings: ProbeSettings, seed: int = 0) -> list[dict]:
    """Control task (Hewitt & Liang): the layer probes trained on word-type -> random label.

    Returns per layer the control accuracy on dev and test.
    """
    train_ctrl, vocab = control_labels(splits.train.words, splits.train.labels, seed)
    dev_ctrl, vocab = control_labels(splits.dev.words, splits.dev.labels, seed + 1, vocab)
    test_ctrl, vocab = control_labels(splits.test.words, splits.test.labels, seed + 2, vocab)
    classes = sorted(set(train_ctrl.tolist()) | set(dev_ctrl.tolist()) | set(test_ctrl.tolist()))
    masks, names = layer_masks(splits.train.widths)
    layer_rows = [i for i, n in enumerate(names) if n.startswith("layer ")]
    bank = splits.fit(dataclasses.replace(settings, task="classification"), masks[layer_rows],
                      encode(train_ctrl, classes), len(classes))
    dev_pred, test_pred = splits.predict(bank, "dev"), splits.predict(bank, "test")
    return [{"probe": names[i],
             "control_dev": metrics(encode(dev_ctrl, classes), dev_pred[j], "classification")["accuracy"],
             "control_test": metrics(encode(test_ctrl, classes), test_pred[j], "classification")["accuracy"]}
            for j, i in enumerate(layer_rows)]


def selectivity_rows(task_rows: list[dict], control: list[dict]) -> list[dict]:
    """Selectivity = task accuracy - control accuracy, per layer and split."""
    task = {r["probe"]: r for r in task_rows}
    return [{**c, "selectivity_dev": task[c["probe"]]["dev"]["accuracy"] - c["control_dev"],
             "selectivity_test": task[c["probe"]]["test"]["accuracy"] - c["control_test"]} for c in control]


def rankings(splits: Splits, oracle_weights: np.ndarray, search_stride: int = 100) -> dict:
    """LCA ordering from the oracle's weights, and the probeless ordering."""
    ordering, cutoffs = lca_ordering(oracle_weights.T, search_stride)  # [classes x neurons]
    out = {"lca": ordering, "lca_cutoffs": cutoffs}
    if splits.classes is not None:
        out["probeless"] = np.argsort(-splits.class_mean_scores(), kind="stable")
    return out


def masks_for(ordering: np.ndarray, ks: list[int], n: int) -> np.ndarray:
    """One mask per k: the top-k neurons of an ordering."""
    masks = np.zeros((len(ks), n), dtype=bool)
    for i, k in enumerate(ks):
        masks[i, ordering[:k]] = True
    return masks


def minimal_set(splits: Splits, settings: ProbeSettings, ordering: np.ndarray, oracle_dev: float,
                keep_share: float = 0.97, percents: list[float] | None = None, fit=None) -> dict:
    """Smallest top-k (k a percentage of all neurons) whose fresh probe keeps ``keep_share`` of the oracle.

    Every k is its own probe; they are independent, so all are trained at once (one bank,
    or banks spread over Ray tasks by ``fit``).
    """
    N = splits.n_neurons
    ks = top_k_grid(N, percents, limit=len(ordering))
    bank = (fit or fit_bank)(settings, masks_for(ordering, ks, N), splits)
    rows = evaluate(bank, splits, [f"top {k}" for k in ks])
    key = primary_metric(settings.task)
    chosen = None
    for k, r in zip(ks, rows):
        r["k"] = k
        r["share_of_oracle"] = r["dev"][key] / oracle_dev if oracle_dev else float("nan")
        if chosen is None and r["share_of_oracle"] >= keep_share:
            chosen = k
    return {"rows": rows, "k": chosen, "neurons": ordering[:chosen] if chosen else ordering}


def sets_masks(sets: list[np.ndarray], n: int) -> np.ndarray:
    """One mask per set of neuron positions."""
    masks = np.zeros((len(sets), n), dtype=bool)
    for i, neurons in enumerate(sets):
        masks[i, neurons] = True
    return masks


def reduced_sets(splits: Splits, settings: ProbeSettings, kept: dict[float, np.ndarray], fit=None) -> list[dict]:
    """A probe on each clustering threshold's kept neurons (Table 6 / Figure 2 per task)."""
    thresholds = sorted(kept)
    bank = (fit or fit_bank)(settings, sets_masks([kept[t] for t in thresholds], splits.n_neurons), splits)
    rows = evaluate(bank, splits, [f"threshold {t:.2f}" for t in thresholds])
    for t, r in zip(thresholds, rows):
        r["threshold"], r["neurons"] = t, int(len(kept[t]))
    return rows


def fit_bank(settings: ProbeSettings, masks: np.ndarray, splits: Splits) -> ProbeBank:
    """Train one bank of probes (``masks``) on the train split."""
    return splits.fit(settings, masks)
