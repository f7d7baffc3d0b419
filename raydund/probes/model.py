"""Linear probes, many at once: a bank of probes over the same rows trained as one computation.

A probe is ``softmax(X_S W + b)`` (classification) or ``X_S w + b`` (regression) on a
subset ``S`` of the neurons. A :class:`ProbeBank` holds ``P`` probes given by a 0/1 mask
``M [P x N]`` (which neurons each probe sees). Layer probes, the oracle, the prefixes
0..l, the top-k probes of a minimal-set search or the reduced sets of a clustering
sweep are all just masks. A :class:`Plan` cuts the neurons into blocks read by the same
probes (the layers, for a layer-wise bank), so every minibatch is read once and a step
is one dense product per block forward and one backward: a bank costs the sum of its
probes' sizes. The gradients are written out, not built by autograd. Probes share
nothing but the rows: each has its own parameters, its own penalty, and Adam is
elementwise, so training them together gives what training them one by one (same seed,
same batches) would.

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
    standardize : bool
        Train on z-scored neurons (train mean and std, float64; constant neurons left as
        they are). Off by default (the paper and NeuroX train on raw activations); it
        helps where activations barely vary, such as the [CLS] of lower layers. The fitted
        ``coef_``/``intercept_`` are folded back to raw activations either way.
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
    standardize: bool = False
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
        plan = Plan.of(masks, dev)
        init = [init_probe(mask, C, self.seed) for mask in masks]
        weights = [torch.stack([init[p][0][cols] for p in probes.tolist()], dim=1).to(dev)  # [n x p x C]
                   for cols, probes in zip(plan.columns, plan.probes)]
        bias = torch.stack([b for _, b in init]).to(dev)  # [P x C]
        opt = torch.optim.Adam([*weights, bias], lr=self.lr, fused=True)  # one kernel over all blocks
        gen = torch.Generator().manual_seed(self.seed)  # the batch order: the same for every probe
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        yt = torch.as_tensor(y, dtype=torch.float32 if regression else torch.long)
        T = len(Xt)
        mu, sd = _moments(X) if self.standardize else (None, None)
        if mu is not None:  # z-score each batch (no copy of X), in block order
            mu_b, sd_b = (plan.columns_of(torch.from_numpy(v[None, :])).to(dev) for v in (mu, sd))
        with torch.no_grad():
            for _ in range(self.epochs):
                order = torch.randperm(T, generator=gen)
                for start in range(0, T, self.batch_size):
                    idx = order[start : start + self.batch_size]
                    B = len(idx)
                    xb = plan.columns_of(Xt[idx]).to(dev)
                    if mu is not None:
                        xb = (xb - mu_b) / sd_b
                    yb = yt[idx].to(dev)
                    out = plan.scores(xb, weights, bias)  # [B x P x C]
                    if regression:  # d/d out of mean (out - y)^2
                        grad = (out - yb[:, None, None]) * (2.0 / B)
                    else:  # d/d logits of mean cross-entropy
                        grad = torch.softmax(out, dim=2)
                        grad[torch.arange(B, device=dev), :, yb] -= 1.0
                        grad /= B
                    scale = self.l2 / plan.norms(weights).clamp_min(1e-12)  # d ||W_p||_2 = W_p / ||W_p||_2
                    for W, sl, probes in zip(weights, plan.slices, plan.probes):
                        n, p, _ = W.shape
                        g = (xb[:, sl].T @ grad[:, probes].reshape(B, p * C)).view(n, p, C)
                        g.add_(torch.sign(W), alpha=self.l1).addcmul_(W, scale[probes][None, :, None])
                        W.grad = g
                    bias.grad = grad.sum(0)
                    opt.step()
        P, N = masks.shape
        self.coef_ = np.zeros((P, N, C), dtype=np.float32)
        for W, cols, probes in zip(weights, plan.columns, plan.probes):
            self.coef_[np.ix_(probes.cpu().numpy(), cols)] = W.cpu().numpy().transpose(1, 0, 2)
        self.intercept_ = bias.cpu().numpy()
        if mu is not None:  # w (x - mu) / sd + b  ==  (w / sd) x + (b - sum(w mu / sd))
            scaled = self.coef_ / sd[None, :, None].astype(np.float32)
            self.intercept_ = (self.intercept_ - np.einsum("pnc,n->pc", scaled, mu)).astype(np.float32)
            self.coef_ = scaled
        self.n_classes_ = C
        return self

    def decision_function(self, X: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """``[P x T x C]`` scores (logits, or the regression value in ``[..., 0]``).

        Each probe multiplies only its own neurons (the same blocks as in training).
        """
        dev = self._device()
        plan = Plan.of(np.asarray(self.masks, dtype=bool), dev)
        coef = torch.from_numpy(self.coef_)
        weights = [coef[probes.cpu()][:, cols].transpose(0, 1).contiguous().to(dev)
                   for cols, probes in zip(plan.columns, plan.probes)]
        bias = torch.from_numpy(self.intercept_).to(dev)
        out = []
        with torch.inference_mode():
            for start in range(0, len(X), chunk):
                xb = torch.from_numpy(np.ascontiguousarray(X[start : start + chunk], dtype=np.float32))
                out.append(plan.scores(plan.columns_of(xb).to(dev), weights, bias).transpose(0, 1).cpu().numpy())
        return np.concatenate(out, axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``[P x T]`` predicted class ids (or values for regression)."""
        scores = self.decision_function(X)
        return scores[..., 0] if self.task == "regression" else scores.argmax(axis=2)

    def score(self, X: np.ndarray, y: np.ndarray, classes: list | None = None) -> list[dict]:
        """Metrics of every probe (see :func:`metrics`)."""
        return [metrics(y, pred, self.task, classes) for pred in self.predict(X)]


@dataclasses.dataclass
class Plan:
    """How a bank's masks become a few dense products.

    The neurons are cut into blocks, each read by a set of probes; a block's weights are
    one ``[n x p x C]`` tensor, so a step costs one product per block and the sum of the
    probes' sizes in all. Blocks are the groups of neurons read by the same probes (the
    layers of a layer/prefix/oracle bank, the steps between two k of a top-k bank), or
    one block per probe where that gives fewer. ``colmap`` orders a batch's columns so
    that every block is a slice (``None`` when they already are).
    """

    columns: list[np.ndarray]  # the neurons of each block
    probes: list[torch.Tensor]  # the probes reading each block (on the bank's device)
    slices: list[slice]  # each block's columns in a batch after ``colmap``
    colmap: torch.Tensor | None
    n_probes: int

    @classmethod
    def of(cls, masks: np.ndarray, device: torch.device | str = "cpu") -> "Plan":
        P, N = masks.shape
        patterns, group = np.unique(np.packbits(masks.T, axis=1), axis=0, return_inverse=True)
        group = group.reshape(-1)
        columns, probes = [], []
        for g, pattern in enumerate(patterns):
            readers = np.flatnonzero(np.unpackbits(pattern)[:P])
            if len(readers):
                columns.append(np.flatnonzero(group == g))
                probes.append(readers)
        if len(columns) > P:  # scattered masks: one block per probe makes fewer products
            columns = [np.flatnonzero(m) for m in masks if m.any()]
            probes = [np.array([p]) for p in range(P) if masks[p].any()]
        order = np.argsort([c[0] for c in columns], kind="stable")
        columns = [columns[i] for i in order]
        probes = [torch.as_tensor(probes[i], dtype=torch.long, device=device) for i in order]
        colmap = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
        bounds = np.cumsum([0] + [len(c) for c in columns])
        slices = [slice(int(a), int(b)) for a, b in zip(bounds, bounds[1:])]
        identity = len(colmap) == N and np.array_equal(colmap, np.arange(N))
        return cls(columns, probes, slices, None if identity else torch.as_tensor(colmap), P)

    def columns_of(self, rows: torch.Tensor) -> torch.Tensor:
        """A batch's columns in block order (the batch itself when no reordering is needed)."""
        return rows if self.colmap is None else rows[:, self.colmap]

    def scores(self, xb: torch.Tensor, weights: list[torch.Tensor], bias: torch.Tensor) -> torch.Tensor:
        """``[B x P x C]`` scores of every probe on a batch in block order."""
        out = bias.expand(len(xb), *bias.shape).clone()
        for W, sl, probes in zip(weights, self.slices, self.probes):
            n, p, C = W.shape
            out.index_add_(1, probes, (xb[:, sl] @ W.view(n, p * C)).view(len(xb), p, C))
        return out

    def norms(self, weights: list[torch.Tensor]) -> torch.Tensor:
        """``[P]`` the Frobenius norm of each probe's weights over all its blocks."""
        sq = torch.zeros(self.n_probes, dtype=weights[0].dtype, device=weights[0].device)
        for W, probes in zip(weights, self.probes):
            sq.index_add_(0, probes, W.pow(2).sum(dim=(0, 2)))
        return sq.sqrt()


def _moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations in float64 (1 where a column is constant), as float32."""
    mu = np.zeros(X.shape[1])
    sq = np.zeros(X.shape[1])
    for start in range(0, len(X), 65536):  # chunks: no float64 copy of X
        part = np.asarray(X[start : start + 65536], dtype=np.float64)
        mu += part.sum(0)
    mu /= max(len(X), 1)
    for start in range(0, len(X), 65536):
        sq += ((np.asarray(X[start : start + 65536], dtype=np.float64) - mu) ** 2).sum(0)
    sd = np.sqrt(sq / max(len(X), 1))
    sd[sd <= 1e-12 * max(float(np.median(sd)), 1e-30)] = 1.0
    return mu.astype(np.float32), sd.astype(np.float32)


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
