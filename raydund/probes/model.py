"""Linear probes, many at once: a bank of probes over the same rows trained as one computation.

A probe is ``softmax(X_S W + b)`` (classification) or ``X_S w + b`` (regression) on a
subset ``S`` of the neurons. A :class:`ProbeBank` holds ``P`` probes given by a 0/1 mask
``M [P x N]`` (which neurons each probe sees); every minibatch is read once and every
probe multiplies only its own columns (a slice when they are contiguous, as for layers
and prefixes), so a bank costs the sum of its probes' sizes, in one backward pass. Layer probes, the oracle, the prefixes
0..l, the top-k probes of a minimal-set search or the reduced sets of a clustering
sweep are all just masks. Probes share nothing but the rows: each has its own
parameters, its own penalty, and Adam is elementwise, so training them together gives
what training them one by one (same seed, same batches) would.

The loss follows NeuroX's "ElasticNet" (the paper's settings): mean cross-entropy (or
MSE) + ``l1 * sum|W|`` + ``l2 * ||W||_2`` (the norm, not its square; weights only).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import torch

from raydund.errors import UserError

TASKS = ("classification", "regression")


@dataclasses.dataclass
class ProbeBank:
    """``P`` linear probes over the same rows (scikit-learn style).

    Parameters
    ----------
    masks : numpy.ndarray
        ``[P x N]`` booleans: the neurons each probe reads.
    task : {"classification", "regression"}
    l1, l2 : float
        ElasticNet penalties (NeuroX style, see module docstring).
    lr, batch_size, epochs : float, int, int
        Adam learning rate, rows per step, passes over the data (shuffled each epoch).
    seed : int
        Seeds initialisation and shuffling.
    device : str, optional
        ``cuda`` when available unless given.

    Attributes (after :meth:`fit`)
    ----------
    coef_ : numpy.ndarray
        ``[P x N x C]`` weights (zero outside each probe's mask).
    intercept_ : numpy.ndarray
        ``[P x C]``.
    n_classes_ : int
    """

    masks: np.ndarray
    task: str = "classification"
    l1: float = 1e-5
    l2: float = 1e-5
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 10
    seed: int = 0
    device: str | None = None

    def _device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> "ProbeBank":
        """Train every probe on rows ``X [T x N]`` and targets ``y [T]`` (class ids or values)."""
        if self.task not in TASKS:
            raise UserError(f"unknown probe task {self.task!r}; use one of {TASKS}")
        masks = np.asarray(self.masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != X.shape[1]:
            raise ValueError(f"masks must be [probes x {X.shape[1]}], got {masks.shape}")
        if len(X) != len(y):
            raise ValueError(f"{len(X)} rows but {len(y)} targets")
        regression = self.task == "regression"
        C = 1 if regression else int(n_classes if n_classes is not None else int(np.max(y)) + 1)
        dev = self._device()
        columns = [_columns(mask) for mask in masks]
        params = []
        for mask, cols in zip(masks, columns):
            W0, b0 = init_probe(mask, C, self.seed)
            params.append((W0[_as_index(cols, len(mask))].to(dev).requires_grad_(), b0.to(dev).requires_grad_()))
        opt = torch.optim.Adam([t for pair in params for t in pair], lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)  # the batch order: the same for every probe
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        yt = torch.as_tensor(y, dtype=torch.float32 if regression else torch.long)
        T = len(Xt)
        for _ in range(self.epochs):
            order = torch.randperm(T, generator=gen)
            for start in range(0, T, self.batch_size):
                idx = order[start : start + self.batch_size]
                xb, yb = Xt[idx].to(dev), yt[idx].to(dev)
                total = 0.0
                for cols, (W, b) in zip(columns, params):  # each probe reads only its own neurons
                    out = xb[:, cols] @ W + b
                    if regression:
                        loss = ((out[:, 0] - yb) ** 2).mean()
                    else:
                        loss = torch.nn.functional.cross_entropy(out, yb)
                    total = total + loss + self.l1 * W.abs().sum() + self.l2 * W.pow(2).sum().sqrt()
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
        P, N = masks.shape
        self.coef_ = np.zeros((P, N, C), dtype=np.float32)
        for p, (cols, (W, _)) in enumerate(zip(columns, params)):
            self.coef_[p, _as_index(cols, N)] = W.detach().cpu().numpy()
        self.intercept_ = np.stack([b.detach().cpu().numpy() for _, b in params])
        self.n_classes_ = C
        return self

    def decision_function(self, X: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """``[P x T x C]`` scores (logits, or the regression value in ``[..., 0]``)."""
        dev = self._device()
        W = torch.from_numpy(self.coef_).to(dev)
        b = torch.from_numpy(self.intercept_).to(dev)
        out = []
        with torch.inference_mode():
            for start in range(0, len(X), chunk):
                xb = torch.from_numpy(np.ascontiguousarray(X[start : start + chunk], dtype=np.float32)).to(dev)
                out.append((torch.einsum("bn,pnc->pbc", xb, W) + b[:, None, :]).cpu().numpy())
        return np.concatenate(out, axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``[P x T]`` predicted class ids (or values for regression)."""
        scores = self.decision_function(X)
        return scores[..., 0] if self.task == "regression" else scores.argmax(axis=2)

    def score(self, X: np.ndarray, y: np.ndarray, classes: list | None = None) -> list[dict]:
        """Metrics of every probe (see :func:`metrics`)."""
        return [metrics(y, pred, self.task, classes) for pred in self.predict(X)]


def _columns(mask: np.ndarray):
    """The neurons a probe reads: a slice when they are contiguous (no gather), else indices."""
    idx = np.flatnonzero(mask)
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return torch.as_tensor(idx, dtype=torch.long)


def _as_index(cols, n: int):
    return np.arange(n)[cols] if isinstance(cols, slice) else cols.numpy()


def init_probe(mask: np.ndarray, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.Linear``-style uniform init of one probe, seeded by ``seed`` and its mask.

    A probe starts from the same weights whatever bank it is trained in.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(np.packbits(mask).tobytes()))
    bound = 1.0 / np.sqrt(max(int(mask.sum()), 1))
    W = (torch.rand((len(mask), n_classes), generator=gen) * 2 - 1) * bound
    b = (torch.rand((n_classes,), generator=gen) * 2 - 1) * bound
    return W, b


def metrics(y: np.ndarray, pred: np.ndarray, task: str, classes: list | None = None) -> dict:
    """Accuracy, macro-F1 and per-class accuracy (recall); Pearson and Spearman for regression.

    Targets of ``-1`` (labels never seen in training) count as errors.
    """
    if task == "regression":
        from scipy.stats import pearsonr, spearmanr  # noqa: PLC0415

        return {"pearson": float(pearsonr(y, pred)[0]), "spearman": float(spearmanr(y, pred)[0]),
                "mse": float(np.mean((np.asarray(y) - pred) ** 2))}
    from sklearn.metrics import f1_score  # noqa: PLC0415

    y = np.asarray(y)
    out = {"accuracy": float(np.mean(pred == y)),
           "macro_f1": float(f1_score(y, pred, average="macro", labels=np.unique(y[y >= 0]), zero_division=0))}
    if classes is not None:
        out["per_class"] = {str(c): float(np.mean(pred[y == i] == i)) for i, c in enumerate(classes) if np.any(y == i)}
    return out


def primary_metric(task: str) -> str:
    """The score the analyses compare: accuracy, or Pearson for regression."""
    return "pearson" if task == "regression" else "accuracy"
