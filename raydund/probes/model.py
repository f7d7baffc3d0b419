"""Linear probes, many at once: a bank of probes over the same rows trained as one computation.

A probe is ``softmax(X_S W + b)`` (classification) or ``X_S w + b`` (regression) on a
subset ``S`` of the neurons. A :class:`ProbeBank` holds ``P`` probes given by a 0/1 mask
``M [P x N]`` (which neurons each probe sees). Layer probes, the oracle, the prefixes
0..l, the top-k probes of a minimal-set search or the reduced sets of a clustering
sweep are all just masks. A :class:`~raydund.probes.plan.Plan` cuts the neurons into blocks read by the same
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
from raydund.probes.plan import Plan
from raydund.probes.settings import ProbeSettings
from raydund.tasks import TASKS, primary_metric, regression_metrics

#: Re-exported: ``Plan`` (:mod:`raydund.probes.plan`), ``primary_metric`` and ``TASKS`` (:mod:`raydund.tasks`).
__all__ = ["BLOCK_FLOP", "PRECISIONS", "TASKS", "Plan", "ProbeBank", "Shard", "default_device", "init_probe", "metrics",
           "primary_metric", "resolve_precision"]

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # and "auto" (see resolve_precision)
BLOCK_FLOP = 1e7  # a block's fixed work per training step, as product flops (~60 us at ~170 GFLOP/s, 2 CPU cores)


@dataclasses.dataclass
class ProbeBank(ProbeSettings):
    """``P`` linear probes over the same rows (scikit-learn style).

    The hyperparameters (``task``, ``l1``, ``l2``, ``lr``, ``batch_size``, ``epochs``,
    ``seed``, ``standardize``, ``precision``; keyword-only) and their defaults are
    :class:`~raydund.probes.settings.ProbeSettings`' fields, documented there.
    ``bfloat16`` precision multiplies bfloat16 copies of the batch, the weights and the
    score gradients, accumulating in float32; the weights, Adam, the softmax and the
    penalty stay float32, and scoring (:meth:`predict`) is float32. ``auto`` resolves
    through :func:`resolve_precision`.

    Parameters
    ----------
    masks : numpy.ndarray
        ``[P x N]`` booleans: the neurons each probe reads.
    device : str, optional
        ``cuda`` when available unless given.

    Attributes (after :meth:`fit`)
    ----------
    coef_ : numpy.ndarray
        ``[P x N x C]`` weights (zero outside each probe's mask).
    intercept_ : numpy.ndarray
        ``[P x C]``.
    n_classes_ : int
    precision_ : str
        The products' type the bank trained with (``auto`` resolved).
    """

    masks: np.ndarray
    device: str | None = None

    def _device(self) -> torch.device:
        return torch.device(self.device or default_device())

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int | None = None, shard: Shard | None = None
            ) -> ProbeBank:
        """Train every probe on rows ``X [T x N]`` and targets ``y [T]`` (class ids or values).

        With ``shard``, ``X`` holds only ``shard.columns`` of the bank's neurons and the
        processes holding the others train their parts in step (see :class:`Shard`);
        ``coef_`` is then ``[P x len(shard.columns) x C]``.
        """
        if self.task not in TASKS:
            raise UserError(f"unknown probe task {self.task!r}; use one of {TASKS}")
        dev = self._device()
        self.precision_ = resolve_precision(self.precision, dev)
        low = PRECISIONS[self.precision_]  # the products' type
        masks = np.asarray(self.masks, dtype=bool)
        local = masks if shard is None else masks[:, shard.columns]
        if masks.ndim != 2 or local.shape[1] != X.shape[1]:
            raise ValueError(f"masks must be [probes x {X.shape[1]}] (on this shard), got {local.shape}")
        if len(X) != len(y):
            raise ValueError(f"{len(X)} rows but {len(y)} targets")
        regression = self.task == "regression"
        C = 1 if regression else int(n_classes if n_classes is not None else int(np.max(y)) + 1)
        plan = Plan.of(local, block_cost=BLOCK_FLOP / (4 * self.batch_size * C))  # 4 B C flop per pair
        init = [init_probe(mask, C, self.seed) for mask in masks]  # the same start, sharded or not
        rows = [W if shard is None else W[shard.columns] for W, _ in init]
        weights = [torch.stack([rows[p][cols] for p in plan.readers(blk)], dim=1).to(dev)  # [n x p x C]
                   for blk, cols in enumerate(plan.columns)]
        keep = [None if m is None else torch.from_numpy(m[:, :, None].astype(np.float32)).to(dev)
                for m in plan.masks]  # merged blocks: the weights their probes do not read stay 0
        for W, k in zip(weights, keep):
            if k is not None:
                W.mul_(k)
        bias = torch.stack([b for _, b in init]).to(dev)  # [P x C]
        reduce = shard.reduce if shard is not None else None
        score_bias = bias if shard is None or shard.first else torch.zeros_like(bias)  # added once in a sum
        grads = [torch.empty_like(W) for W in weights]
        for W, g in zip(weights, grads):
            W.grad = g  # written in place every step
        bias.grad = torch.empty_like(bias)
        pair_probe, readers = plan.reader_index(dev), [W.shape[1] for W in weights]  # each (block, reader)'s probe
        low_weights = [torch.empty_like(W, dtype=low) for W in weights] if low != torch.float32 else weights
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
                    xb = plan.columns_of(Xt.index_select(0, idx)).to(dev)
                    if mu is not None:
                        xb = (xb - mu_b) / sd_b
                    yb = yt[idx].to(dev)
                    if low != torch.float32:
                        xb = xb.to(low)
                        if weights:  # (a shard may hold no neuron any probe reads)
                            torch._foreach_copy_(low_weights, weights)
                    out = plan.scores(xb, low_weights, score_bias, reduce)  # [B x P x C], float32
                    if regression:  # d/d out of mean (out - y)^2
                        grad = (out - yb[:, None, None]) * (2.0 / B)
                    else:  # d/d logits of mean cross-entropy
                        grad = torch.softmax(out, dim=2)
                        grad[torch.arange(B, device=dev), :, yb] -= 1.0
                        grad /= B
                    norms = plan.norms(weights, pair_probe, reduce).clamp_min(1e-12)  # d ||W_p||_2 = W_p / ||W_p||_2
                    flat = grad.view(B, -1).to(low)
                    for W, g, sl, runs, k in zip(weights, grads, plan.slices, plan.runs, keep):
                        n, p, _ = W.shape  # the data term, written straight into the gradient buffer
                        gb = (flat[:, runs[0][0] * C : runs[0][1] * C] if len(runs) == 1
                              else torch.cat([flat[:, a * C : b * C] for a, b in runs], dim=1))
                        if low == torch.float32:
                            torch.mm(xb[:, sl].T, gb, out=g.view(n, p * C))
                        else:
                            g.view(n, p * C).copy_(xb[:, sl].T @ gb)
                        if k is not None:
                            g.mul_(k)
                    # the penalty on every block at once: l1 sign(W) + l2 W / ||W_p||
                    if weights:  # (a shard may hold no neuron any probe reads)
                        torch._foreach_add_(grads, torch._foreach_sign(weights), alpha=self.l1)
                        scales = (self.l2 / norms).index_select(0, pair_probe).split(readers)
                        torch._foreach_addcmul_(grads, weights, [s.view(1, -1, 1) for s in scales])
                    torch.sum(grad, 0, out=bias.grad)
                    opt.step()
        P, N = local.shape
        self.coef_ = np.zeros((P, N, C), dtype=np.float32)
        for W, cols, blk in zip(weights, plan.columns, range(len(weights))):
            where, values = np.ix_(plan.readers(blk), cols), W.cpu().numpy().transpose(1, 0, 2)
            if len(np.unique(cols)) == len(cols):
                self.coef_[where] = values
            else:  # merged one-probe blocks may repeat a neuron: one copy holds its weight, the others 0
                np.add.at(self.coef_, where, values)
        self.intercept_ = bias.cpu().numpy()
        if mu is not None:  # w (x - mu) / sd + b  ==  (w / sd) x + (b - sum(w mu / sd))
            scaled = self.coef_ / sd[None, :, None].astype(np.float32)
            shift = torch.from_numpy(np.einsum("pnc,n->pc", scaled, mu).astype(np.float32))
            if reduce is not None:
                reduce(shift)
            self.intercept_ = (self.intercept_ - shift.numpy()).astype(np.float32)
            self.coef_ = scaled
        self.n_classes_ = C
        return self

    def _score_chunks(self, X: np.ndarray, chunk: int = 1024, shard: Shard | None = None):
        """``[rows x P x C]`` scores of consecutive chunks of ``X``.

        The blocks are the masks' own, unmerged: at a chunk's rows a block's fixed work is
        small against its products. Chunks are small: gathering a chunk's columns into
        block order is strided, and slow once the chunk leaves the cache.
        """
        dev = self._device()
        masks = np.asarray(self.masks, dtype=bool)
        plan = Plan.of(masks if shard is None else masks[:, shard.columns])
        coef = torch.from_numpy(self.coef_)
        weights = [coef[plan.readers(blk)][:, cols].transpose(0, 1).contiguous().to(dev)
                   for blk, cols in enumerate(plan.columns)]
        bias = torch.from_numpy(self.intercept_).to(dev)
        if shard is not None and not shard.first:
            bias = torch.zeros_like(bias)
        with torch.inference_mode():
            for start in range(0, len(X), chunk):
                xb = torch.from_numpy(np.ascontiguousarray(X[start : start + chunk], dtype=np.float32))
                yield plan.scores(plan.columns_of(xb).to(dev), weights, bias, shard and shard.reduce)

    def decision_function(self, X: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """``[P x T x C]`` scores (logits, or the regression value in ``[..., 0]``)."""
        return np.concatenate([s.transpose(0, 1).cpu().numpy() for s in self._score_chunks(X, chunk)], axis=1)

    def predict(self, X: np.ndarray, shard: Shard | None = None) -> np.ndarray:
        """``[P x T]`` predicted class ids (or values for regression); ``shard`` as in :meth:`fit`."""
        parts = [(s[..., 0] if self.task == "regression" else s.argmax(dim=2)).T.cpu().numpy()
                 for s in self._score_chunks(X, shard=shard)]
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(self.masks), 0))

    def score(self, X: np.ndarray, y: np.ndarray, classes: list | None = None) -> list[dict]:
        """Metrics of every probe (see :func:`metrics`)."""
        return [metrics(y, pred, self.task, classes) for pred in self.predict(X)]


@dataclasses.dataclass
class Shard:
    """This process's part of a bank whose neurons are spread over several processes.

    Every probe's scores are a sum over its neurons, so each process multiplies the
    neurons it holds and ``reduce`` sums the partial scores (and the squared weight norms
    of the L2 penalty) over the processes; the gradients, the softmax and Adam then need
    nothing from the others. All processes see the same rows, targets and batch order, so
    the bank trains exactly as it would in one process (up to summation order).

    Attributes
    ----------
    columns : numpy.ndarray
        The bank's neurons this process holds, in the column order of its ``X``.
    reduce : callable
        Sums a tensor over the processes, in place (``torch.distributed.all_reduce``).
    first : bool
        The one process that adds the bias.
    """

    columns: np.ndarray
    reduce: object
    first: bool


def default_device() -> torch.device:
    """Where banks train unless told: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device | str | None = None) -> str:
    """The products' type for ``precision`` on ``device`` (:func:`default_device`): ``auto`` is
    ``bfloat16`` where it pays.

    On a CPU with AVX-512-BF16 or AMX (torch's own checks) bfloat16 products run 3-4x the
    float32 rate and the step is compute-bound, so ``bfloat16``; elsewhere they are
    emulated and slower, so ``float32``. On CUDA a probe step is bound by kernel launches,
    not arithmetic (measured on an H200: 2.2 ms a step at batch 128 and 3.6 ms at 1,024,
    with bfloat16 10-17% slower for its casts; BENCHMARKS.md "GPU checks"), so ``float32``.
    """
    if precision == "auto":
        if torch.device(device or default_device()).type == "cuda":
            return "float32"
        native = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported")]
        return "bfloat16" if any(check() for check in native) else "float32"
    if precision not in PRECISIONS:
        raise UserError(f"unknown probe precision {precision!r}; use one of {('auto', *PRECISIONS)}")
    return precision


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
    """Accuracy, macro-F1 and per-class accuracy (recall); for regression :func:`raydund.tasks.regression_metrics`.

    Targets of ``-1`` (labels never seen in training) count as errors. A regression probe
    whose predictions are constant has an undefined (NaN) Pearson and Spearman.
    """
    if task == "regression":
        return regression_metrics(y, pred)
    y, pred = np.asarray(y), np.asarray(pred)
    K = int(max(y.max(initial=-1), pred.max(initial=-1))) + 1
    seen = y >= 0
    true_n = np.bincount(y[seen], minlength=K)  # one confusion-matrix pass instead of one per class
    pred_n = np.bincount(pred[pred >= 0], minlength=K)
    hits = np.bincount(y[seen & (pred == y)], minlength=K)
    present = true_n > 0  # macro-F1 over the classes of y, as f1_score(labels=unique(y)) gives
    f1 = 2 * hits[present] / (true_n[present] + pred_n[present])
    out = {"accuracy": float(np.mean(pred == y)) if len(y) else 0.0,
           "macro_f1": float(f1.mean()) if present.any() else 0.0}
    if classes is not None:
        out["per_class"] = {str(c): float(hits[i] / true_n[i]) for i, c in enumerate(classes)
                            if i < K and true_n[i]}
    return out
