"""Correlation clustering beyond RAM: average linkage on ``1 - |r|`` from a sparse graph and tiles.

Exact average linkage needs every pair's distance at once (the condensed matrix). Three
facts about average linkage (no inversions, reducible) let most of it run piece by piece:

1. **Components.** A cluster formed at height ``h <= t`` has average distance ``<= t``
   between its two halves, so at least one pair across them has ``d <= t``: every
   cluster of the cut at ``t`` is connected in the graph ``G_t`` of pairs with
   ``d <= t`` (``|r| >= 1 - t``), and the cut at ``t`` of the whole tree equals the cut
   at ``t`` of the trees of ``G_t``'s components linked apart. Components nest as ``t``
   grows. Components of at most ``max_exact`` neurons are linked exactly (fastcluster on
   their dense distances, read from the tiles): one tree per component, cut at every
   threshold at or below the largest one where it is still a component.
2. **Continuation.** The cut at ``t`` is the cut at the previous threshold ``t'`` with
   average linkage continued from those clusters (Lance-Williams with sizes; the
   distance of two clusters is the mean of their members' pairwise distances). For a
   component of ``G_t`` too big for (1) whose ``K`` clusters at ``t'`` number at most
   ``max_exact``, the K x K mean distances are summed from the tiles in one pass and
   average linkage continues exactly (:func:`weighted_average_linkage`, NN-chain).
3. **Approximation** (only where ``K > max_exact``): average linkage continued on the
   sparse graph of pairs with ``|r|`` at or above ``graph_bound`` (at most
   ``1 - max(thresholds)``, by default half that), every pair ``(i, j)`` NOT in the graph
   taken at ``(f_i + f_j) / 2``, where ``f_i`` is the mean distance of neuron ``i``'s own
   missing pairs (exact, from one pass over the tiles: each neuron's sum of
   ``|r|`` less its known pairs'). This is exact average linkage on a distance matrix whose
   sub-bound entries (all ``> max(thresholds)``, and so is every filled value) are
   replaced by that additive estimate; it keeps the sum of all distances exact. It is the
   treatment of missing edges in sparse UPGMA (Loewenstein, Portugaly, Fromer, Linial,
   "Efficient algorithms for accurate hierarchical clustering of huge datasets: tackling
   the entire protein space", Bioinformatics 24(13):i41, 2008, where missing distances are
   bounded by the cutoff), with measured per-neuron means instead of a bound. One global
   mean for every missing pair (the first version) was measured worse on real SmolLM2 MLP
   neurons: BENCHMARKS.md, "Beyond RAM".

Whenever the condensed matrix of all neurons fits, the job uses the in-memory
:class:`~raydund.general.clustering.CorrelationClustering` instead (the exact result).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import scipy.sparse as sp
from scipy.cluster.hierarchy import fcluster
from scipy.sparse.csgraph import connected_components

from raydund.general.clustering import (
    DEFAULT_THRESHOLDS,
    average_linkage,
    composition,
    condensed_distance,
    pick_representatives,
)

log = logging.getLogger(__name__)


class DenseSource:
    """A correlation source over an in-memory r (tests, benchmarks): the interface of :class:`TileSource`."""

    def __init__(self, r: np.ndarray, constant: np.ndarray | None = None):
        self.r = r
        self.constant = np.isnan(np.diag(r)) if constant is None else np.asarray(constant, bool)
        self.N = len(r)

    def edges(self, bound: float):
        parts = []
        for s in range(0, self.N, 1024):  # row blocks of the upper triangle
            a = np.abs(self.r[s : s + 1024])
            hit = a >= bound
            hit &= np.triu(np.ones(hit.shape, bool), s + 1)
            x, y = np.nonzero(hit)
            parts.append((x + s, y, a[x, y]))
        return (np.concatenate([p[0] for p in parts]).astype(np.int32),
                np.concatenate([p[1] for p in parts]).astype(np.int32),
                np.concatenate([p[2] for p in parts]).astype(np.float32))

    def abs_row_sums(self) -> np.ndarray:
        live = np.flatnonzero(~self.constant)
        out = np.zeros(self.N)
        for s in range(0, len(live), 1024):  # row blocks: never N x N in float64
            rows = live[s : s + 1024]
            out[rows] = np.abs(self.r[np.ix_(rows, live)].astype(np.float64)).sum(1) - 1.0  # less r_ii
        return out

    def dense(self, members: np.ndarray) -> np.ndarray:
        return self.r[np.ix_(members, members)]

    def dense_many(self, blocks: list[np.ndarray]) -> list[np.ndarray]:
        return [self.dense(m) for m in blocks]

    def group_sums(self, members: np.ndarray, groups: np.ndarray, K: int) -> np.ndarray:
        M = sp.csr_matrix((np.ones(len(members)), (np.arange(len(members)), groups)), shape=(len(members), K))
        S = np.zeros((K, K))
        for a in range(0, len(members), 1024):  # row blocks: never m x m in float64
            D = 1.0 - np.abs(self.r[np.ix_(members[a : a + 1024], members)].astype(np.float64))
            S += M[a : a + 1024].T @ np.asarray((M.T @ D.T).T)
        return S


class TileSource:
    """Correlations read from a tiled similarity run (:mod:`raydund.general.tile_reads`)."""

    def __init__(self, index, constant: np.ndarray):
        self.index, self.constant, self.N = index, np.asarray(constant, bool), len(constant)

    def edges(self, bound: float):
        """``i, j, |r|`` of every pair ``i < j`` with ``|r| >= bound`` (12 bytes a pair; tiles below it unread)."""
        from raydund.general.tile_reads import iter_pairs_above

        parts = [(i, j, np.abs(r)) for i, j, r in iter_pairs_above(self.index, bound)]
        if not parts:
            return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))

    def abs_row_sums(self) -> np.ndarray:
        """Per neuron, the sum of ``|r|`` over every other non-constant neuron: one pass over the tiles."""
        from raydund.general.tiles import read_tile

        out = np.zeros(self.N)
        for row in self.index.iter_rows(named=True):
            a, b, c, d = row["row_start"], row["row_stop"], row["col_start"], row["col_stop"]
            t = np.abs(read_tile(row["path"]).astype(np.float64))  # constant neurons' NaN rows are left out
            out[a:b] += np.nansum(t, 1)
            if row["row_block"] != row["col_block"]:
                out[c:d] += np.nansum(t, 0)
            del t
        out[~self.constant] -= 1.0  # r_ii
        return out

    def dense(self, members: np.ndarray) -> np.ndarray:
        return self.dense_many([members])[0]

    def dense_many(self, blocks: list[np.ndarray]) -> list[np.ndarray]:
        """r among the members of each block (float32 each), every tile read at most once."""
        from raydund.general.tiles import read_tile

        gid, loc = np.full(self.N, -1), np.zeros(self.N, np.int64)
        for g, members in enumerate(blocks):
            gid[members], loc[members] = g, np.arange(len(members))
        out = [np.full((len(m), len(m)), np.nan, np.float32) for m in blocks]
        for row in self.index.iter_rows(named=True):
            a, b, c, d = row["row_start"], row["row_stop"], row["col_start"], row["col_stop"]
            R, C = np.flatnonzero(gid[a:b] >= 0) + a, np.flatnonzero(gid[c:d] >= 0) + c
            common = np.intersect1d(gid[R], gid[C])
            if not len(common):
                continue
            t = read_tile(row["path"])
            for g in common:
                Rg, Cg = R[gid[R] == g], C[gid[C] == g]
                part = t[np.ix_(Rg - a, Cg - c)]
                out[g][np.ix_(loc[Rg], loc[Cg])] = part
                out[g][np.ix_(loc[Cg], loc[Rg])] = part.T
            del t
        return out

    def group_sums(self, members: np.ndarray, groups: np.ndarray, K: int) -> np.ndarray:
        """``S[g, h]`` = sum of ``1 - |r|`` over member pairs of groups g x h, one pass over the tiles."""
        from raydund.general.tiles import read_tile

        where = np.full(self.N, -1)
        where[members] = groups
        S = np.zeros((K, K))
        for row in self.index.iter_rows(named=True):
            a, b, c, d = row["row_start"], row["row_stop"], row["col_start"], row["col_stop"]
            R, C = np.flatnonzero(where[a:b] >= 0), np.flatnonzero(where[c:d] >= 0)
            if not len(R) or not len(C):
                continue
            D = 1.0 - np.abs(read_tile(row["path"])[np.ix_(R, C)].astype(np.float64))
            # summed over the groups present in this tile only: |groups of R| x |groups of C|, never K x K
            ur, ir = np.unique(where[a:b][R], return_inverse=True)
            uc, ic = np.unique(where[c:d][C], return_inverse=True)
            MR = sp.csr_matrix((np.ones(len(R)), (ir, np.arange(len(R)))), shape=(len(ur), len(R)))
            MC = sp.csr_matrix((np.ones(len(C)), (ic, np.arange(len(C)))), shape=(len(uc), len(C)))
            part = np.asarray(MC @ np.asarray(MR @ D).T).T
            S[np.ix_(ur, uc)] += part
            if row["row_block"] != row["col_block"]:
                S[np.ix_(uc, ur)] += part.T
        return S


def weighted_average_linkage(S: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Average linkage of K starting clusters (NN-chain); ``S`` holds sums of member-pair distances.

    ``S`` is overwritten. Returns the merges ``[(a, b, height)]`` (K - 1 rows; cluster ids are the starting
    rows, a merged cluster keeps the id ``a``), in the order NN-chain found them; average
    linkage is reducible, so cutting them at a height gives the same clusters as the
    greedy algorithm.
    """
    K = len(sizes)
    size = sizes.astype(np.float64).copy()
    D = S  # the sums become the mean distances in place: one K x K array in all
    D /= size[:, None]
    D /= size[None, :]
    np.fill_diagonal(D, np.inf)
    alive = np.ones(K, bool)
    merges, chain = [], []
    for _ in range(K - 1):
        while True:
            if not chain:
                chain.append(int(np.flatnonzero(alive)[0]))
            x = chain[-1]
            row = np.where(alive, D[x], np.inf)
            y = int(np.argmin(row))
            if len(chain) > 1 and row[chain[-2]] <= row[y]:
                y = chain[-2]
            if len(chain) > 1 and y == chain[-2]:
                break
            chain.append(y)
        chain.pop()
        chain.pop()
        h = D[x, y]
        a, b = min(x, y), max(x, y)
        merged = (size[a] * D[a] + size[b] * D[b]) / (size[a] + size[b])
        D[a], D[:, a] = merged, merged
        D[a, a] = np.inf
        alive[b] = False
        D[b], D[:, b] = np.inf, np.inf
        size[a] += size[b]
        merges.append((a, b, h))
    return np.array(merges, dtype=np.float64).reshape(-1, 3)


def cut_merges(merges: np.ndarray, K: int, t: float) -> np.ndarray:
    """Cluster of each of the K starting clusters after the merges of height ``<= t`` (union-find)."""
    parent = np.arange(K)

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, h in merges:
        if h <= t:
            parent[find(int(b))] = find(int(a))
    return np.array([find(x) for x in range(K)])


def _neighbour_rows(pairs: tuple, groups: np.ndarray, K: int, fill: np.ndarray) -> list[list[np.ndarray]]:
    """Per starting cluster: ``[ids, sums, fills]`` of the clusters it shares known pairs with (sorted ids).

    ``sums``: the known pairs' distances; ``fills``: what the fill would have given them.
    A row may name its own cluster (pairs inside it): :func:`sparse_average_linkage` drops
    that entry when it first reads the row. Lean on memory (100M pairs on real SmolLM2 MLP
    neurons): one int64 key per pair and direction, its sort order, and one gathered
    column at a time.
    """
    i, j = pairs[0], pairs[1]
    n = len(i)
    key = np.empty(2 * n, np.int64)  # owner * K + other, both directions
    key[:n] = groups[i]
    key[:n] *= K
    key[:n] += groups[j]
    key[n:] = groups[j]
    key[n:] *= K
    key[n:] += groups[i]
    order = np.argsort(key)
    key = key[order]
    order[order >= n] -= n  # both halves carry the same pair
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if n else np.zeros(0, np.int64)
    key = key[first]
    sums = np.add.reduceat(np.asarray(pairs[2], np.float64)[order], first) if n else np.zeros(0)
    g = fill[i]
    g += fill[j]
    g /= 2
    fills = np.add.reduceat(g[order], first) if n else np.zeros(0)
    del order, g
    owner, other = key // K, (key % K).astype(np.int32)
    del key
    bounds = np.searchsorted(owner, np.arange(K + 1))
    return [[other[bounds[x] : bounds[x + 1]], sums[bounds[x] : bounds[x + 1]], fills[bounds[x] : bounds[x + 1]]]
            for x in range(K)]


def sparse_average_linkage(pairs: tuple, groups: np.ndarray, K: int, sizes: np.ndarray, fill,
                           t: float) -> np.ndarray:
    """Approximate continuation (fact 3): average linkage below ``t`` on the known pairs, every other
    pair ``(i, j)`` at ``(fill_i + fill_j) / 2``.

    ``pairs`` = (i, j, d) over the members (local indices), ``groups`` their starting
    cluster (``K`` of them, ``sizes`` members each), ``fill`` per member (or one value for
    all). Returns, per starting cluster, the id of its cluster in the cut at ``t``.

    NN-chain (average linkage is reducible: the cut at ``t`` is that of the greedy
    algorithm) over one neighbour row per cluster, NumPy arrays of neighbour ids, summed
    pair distances and summed fills of those pairs (20 bytes per known pair and
    direction). A merged cluster's row is its halves' rows concatenated; rows that still
    name merged clusters are brought up to date (ids through the union-find, duplicates
    summed) when next read. With ``F_x`` the sum of ``fill`` over the members of ``x``, the
    mean distance of clusters ``x, y`` is ``(s + (n_y F_x + n_x F_y) / 2 - g) / (n_x n_y)``
    (``s``, ``g``: their known pairs' distances and fills). Clusters sharing no known pair
    are at a mean of fills, every one ``> t``, so they never merge below ``t``.
    """
    fill = np.broadcast_to(np.asarray(fill, np.float64), groups.shape)
    rows = _neighbour_rows(pairs, groups, K, fill)
    F = np.bincount(groups, weights=fill, minlength=K)
    parent = np.arange(K)
    size = sizes.astype(np.float64).copy()
    done = np.zeros(K, bool)  # its nearest neighbour is beyond t: no merge below t will ever involve it

    def roots(ids):
        while True:
            up = parent[ids]
            if np.array_equal(up, ids):
                return ids
            ids = up

    def nearest(x):
        ids, sm, ct = rows[x]
        if not len(ids):
            return ids, np.zeros(0)
        ids = roots(ids)
        order = np.argsort(ids, kind="stable")
        ids, sm, ct = ids[order], sm[order], ct[order]
        first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        ids, sm, ct = ids[first], np.add.reduceat(sm, first), np.add.reduceat(ct, first)
        own = ids != x
        rows[x] = [ids[own], sm[own], ct[own]]
        ids, sm, ct = rows[x]
        if not len(ids):
            return ids, np.zeros(0)
        return ids, (sm + (size[ids] * F[x] + size[x] * F[ids]) / 2 - ct) / (size[x] * size[ids])

    chain: list[int] = []
    scan = 0
    while True:
        if not chain:
            while scan < K and (parent[scan] != scan or done[scan]):
                scan += 1
            if scan == K:
                break
            chain.append(scan)
        x = chain[-1]
        ids, dist = nearest(x)
        k = int(np.argmin(dist)) if len(dist) else -1  # ties: the lowest id
        if k < 0 or dist[k] > t:
            done[x] = True
            chain.pop()
            continue
        y = int(ids[k])
        if len(chain) > 1:  # ties: the previous cluster of the chain
            w = chain[-2]
            at = np.searchsorted(ids, w)
            if at < len(ids) and ids[at] == w and dist[at] <= dist[k]:
                y = w
        if len(chain) > 1 and y == chain[-2]:
            chain.pop()
            chain.pop()
            a, b = (x, y) if (size[x], -x) >= (size[y], -y) else (y, x)  # the bigger keeps its id
            parent[b] = a
            size[a] += size[b]
            F[a] += F[b]
            rows[a] = [np.concatenate([rows[a][c], rows[b][c]]) for c in range(3)]
            rows[b] = None
        else:
            chain.append(y)
    return roots(np.arange(K))


def _components(i: np.ndarray, j: np.ndarray, d: np.ndarray, t: float, N: int) -> np.ndarray:
    """Connected component of each of the ``N`` neurons in the graph of the pairs ``(i, j)`` with ``d <= t``."""
    keep = d <= t
    graph = sp.coo_matrix((np.ones(int(keep.sum()), np.int8), (i[keep], j[keep])), shape=(N, N))
    return connected_components(graph, directed=False)[1]


def missing_fill(source, i: np.ndarray, j: np.ndarray, d: np.ndarray, live: np.ndarray, bound: float) -> np.ndarray:
    """Per neuron, the mean distance ``1 - |r|`` of its pairs outside the graph (``|r| < bound``).

    Exact: each neuron's sum of ``|r|`` over all partners (``source.abs_row_sums``) less
    its known pairs' (``i, j, d``: the graph's pairs and distances). A neuron with no
    missing pair gets the mean over all missing pairs (it is never used).
    """
    N, n = len(live), int(live.sum())
    known = np.bincount(i, 1.0 - d, N) + np.bincount(j, 1.0 - d, N)
    missing = (n - 1) - (np.bincount(i, minlength=N) + np.bincount(j, minlength=N))
    rest = source.abs_row_sums() - known
    overall = rest[live].sum() / max(missing[live].sum(), 1)
    mu = np.where(missing > 0, rest / np.maximum(missing, 1), overall)
    return 1.0 - np.clip(mu, 0.0, bound)  # every missing |r| is below the bound, so is their mean


@dataclasses.dataclass
class OutOfCoreClustering:
    """:class:`~raydund.general.clustering.CorrelationClustering` from a sparse graph and tiles (see module).

    Parameters
    ----------
    thresholds, representative, seed
        As in the in-memory class (representatives: random only).
    max_exact : int
        The most neurons (or clusters) linked exactly at once.
    graph_bound : float, optional
        The sparse graph keeps the pairs with ``|r|`` at or above it: at most
        ``1 - max(thresholds)`` (what the exact paths need), by default half that (0.05
        for the paper's sweep) but not below the noise of r, ``4 / sqrt(tokens)`` when
        ``tokens`` is given. Pairs below it only matter to the approximation, which is
        better the more it knows: on a third of the real SmolLM2 MLP neurons, ARI 0.92 at
        0.07 and 0.96 at 0.05 against exact linkage at t = 0.9, where 0.1 gave 0.84
        (BENCHMARKS.md). Lower costs memory: ~16 bytes per pair kept.
    tokens : int, optional
        The tokens behind r (sets the noise floor of the default ``graph_bound``).

    Attributes (after :meth:`fit`): ``neurons_``, ``labels_``, ``keep_``, ``summary_`` as in
    the in-memory class, and ``exact_`` (per threshold, the share of neurons whose clusters
    are exact; below 1 only where the approximation ran).
    """

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    representative: str = "random"
    seed: int = 0
    max_exact: int = 20_000
    graph_bound: float | None = None
    tokens: int | None = None

    def fit(self, source, layer_of: np.ndarray):
        live = ~source.constant
        self.neurons_ = np.flatnonzero(live)
        order = sorted(range(len(self.thresholds)), key=lambda k: self.thresholds[k])
        ts = [float(self.thresholds[k]) for k in order]
        loosest = max(0.0, 1.0 - ts[-1] - 1e-6)  # every pair a cut at the loosest threshold can need
        bound = min(loosest, float(self.graph_bound) if self.graph_bound is not None else
                    max(loosest / 2, 4.0 / np.sqrt(self.tokens) if self.tokens else 0.0))
        i, j, a = source.edges(bound)
        d = 1.0 - a.astype(np.float64)
        del a
        N = source.N
        # 1. exact components, loosest threshold first: level[x] = largest threshold x's block is exact at
        resolved = ~live
        blocks: list[tuple[np.ndarray, float]] = []
        for t in reversed(ts):
            comp = _components(i, j, d, t, N)
            sizes = np.bincount(comp)
            new = ~resolved & (sizes[comp] <= self.max_exact)
            order_c = np.argsort(comp[new], kind="stable")
            members = np.flatnonzero(new)[order_c]
            for part in np.split(members, np.flatnonzero(np.diff(comp[members])) + 1):
                if len(part):
                    blocks.append((part, t))
            resolved |= new
        labels = {t: np.full(N, -1, np.int64) for t in ts}
        exact = {t: np.zeros(N, bool) for t in ts}
        next_id = 0
        batches, load = [[]], 0  # blocks of more than one neuron, read together up to ~1 GB of r
        for k, (part, _) in enumerate(blocks):
            if len(part) > 1:
                if load + 4 * len(part) ** 2 > 2**30 and batches[-1]:
                    batches.append([])
                    load = 0
                batches[-1].append(k)
                load += 4 * len(part) ** 2
        trees: dict[int, np.ndarray] = {}
        for batch in batches:  # one linkage per block
            for k, r_block in zip(batch, source.dense_many([blocks[k][0] for k in batch])):
                trees[k] = average_linkage(condensed_distance(r_block))
        for k, (part, level) in enumerate(blocks):  # cut at every threshold up to the block's level
            tree = trees.pop(k, None)
            for t in ts:
                if t > level:
                    break
                lab = np.zeros(1, np.int64) if tree is None else fcluster(tree, t, criterion="distance")
                labels[t][part] = next_id + lab
                exact[t][part] = True
            next_id += len(part) + 1
        # 2./3. the rest, threshold by threshold, continued from the cut below
        fill, pairs = None, None
        prev = None
        for t in ts:
            todo = live & (labels[t] < 0)
            if todo.any():
                comp = _components(i, j, d, t, N)
                for c in np.unique(comp[todo]):
                    members = np.flatnonzero(comp == c)
                    start = np.arange(len(members)) if prev is None else prev[members]
                    _, groups = np.unique(start, return_inverse=True)
                    K = int(groups.max()) + 1
                    sizes = np.bincount(groups, minlength=K)
                    if K <= self.max_exact:
                        merges = weighted_average_linkage(source.group_sums(members, groups, K), sizes)
                        root = cut_merges(merges, K, t)
                        exact[t][members] = prev is None or bool(np.all(exact[ts[ts.index(t) - 1]][members]))
                    else:
                        if fill is None:
                            fill = missing_fill(source, i, j, d, live, bound)
                            log.info("approximate linkage: %d known pairs, missing pairs at d = %.4f on average "
                                     "(per neuron %.4f to %.4f)", len(d), fill[live].mean(), fill[live].min(),
                                     fill[live].max())
                        local = np.full(N, -1, np.int32)
                        local[members] = np.arange(len(members), dtype=np.int32)
                        li, lj = local[i], local[j]
                        inside = (li >= 0) & (lj >= 0)
                        pairs = (li, lj, d) if inside.all() else (li[inside], lj[inside], d[inside])
                        del li, lj, inside
                        root = sparse_average_linkage(pairs, groups, K, sizes, fill[members], t)
                    labels[t][members] = next_id + root[groups]
                    next_id += K + 1
            prev = labels[t]
        self.labels_ = np.stack([np.unique(labels[float(t)][self.neurons_], return_inverse=True)[1] + 1
                                 for t in self.thresholds])
        self.exact_ = [float(exact[float(t)][self.neurons_].mean()) for t in self.thresholds]
        self.keep_ = np.stack([pick_representatives(lab, "random", seed=self.seed) for lab in self.labels_])
        layers = np.asarray(layer_of)[self.neurons_]
        self.summary_ = [
            {"threshold": float(t), "clusters": int(lab.max()), "neurons_kept": int(keep.sum()), "neurons_total": N,
             "constant": int((~live).sum()), "reduction": 1.0 - keep.sum() / N, "exact_share": ex,
             **composition(lab, layers)}
            for t, lab, keep, ex in zip(self.thresholds, self.labels_, self.keep_, self.exact_)]
        return self

    def kept(self, threshold_index: int) -> np.ndarray:
        return self.neurons_[self.keep_[threshold_index]]


__all__ = ["DenseSource", "OutOfCoreClustering", "TileSource", "cut_merges", "sparse_average_linkage",
           "weighted_average_linkage"]
