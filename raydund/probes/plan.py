"""How a probe bank's masks become a few dense products: blocks of neurons read by the same probes.

:class:`Plan` cuts the neurons into blocks and keeps each block's readers as runs of
consecutive probe numbers; :func:`merge_blocks` merges thin neighbouring blocks where a
block's fixed per-step cost outweighs the products a merge adds (ARCHITECTURE.md,
"Blocks, not masks").
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch


@dataclasses.dataclass
class Plan:
    """How a bank's masks become a few dense products.

    The neurons are cut into blocks, each read by a set of probes: the groups of neurons
    read by the same probes (the layers of a layer/prefix/oracle bank, the steps between
    two k of a top-k bank), or one block per probe where that gives fewer. A block's
    weights are one ``[n x p x C]`` tensor, so a step is one product per block forward
    and one backward, and a bank costs the sum of its probes' sizes. A block's readers
    are kept as runs of consecutive probe numbers: with one run (the nested sets of a
    top-k bank) its scores are a slice of the ``[B x P x C]`` scores, added in place and
    read back without a copy; with a few (a layer: itself, then the prefixes from it on)
    each run is one slice. ``colmap`` orders a batch's columns so that every block is a
    slice (``None`` when they already are).

    Every block also costs a fixed amount of work per step whatever its size (its
    products' calls, its penalty and norm terms: ~60 us on a CPU). Where blocks are thin,
    as the first steps of a top-k bank are (3, 2, 3... neurons), ``block_cost`` merges
    neighbouring blocks into one read by all their readers, with a 0/1 ``masks`` entry
    that keeps each weight a probe should not have at zero (it starts at zero and its
    gradient is masked, so Adam and the penalty leave it there): the merge pays the
    products of the masked weights to save the fixed work of the blocks it removes.
    """

    columns: list[np.ndarray]  # the neurons of each block
    slices: list[slice]  # each block's columns in a batch after ``colmap``
    runs: list[list[tuple[int, int]]]  # each block's readers: runs [a, b) of probe numbers
    colmap: torch.Tensor | None
    n_probes: int
    masks: list[np.ndarray | None]  # [n x p] of merged blocks (None: every reader reads every column)

    @classmethod
    def of(cls, masks: np.ndarray, block_cost: float = 0.0) -> Plan:
        """The plan of ``masks [P x N]``; ``block_cost``: a block's fixed work, in neuron-probe pairs."""
        P, N = masks.shape
        patterns, group = np.unique(np.packbits(masks.T, axis=1), axis=0, return_inverse=True)
        group = group.reshape(-1)
        columns, readers = [], []
        for g, pattern in enumerate(patterns):
            probes = np.flatnonzero(np.unpackbits(pattern)[:P])
            if len(probes):
                columns.append(np.flatnonzero(group == g))
                readers.append(probes)
        if len(columns) > P:  # scattered masks: one block per probe makes fewer products
            columns = [np.flatnonzero(m) for m in masks if m.any()]
            readers = [np.array([p]) for p in range(P) if masks[p].any()]
        order = np.argsort([c[0] for c in columns], kind="stable")
        columns, readers = [columns[i] for i in order], [readers[i] for i in order]
        columns, readers, block_masks = merge_blocks(columns, readers, P, block_cost)
        runs = []
        for r in readers:
            breaks = np.flatnonzero(np.diff(r) != 1) + 1
            runs.append([(int(part[0]), int(part[-1]) + 1) for part in np.split(r, breaks)])
        colmap = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
        bounds = np.cumsum([0] + [len(c) for c in columns])
        slices = [slice(int(a), int(b)) for a, b in zip(bounds, bounds[1:])]
        identity = len(colmap) == N and np.array_equal(colmap, np.arange(N))
        return cls(columns, slices, runs, None if identity else torch.as_tensor(colmap), P, block_masks)

    def readers(self, block: int) -> np.ndarray:
        """The probes reading a block, in the order of its weights' second axis."""
        return np.concatenate([np.arange(a, b) for a, b in self.runs[block]])

    def columns_of(self, rows: torch.Tensor) -> torch.Tensor:
        """A batch's columns in block order (the batch itself when no reordering is needed)."""
        return rows if self.colmap is None else rows.index_select(1, self.colmap)

    def scores(self, xb: torch.Tensor, weights: list[torch.Tensor], bias: torch.Tensor, reduce=None) -> torch.Tensor:
        """``[B x P x C]`` scores of every probe on a batch in block order (summed by ``reduce``)."""
        out = bias.expand(len(xb), *bias.shape).contiguous()
        flat = out.view(len(xb), -1)
        C = bias.shape[1]
        for W, sl, runs in zip(weights, self.slices, self.runs):
            n, p, _ = W.shape
            if len(runs) == 1 and W.dtype == out.dtype:  # the product is added straight into its slice
                a, b = runs[0]
                flat[:, a * C : b * C].addmm_(xb[:, sl], W.view(n, p * C))
                continue
            xs, Wv, at = xb[:, sl], W.view(n, p * C), 0
            for a, b in runs:  # one product per run, each straight into its slice
                if W.dtype == out.dtype:
                    flat[:, a * C : b * C].addmm_(xs, Wv[:, at : at + (b - a) * C])
                else:
                    flat[:, a * C : b * C] += xs @ Wv[:, at : at + (b - a) * C]
                at += (b - a) * C
        if reduce is not None:
            reduce(out)
        return out

    def reader_index(self, device: torch.device) -> torch.Tensor:
        """Every block's readers one after another: the probe of each (block, reader) pair."""
        return torch.as_tensor(np.concatenate([self.readers(b) for b in range(len(self.runs))] or [[]]),
                               dtype=torch.long, device=device)

    def norms(self, weights: list[torch.Tensor], index: torch.Tensor, reduce=None) -> torch.Tensor:
        """``[P]`` the Frobenius norm of each probe's weights over all its blocks (and shards).

        ``index`` is :meth:`reader_index`: the per-(block, reader) squared sums are added
        into their probes in one ``index_add_``.
        """
        sq = torch.zeros(self.n_probes, dtype=weights[0].dtype if weights else torch.float32, device=index.device)
        if weights:
            C = weights[0].shape[2]
            cols = [(W.view(len(W), -1) * W.view(len(W), -1)).sum(0) for W in weights]  # rows first: contiguous
            sq.index_add_(0, index, torch.cat(cols).view(-1, C).sum(1))
        if reduce is not None:
            reduce(sq)
        return sq.sqrt()


def merge_blocks(columns: list[np.ndarray], readers: list[np.ndarray], n_probes: int, block_cost: float
                  ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
    """Merge runs of neighbouring blocks (ordered by their first reader) where it saves work.

    A merged block is read by the union of its members' readers; its cost is
    ``block_cost`` plus its neuron-probe pairs (those a member's probes do not read are
    masked). The cheapest cut of the ordered blocks into merged runs is a dynamic
    programme over where each run ends. Returns the blocks' columns, readers and masks
    (``None`` where nothing is masked).
    """
    K = len(columns)
    if K < 2 or block_cost <= 0:
        return columns, readers, [None] * K
    order = sorted(range(K), key=lambda i: (readers[i][0], -len(readers[i])))
    columns, readers = [columns[i] for i in order], [readers[i] for i in order]
    member = np.zeros((K, n_probes), dtype=bool)
    for i, r in enumerate(readers):
        member[i, r] = True
    sizes = np.array([len(c) for c in columns], dtype=np.float64)
    best, cut = np.zeros(K + 1), np.zeros(K + 1, dtype=np.int64)
    for end in range(1, K + 1):  # best[end]: the cheapest plan of blocks [0, end)
        union, cost = np.zeros(n_probes, dtype=bool), np.inf
        for start in range(end - 1, -1, -1):
            union |= member[start]
            c = best[start] + block_cost + sizes[start:end].sum() * union.sum()
            if c < cost:
                cost, cut[end] = c, start
        best[end] = cost
    spans, end = [], K
    while end:
        spans.append((int(cut[end]), end))
        end = int(cut[end])
    out_cols, out_readers, out_masks = [], [], []
    for start, end in reversed(spans):
        union = np.flatnonzero(member[start:end].any(0))
        out_cols.append(np.concatenate(columns[start:end]))
        out_readers.append(union)
        if end - start == 1:
            out_masks.append(None)
        else:
            out_masks.append(np.concatenate([np.repeat(member[i, union][None, :], len(columns[i]), axis=0)
                                             for i in range(start, end)]))
    return out_cols, out_readers, out_masks
