"""Width pruning of a Llama-family MLP: remove neurons, optionally folding them into a kept one.

An MLP neuron ``j`` of block ``l`` is coordinate ``j`` of ``h = act(gate_proj(x)) * up_proj(x)``,
the input of ``down_proj`` (SmolLM2: 1,536 per block). Its contribution to the residual
stream is ``h_j W_down[:, j]``.

Statistics (:func:`collect`): on calibration text, per block, the float64 co-moments of
``h`` (:class:`raydund.general.moments.Moments`, centred, shifted by the first batch's
mean), the mean and the mean ``|h_j|``. The prefix (BOS) token and padding are left out.

Plans (:func:`plan`): per block, the same number ``k = round(fraction * width)`` of neurons
is removed (per-block thresholds; see "Sizes" below), by one of :data:`METHODS`:

``fold``
    Pearson r (:func:`raydund.general.similarity.pearson`; constant neurons guarded),
    average linkage on ``1 - |r|`` (fastcluster, :mod:`raydund.general.clustering`), the
    tree cut after its first ``k`` merges (the block's threshold: exactly ``k`` fewer
    clusters), one representative per cluster (the most central member). Each removed
    neuron ``j`` of a cluster with representative ``p`` is regressed on ``p`` by least
    squares over the calibration tokens, ``h_j ~ a h_p + b`` with ``a = C_jp / C_pp`` and
    ``b = mean_j - a mean_p``, then folded: ``W_down[:, p] += a W_down[:, j]`` and
    ``b W_down[:, j]`` added to a down-projection bias. Constant neurons go first (slope 0,
    their mean into the bias).
``cluster``
    The same neurons as ``fold``, removed without folding.
``magnitude``
    Wanda/FLAP-style score ``||W_down[:, j]||_2 * mean |h_j|``; the ``k`` lowest go.
``fold-cost``
    Folding, with the neurons chosen by what folding leaves: neuron ``j`` folded into
    partner ``p`` changes the block's output by ``(h_j - a h_p - b) W_down[:, j]``, of mean
    square ``||W_down[:, j]||^2 var_j (1 - r_jp^2)`` over the calibration tokens (magnitude's
    energy ``||W_down[:, j]||^2 E[h_j^2]`` less the mean, which the intercept keeps, and
    less the part ``p`` explains). Greedy: the cheapest neuron goes first, folded into its
    most correlated kept neuron, which is then kept for good; a neuron whose partner
    went meanwhile is re-priced against the kept ones. Residual errors of neurons folded
    into the same partner are taken as uncorrelated.
``random``
    ``k`` neurons per block drawn uniformly (seeded).

Surgery (:func:`prune`): the rows of ``gate_proj``/``up_proj`` and the columns of
``down_proj`` are cut for real; a new model, the original untouched.

Sizes: transformers' ``LlamaMLP`` builds every block with ``config.intermediate_size``
(one int; ``LlamaConfig`` has no per-layer sizes), so a model that reloads with plain
``from_pretrained`` must keep the same width in every block: hence the same ``k`` per
block. A global threshold (different widths per block) would need a custom model class
or loader. Llama's ``down_proj`` has no bias; ``config.mlp_bias = True`` gives it one, and
also ``gate_proj``/``up_proj`` biases, which are set to zero (``2 * width + hidden`` extra
parameters per block).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from raydund.errors import UserError

METHODS = ("fold", "cluster", "fold-cost", "magnitude", "random")


def mlps(model) -> list:
    """The MLP module of every decoder block; a :class:`UserError` unless they are gated Llama-style MLPs."""
    from raydund.prune.surgery import blocks

    out = [getattr(b, "mlp", None) for b in blocks(model)]
    if not all(all(hasattr(m, p) for p in ("gate_proj", "up_proj", "down_proj")) for m in out if m is not None) \
            or any(m is None for m in out):
        raise UserError(f"width pruning supports gated MLPs (gate_proj, up_proj, down_proj: Llama, Qwen2, "
                        f"Mistral), not {type(model).__name__}")
    return out


def removed_per_block(fraction: float, width: int) -> int:
    """Neurons removed from a block of ``width``: ``round(fraction * width)``; a :class:`UserError` if none or all."""
    if not 0.0 < float(fraction) < 1.0:
        raise UserError(f"fraction {fraction}: give a fraction of MLP neurons to remove, strictly between 0 and 1")
    k = int(round(float(fraction) * width))
    if not 1 <= k < width:
        raise UserError(f"fraction {fraction} removes {k} of {width} neurons per block: need 1 .. {width - 1}")
    return k


@dataclasses.dataclass
class BlockStats:
    """Calibration statistics of one block's MLP neurons.

    Attributes
    ----------
    moments : raydund.general.moments.Moments
        Co-moments of ``h`` (one "layer" of the block's width).
    abs_sum : numpy.ndarray
        ``sum_t |h_tj|`` (float64).
    """

    moments: object
    abs_sum: np.ndarray

    @property
    def n(self) -> int:
        return self.moments.n

    @property
    def mean(self) -> np.ndarray:
        return self.moments.mean

    @property
    def abs_mean(self) -> np.ndarray:
        return self.abs_sum / self.n

    def covariance(self) -> np.ndarray:
        """Centred co-moments ``C = sum_t (h_t - mean)(h_t - mean)^T`` (float64)."""
        return self.moments.covariance()

    def add(self, h: np.ndarray) -> None:
        """Add rows ``h [tokens x width]``."""
        from raydund.general.moments import Moments

        if self.moments is None:
            self.moments = Moments.empty((h.shape[1],), h.mean(axis=0, dtype=np.float64))
        self.moments.update(h, with_extras=True)
        self.abs_sum += np.abs(h).sum(axis=0, dtype=np.float64)


@torch.no_grad()
def collect(model, tok, texts: list[str], batch_size: int = 8) -> list[BlockStats]:
    """Per block, :class:`BlockStats` of the MLP neurons over every scored token of ``texts``."""
    from raydund.prune import evaluate

    layers = mlps(model)
    stats = [BlockStats(None, np.zeros(m.down_proj.in_features)) for m in layers]
    skip = len(evaluate.prefix_ids(tok))
    rows: dict = {}

    def hook(index):
        def pre(module, args):
            h = args[0][rows["mask"]]
            stats[index].add(h.double().numpy())
        return pre

    handles = [m.down_proj.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        for _idx, ids, mask in evaluate.batches(evaluate.encode(tok, texts), batch_size):
            keep = mask.bool().clone()
            keep[:, :skip] = False
            rows["mask"] = keep
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if not stats or stats[0].moments is None or stats[0].n < 2:
        raise UserError("need at least two calibration tokens")
    return stats


@dataclasses.dataclass
class BlockPlan:
    """What happens to one block: neurons kept, and removed neurons folded into kept ones.

    Attributes
    ----------
    keep : numpy.ndarray
        Sorted indices of the kept neurons.
    removed, into : numpy.ndarray
        Removed neurons folded (``fold`` only; else empty) and their representative (-1: bias only).
    slope, intercept : numpy.ndarray
        The fold's least-squares coefficients (float64), aligned with ``removed``.
    """

    keep: np.ndarray
    removed: np.ndarray
    into: np.ndarray
    slope: np.ndarray
    intercept: np.ndarray


def _unfolded(width: int, gone: np.ndarray) -> BlockPlan:
    keep = np.setdiff1d(np.arange(width), gone)
    empty = np.zeros(0)
    return BlockPlan(keep, empty.astype(np.int64), empty.astype(np.int64), empty, empty)


def magnitude_scores(stats: BlockStats, down_weight: np.ndarray) -> np.ndarray:
    """``||W_down[:, j]||_2 * mean_t |h_tj|`` per neuron (float64)."""
    return np.linalg.norm(np.asarray(down_weight, dtype=np.float64), axis=0) * stats.abs_mean


def first_merges(linkage: np.ndarray, merges: int) -> np.ndarray:
    """Cluster labels (0-based) of the leaves after the first ``merges`` merges of a linkage tree.

    The average-linkage distance of merges never decreases, so this is the cut at a
    threshold between the ``merges``-th and the next merge height: exactly ``n - merges`` clusters.
    """
    n = len(linkage) + 1
    parent = np.arange(2 * n - 1)
    for i in range(merges):
        a, b = int(linkage[i, 0]), int(linkage[i, 1])
        parent[a] = parent[b] = n + i
    roots = np.empty(n, dtype=np.int64)
    for leaf in range(n):
        x = leaf
        while parent[x] != x:
            x = parent[x]
        roots[leaf] = x
    return np.unique(roots, return_inverse=True)[1]


def cluster_plan(stats: BlockStats, k: int, fold: bool) -> BlockPlan:
    """Remove ``k`` neurons of a block by correlation clustering (see the module docstring)."""

    from raydund.general.clustering import average_linkage, condensed_distance, pick_representatives
    from raydund.general.similarity import constant_neurons, pearson

    C = stats.covariance()
    width = len(C)
    constant = constant_neurons(C)
    const_idx = np.flatnonzero(constant)
    gone_const = const_idx[:k]
    removed, into, slope = [gone_const], [np.full(len(gone_const), -1)], [np.zeros(len(gone_const))]
    merges = k - len(gone_const)
    if merges:
        live = np.flatnonzero(~constant)
        r = pearson(C, constant)
        link = average_linkage(condensed_distance(r, live))
        labels = first_merges(link, merges)
        rep_mask = pick_representatives(labels, "central", r, index=live)
        reps = {int(labels[i]): int(live[i]) for i in np.flatnonzero(rep_mask)}
        gone = live[~rep_mask]
        p = np.array([reps[int(labels[i])] for i in np.flatnonzero(~rep_mask)], dtype=np.int64)
        removed.append(gone)
        into.append(p)
        slope.append(C[gone, p] / C[p, p])
    removed, into, slope = (np.concatenate(x) for x in (removed, into, slope))
    if not fold:
        return _unfolded(width, removed)
    mean = stats.mean
    intercept = mean[removed] - slope * np.where(into >= 0, mean[np.maximum(into, 0)], 0.0)
    keep = np.setdiff1d(np.arange(width), removed)
    return BlockPlan(keep, removed.astype(np.int64), into.astype(np.int64), slope, intercept)


def fold_cost_plan(stats: BlockStats, down_weight: np.ndarray, k: int) -> BlockPlan:
    """Remove ``k`` neurons of a block by the greedy fold cost (see ``fold-cost`` in the module docstring)."""
    import heapq

    from raydund.general.similarity import constant_neurons, pearson

    C = stats.covariance()
    width = len(C)
    r2 = np.nan_to_num(pearson(C, constant_neurons(C))) ** 2
    np.fill_diagonal(r2, -1.0)
    energy = np.linalg.norm(np.asarray(down_weight, dtype=np.float64), axis=0) ** 2 * np.diag(C) / stats.n
    gone, locked = np.zeros(width, dtype=bool), np.zeros(width, dtype=bool)
    partner = np.argmax(r2, axis=1)
    heap = [(float(energy[j] * (1 - max(r2[j, partner[j]], 0.0))), j) for j in range(width)]
    heapq.heapify(heap)
    removed, into = [], []
    while len(removed) < k:
        if not heap:
            raise UserError(f"fold-cost could remove only {len(removed)} of the {k} neurons asked for in a block "
                            f"of {width} (every other one is a partner)")
        _cost, j = heapq.heappop(heap)
        if locked[j]:
            continue
        p = int(partner[j])
        if gone[p]:  # re-price against the neurons still there
            row = np.where(gone, -1.0, r2[j])
            partner[j] = p = int(np.argmax(row))
            heapq.heappush(heap, (float(energy[j] * (1 - max(row[p], 0.0))), j))
            continue
        gone[j], locked[p] = True, True
        removed.append(j)
        into.append(p)
    removed, into = np.array(removed, dtype=np.int64), np.array(into, dtype=np.int64)
    slope = np.where(np.diag(C)[into] > 0, C[removed, into] / np.where(np.diag(C)[into] > 0, np.diag(C)[into], 1), 0)
    intercept = stats.mean[removed] - slope * stats.mean[into]
    return BlockPlan(np.flatnonzero(~gone), removed, into, slope, intercept)


def plan(model, stats: list[BlockStats], method: str, fraction: float, seed: int = 0) -> list[BlockPlan]:
    """A :class:`BlockPlan` per block removing ``fraction`` of its MLP neurons by ``method``."""
    if method not in METHODS:
        raise UserError(f"unknown width-pruning method {method!r}; known: {', '.join(METHODS)}")
    layers = mlps(model)
    rng = np.random.default_rng(seed)
    out = []
    for m, s in zip(layers, stats):
        width = m.down_proj.in_features
        k = removed_per_block(fraction, width)
        if method in ("fold", "cluster"):
            out.append(cluster_plan(s, k, fold=method == "fold"))
        elif method == "fold-cost":
            out.append(fold_cost_plan(s, m.down_proj.weight.detach().numpy(), k))
        elif method == "magnitude":
            score = magnitude_scores(s, m.down_proj.weight.detach().numpy())
            out.append(_unfolded(width, np.argsort(score, kind="stable")[:k]))
        else:
            out.append(_unfolded(width, rng.choice(width, size=k, replace=False)))
    return out


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


@torch.no_grad()
def prune(model, plans: list[BlockPlan]):
    """A new model with every block's MLP cut (and folded) as ``plans`` say; the original is untouched.

    Raises
    ------
    UserError
        Plans that keep different numbers of neurons in different blocks (see "Sizes").
    """
    widths = {len(p.keep) for p in plans}
    if len(widths) != 1:
        raise UserError(f"width pruning keeps the same width in every block (LlamaConfig has one "
                        f"intermediate_size); the plans keep {sorted(widths)}")
    layers = mlps(model)
    if len(plans) != len(layers):
        raise UserError(f"{len(plans)} plans for {len(layers)} blocks")
    small = copy.deepcopy(model)
    biased = bool(getattr(model.config, "mlp_bias", False)) or any(len(p.removed) for p in plans)
    for mlp, p in zip(mlps(small), plans):
        dtype = mlp.down_proj.weight.dtype
        keep = torch.as_tensor(p.keep, dtype=torch.long)
        Wd = mlp.down_proj.weight.double()
        hidden = Wd.shape[0]
        old_bias = mlp.down_proj.bias
        bias = old_bias.double().clone() if old_bias is not None else torch.zeros(hidden, dtype=torch.float64)
        if len(p.removed):
            cols = Wd[:, torch.as_tensor(p.removed)]
            into = torch.as_tensor(p.into)
            to_rep = into >= 0
            Wd = Wd.clone()
            Wd.index_add_(1, into[to_rep], cols[:, to_rep] * torch.as_tensor(p.slope)[to_rep])
            bias += cols @ torch.as_tensor(p.intercept)
        pieces = {}
        for name in ("gate_proj", "up_proj"):
            lin = getattr(mlp, name)
            b = lin.bias[keep] if lin.bias is not None else (torch.zeros(len(keep), dtype=dtype) if biased else None)
            pieces[name] = _linear(lin.weight[keep], b)
        pieces["down_proj"] = _linear(Wd[:, keep].to(dtype), bias.to(dtype) if biased else None)
        for name, lin in pieces.items():
            setattr(mlp, name, lin)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(p.keep)
    small.config.intermediate_size = widths.pop()
    if biased:
        small.config.mlp_bias = True
    return small.eval()


def parameters(model) -> int:
    """Distinct parameters of ``model`` (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@torch.no_grad()
def seconds_per_token(model, tok, texts: list[str], batch_size: int = 8, repeats: int = 3) -> float:
    """Forward time per (non-padding) token over ``texts``: the fastest of ``repeats`` passes."""
    import time

    from raydund.prune import evaluate

    seqs = evaluate.encode(tok, texts)
    batches = list(evaluate.batches(seqs, batch_size))
    tokens = sum(len(s) for s in seqs)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _idx, ids, mask in batches:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        best = min(best, time.perf_counter() - start)
    return best / tokens
