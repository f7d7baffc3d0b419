"""Efficient transfer learning (paper section 7): LayerSelector, then CCFS.

1. **LayerSelector (LS)**: the lowest layer ``l`` whose probe on layers ``0..l``
   concatenated keeps ``1 - ls_threshold`` of the oracle's dev score.
2. **CC**: correlation clustering of the neurons of layers ``0..l`` only (the rows and
   columns of the general-redundancy correlations that belong to them, not a new pass),
   one neuron per cluster; the clustering threshold is the largest of the sweep whose
   reduced-set probe keeps ``1 - ccfs_threshold`` of the LS dev score.
3. **FS**: the surviving neurons ranked by LCA on that probe's weights; the smallest top-k
   whose fresh probe keeps ``1 - ccfs_threshold`` of the CC dev score (each step within the
   threshold of the one it refines). The top-k grid is the paper's: percentages of *all* the
   model's neurons (every layer, as the paper's 10, 20, 30, 100, 300, 400 of 9,984), the k
   below CC's count, and CC's count itself (``fs_grid="all-neurons"``, ``fs_target="cc"``,
   as the paper's repository does). ``fs_grid="kept-neurons"`` takes the percentages of the
   neurons CC kept instead, ``fs_target="ls"`` holds FS to the LS score (both: raydund's
   procedure before issue 17).

Both thresholds are relative shares ("within 1%"). Every step is one probe bank (all
prefixes; all clustering thresholds; all k), so a sweep of threshold pairs only trains
what a new pair needs: banks are cached by what they depend on.
Pure functions on :class:`~raydund.probes.analysis.Splits`: no Ray, lake or MLflow.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from raydund.errors import UserError
from raydund.general.clustering import DEFAULT_THRESHOLDS, CorrelationClustering
from raydund.probes import analysis
from raydund.probes.model import primary_metric
from raydund.probes.rank import lca_ordering, top_k_grid

#: FS's top-k grid: percentages of all the model's neurons (the paper's) or of those CC kept.
FS_GRIDS = ("all-neurons", "kept-neurons")
#: The stage whose dev score FS keeps within the threshold: CC's (the paper's) or LS's.
FS_TARGETS = ("cc", "ls")


@dataclasses.dataclass
class Correlations:
    """The general-redundancy statistics CC reads: r over the stacked neuron axis.

    Attributes
    ----------
    r : numpy.ndarray
        ``[N x N]`` Pearson correlations (NaN rows for constant neurons).
    layer_of : numpy.ndarray
        ``[N]`` layer of each position.
    constant : numpy.ndarray
        ``[N]`` constant (dead) neurons, left out of the clustering.
    """

    r: np.ndarray
    layer_of: np.ndarray
    constant: np.ndarray

    def upto(self, layer: int) -> Correlations:
        """The statistics of layers ``0..layer`` (a prefix of the stacked axis)."""
        n = int(np.sum(self.layer_of <= layer))
        return Correlations(self.r[:n, :n], self.layer_of[:n], self.constant[:n])


@dataclasses.dataclass
class ReducedSet:
    """The outcome of LS + CCFS for one threshold pair (Tables 3, 9, 10).

    ``neurons`` are positions on the stacked axis (layer-major), all in layers ``0..layer``;
    ``coef``/``intercept`` are the final probe's weights on exactly those neurons.
    """

    ls_threshold: float
    ccfs_threshold: float
    layer: int
    cc_threshold: float
    cc_neurons: int
    neurons: np.ndarray
    coef: np.ndarray  # [k x C]
    intercept: np.ndarray  # [C]
    scores: dict  # stage -> {"dev": metrics, "test": metrics, "neurons": int}


@dataclasses.dataclass
class CCFS:
    """LayerSelector + CCFS swept over threshold pairs (scikit-learn style).

    Parameters
    ----------
    settings : ProbeSettings
        Probe hyperparameters for every bank.
    ls_thresholds, ccfs_thresholds : sequence of float
        Relative losses allowed by LS and by each CCFS step (0.01 = 1%); every pair is run.
    cluster_thresholds : sequence of float
        The clustering sweep CC chooses from.
    percents : sequence of float, optional
        Top-k grid for FS, as percentages (the paper's grid,
        :func:`~raydund.probes.rank.percent_grid`, by default); of what, ``fs_grid`` says.
    fs_grid : {"all-neurons", "kept-neurons"}
        FS's top-k: ``percents`` of all the model's neurons (every layer), only the k below
        CC's count, plus CC's count (the paper's); or ``percents`` of the neurons CC kept.
    fs_target : {"cc", "ls"}
        The dev score FS keeps within ``ccfs_threshold``: the CC stage's, the one it refines
        (the paper's); or the LS stage's.

    Attributes (after :meth:`fit`)
    ----------
    layerwise_ : list of dict
        Rows of the layer-wise bank (layers, oracle, prefixes).
    reduced_sets_ : list of ReducedSet
        One per threshold pair, in sweep order.
    seconds_ : dict
        Wall time of each stage (``ls``, ``cc``, ``fs``), summed over the sweep.
    """

    settings: analysis.ProbeSettings
    ls_thresholds: tuple[float, ...] = (0.01,)
    ccfs_thresholds: tuple[float, ...] = (0.01,)
    cluster_thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    percents: tuple[float, ...] | None = None
    fs_grid: str = "all-neurons"
    fs_target: str = "cc"

    def __post_init__(self):
        for name, allowed in (("fs_grid", FS_GRIDS), ("fs_target", FS_TARGETS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name.replace('_', ' ')} must be one of {', '.join(allowed)}, "
                                f"got {getattr(self, name)!r}")
        for name in ("ls_thresholds", "ccfs_thresholds", "cluster_thresholds"):
            values = tuple(float(v) for v in getattr(self, name))
            if not values or any(not 0.0 <= v <= 1.0 for v in values):
                raise UserError(f"{name.replace('_', ' ')} must be in [0, 1], got {list(values)}")
            setattr(self, name, values)

    def fit(self, splits: analysis.Splits, correlations: Correlations) -> CCFS:
        """Run every threshold pair on one task."""
        widths = splits.train.widths
        if len(correlations.layer_of) != sum(widths):
            raise UserError(f"the correlations cover {len(correlations.layer_of)} neurons but the task's "
                            f"activations have {sum(widths)}: compute them on the same model")
        key = primary_metric(self.settings.task)
        self.seconds_ = {"ls": 0.0, "cc": 0.0, "fs": 0.0}
        t0 = time.perf_counter()
        layer = analysis.layerwise(splits, self.settings)
        self.seconds_["ls"] += time.perf_counter() - t0
        self.layerwise_ = layer["rows"]
        rows = {r["probe"]: r for r in self.layerwise_}
        oracle = rows["oracle"]
        prefixes = [rows.get(f"layers 0-{l}", oracle) for l in range(len(widths))]  # 0..L-1 is the oracle
        cc_cache, fs_cache = {}, {}
        self.reduced_sets_ = []
        for ls_t in self.ls_thresholds:
            l = next(i for i, row in enumerate(prefixes) if _share(row, oracle, key) >= 1 - ls_t)
            ls_row = prefixes[l]
            if l not in cc_cache:
                t0 = time.perf_counter()
                cc_cache[l] = self._cc(splits, correlations.upto(l))
                self.seconds_["cc"] += time.perf_counter() - t0
            cc_rows, kept, cc_bank = cc_cache[l]
            for ccfs_t in self.ccfs_thresholds:
                ok = [i for i, row in enumerate(cc_rows) if _share(row, ls_row, key) >= 1 - ccfs_t]
                ci = max(ok, key=lambda i: cc_rows[i]["threshold"]) if ok else 0  # t = 0 keeps every neuron
                if (l, ci) not in fs_cache:
                    t0 = time.perf_counter()
                    fs_cache[(l, ci)] = self._fs(splits, kept[ci], splits.weights(cc_bank, ci))
                    self.seconds_["fs"] += time.perf_counter() - t0
                fs_rows, order, bank = fs_cache[(l, ci)]
                target = cc_rows[ci] if self.fs_target == "cc" else ls_row
                fi = next((i for i, row in enumerate(fs_rows) if _share(row, target, key) >= 1 - ccfs_t), None)
                if fi is None:  # no top-k keeps the score: keep everything CC kept (its probe is the last row)
                    fi = len(fs_rows) - 1
                final = fs_rows[fi]
                neurons = order[: final["k"]]
                self.reduced_sets_.append(ReducedSet(
                    ls_threshold=ls_t, ccfs_threshold=ccfs_t, layer=l, cc_threshold=cc_rows[ci]["threshold"],
                    cc_neurons=int(len(kept[ci])), neurons=neurons,
                    coef=splits.weights(bank, fi)[neurons], intercept=splits.intercept(bank, fi),
                    scores={"oracle": _scores(oracle, sum(widths)), "ls": _scores(ls_row, sum(widths[: l + 1])),
                            "cc": _scores(cc_rows[ci], len(kept[ci])), "ccfs": _scores(final, len(neurons))}))
        return self

    def _cc(self, splits: analysis.Splits, corr: Correlations):
        """Cluster layers 0..l once, cut at every threshold, one probe per reduced set (one bank)."""
        cc = CorrelationClustering(self.cluster_thresholds).fit(corr.r, corr.layer_of, corr.constant)
        kept = [cc.kept(i) for i in range(len(cc.thresholds))]
        bank = analysis.fit_bank(self.settings, analysis.sets_masks(kept, splits.n_neurons), splits)
        rows = analysis.evaluate(bank, splits, [f"threshold {t:.2f}" for t in cc.thresholds])
        for t, k, row in zip(cc.thresholds, kept, rows):
            row["threshold"], row["neurons"] = float(t), int(len(k))
        return rows, kept, bank

    def _fs(self, splits: analysis.Splits, kept: np.ndarray, weights: np.ndarray):
        """Rank CC's survivors by LCA on their probe's weights, then one top-k bank (the last k = all)."""
        N = splits.n_neurons
        order = kept[lca_ordering(weights[kept].T)[0]]  # LCA over the survivors, back to stacked positions
        ks = fs_ks(len(order), N, self.percents, self.fs_grid)
        bank = analysis.fit_bank(self.settings, analysis.masks_for(order, ks, N), splits)
        rows = analysis.evaluate(bank, splits, [f"top {k}" for k in ks])
        for k, row in zip(ks, rows):
            row["k"] = k
        return rows, order, bank


def fs_ks(kept: int, total: int, percents=None, grid: str = "all-neurons") -> list[int]:
    """FS's top-k grid, ascending, ending at ``kept`` (everything CC kept).

    ``grid="all-neurons"`` (the paper's): ``percents`` of ``total``, all the model's neurons,
    those below ``kept``; ``"kept-neurons"``: ``percents`` of ``kept``.
    """
    if grid not in FS_GRIDS:
        raise UserError(f"fs grid must be one of {', '.join(FS_GRIDS)}, got {grid!r}")
    if kept < 1:
        return []
    ks = top_k_grid(total, percents, limit=kept - 1) if grid == "all-neurons" else top_k_grid(kept, percents)
    return sorted(set(ks) | {kept})


def _share(row: dict, reference: dict, key: str) -> float:
    ref = reference["dev"][key]
    return row["dev"][key] / ref if ref else float("nan")


def _scores(row: dict, neurons: int) -> dict:
    return {"dev": row["dev"], "test": row["test"], "neurons": int(neurons)}


def stage_rows(task: str, sel: ReducedSet, total_neurons: int) -> list[dict]:
    """Table 3/9/10 rows of one reduced set: per stage its layers, neurons, dev and test score."""
    key = "pearson" if "pearson" in sel.scores["oracle"]["dev"] else "accuracy"
    out = []
    for stage, s in sel.scores.items():
        out.append({"task": task, "ls_threshold": sel.ls_threshold, "ccfs_threshold": sel.ccfs_threshold,
                    "stage": stage, "layers": (sel.layer + 1) if stage != "oracle" else None,
                    "neurons": s["neurons"], "reduction": 1.0 - s["neurons"] / total_neurons,
                    "dev": s["dev"][key], "test": s["test"][key], "metric": key})
    return out
