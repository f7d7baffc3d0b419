"""``raydund robust-cka``: the layer similarity variants of :mod:`raydund.general.robust` on a token sample.

Reads a seeded sample of whole sentences of one (model, corpus, split, unit) from the
lake, every layer aligned row by row, computes every variant for every layer pair and
logs the matrices, the massive dimensions and tokens, and one heatmap per variant to
an MLflow run. Nothing is written to the lake (the sample is reproducible from the
seed and the activation snapshot, both recorded).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from raydund import tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.general.robust import MASSIVE_RATIO, RobustSimilarity, robust_similarity
from raydund.lake import Lake

log = logging.getLogger(__name__)

#: Heatmap titles of the variants.
TITLES = {
    "cka": "linear CKA (paper)",
    "cka_debiased": "debiased linear CKA",
    "cka_no_outliers": "linear CKA without massive dimensions",
    "cka_no_outlier_tokens": "linear CKA without massive-activation tokens",
    "cka_standardized": "debiased CKA, standardised neurons",
    "mknn": "mutual k-NN alignment",
}


@dataclasses.dataclass
class RobustConfig:
    """Which activations, and how large a sample.

    Attributes
    ----------
    model, corpus, split, unit : str
        The activations in the lake.
    tokens : int
        Words in the sample (whole sentences are drawn until at least this many; memory
        is one ``tokens x tokens`` float64 Gram per layer).
    k : int
        Neighbours of the mutual k-NN alignment.
    ratio : float
        A dimension is massive when its largest |x| is ``ratio`` x the layer's median |x|.
    seed : int
        Seed of the sentence sample.
    """

    model: str
    corpus: str
    split: str
    unit: str = "word"
    tokens: int = 2048
    k: int = 10
    ratio: float = MASSIVE_RATIO
    seed: int = 0

    def check(self) -> RobustConfig:
        """Validate what a user typed."""
        if self.tokens < 4:
            raise UserError(f"tokens must be at least 4, got {self.tokens}")
        if not 0 < self.k < self.tokens:
            raise UserError(f"k must be between 1 and tokens - 1, got {self.k}")
        if self.ratio <= 1:
            raise UserError(f"ratio must be above 1, got {self.ratio}")
        return self


def sample_sentences(keys, tokens: int, seed: int) -> list[int]:
    """Seeded whole sentences (by id) until at least ``tokens`` words, from layer keys (``sentence_id`` per row)."""
    ids, counts = np.unique(np.asarray(keys.column("sentence_id")), return_counts=True)
    order = np.random.default_rng(seed).permutation(len(ids))
    total = np.cumsum(counts[order])
    take = int(np.searchsorted(total, tokens) + 1)
    return sorted(int(i) for i in ids[order[:take]])


def run_robust_similarity(cfg: RobustConfig, settings: Settings) -> tuple[RobustSimilarity, str]:
    """Compute and log every variant; return the result and the MLflow run id."""
    cfg.check()
    tracking.check_reachable(settings)
    lake = Lake(settings, create=False)
    files = lake.activation_files(cfg.model, cfg.corpus, cfg.split, cfg.unit)
    layers = sorted({layer for layer, _ in files})
    snapshot = lake.activations().current_snapshot().snapshot_id
    keys = lake.layer_keys(cfg.model, cfg.corpus, cfg.split, layers[0], cfg.unit)
    sentences = sample_sentences(keys, cfg.tokens, cfg.seed)
    matrices = [lake.layer_matrix(cfg.model, cfg.corpus, cfg.split, layer, cfg.unit, snapshot_id=snapshot,
                                  sentences=sentences)[0] for layer in layers]
    params = {**dataclasses.asdict(cfg), "sampled_tokens": len(matrices[0]), "sampled_sentences": len(sentences),
              "activations_snapshot_id": snapshot}
    with tracking.job_run(settings, tracking.experiment_name(cfg.model, cfg.corpus),
                          f"robust-cka {cfg.split} {cfg.unit}", params, tags={"raydund.stage": "robust-cka"}) as run:
        result = robust_similarity(matrices, k=cfg.k, ratio=cfg.ratio)
        log_result(tracking.Tracker(settings, run.info.run_id), result, layers)
    return result, run.info.run_id


def log_result(tracker: tracking.Tracker, result: RobustSimilarity, layers: list[int]) -> None:
    """Metrics (mean adjacent similarity per variant), the matrices and outliers as JSON, one heatmap per variant."""
    from raydund.report.figures import cka_heatmap

    tracker.metrics({f"adjacent_{v}": float(np.nanmean(result.adjacent(v))) for v in result.VARIANTS}
                    | {"massive_dimensions_max": max(len(o) for o in result.outliers)})
    tracker.json({"layers": layers, "tokens": result.tokens, "k": result.k, "ratio": result.ratio,
                  **{v: getattr(result, v).tolist() for v in result.VARIANTS},
                  "outliers": {str(layer): o.tolist() for layer, o in zip(layers, result.outliers)},
                  "outlier_tokens": {str(layer): t.tolist() for layer, t in zip(layers, result.outlier_tokens)}},
                 "robust_cka/result.json")
    for variant, title in TITLES.items():
        tracker.figure(cka_heatmap(getattr(result, variant), title), f"robust_cka/{variant}.png")
