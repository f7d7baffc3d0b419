"""Timing analysis (paper section 7.2, Figures 5 and 10-14), measured on this machine.

- forward time per sentence against the number of layers kept (Figures 10/11);
- the reduced model (LS layers, CCFS neurons, final probe) against the full model with
  the oracle probe, on the same sentences: the speed-up a deployment gets;
- probe training and inference time against the number of features (Figure 5);
- how extraction, correlation clustering and ranking grow with the number of tokens
  (Figures 12-14), with the slope and R^2 of a straight-line fit.

Every figure is a median of ``repeats`` runs; nothing is estimated.
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from raydund.config import Settings
from raydund.general.clustering import CorrelationClustering
from raydund.general.moments import Moments
from raydund.general.similarity import similarity
from raydund.lake import Lake
from raydund.probes.model import ProbeBank
from raydund.probes.rank import lca_ordering
from raydund.report import figures
from raydund.transfer.reduced import ReducedModel, save_reduced, truncate

log = logging.getLogger(__name__)


def _median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _encode_all(encoder, sentences, unit: str) -> np.ndarray:
    """Run the encoder over every sentence; return the stacked ``[tokens x N]`` matrix."""
    chunks = list(encoder.encode_cls(sentences) if unit == "cls" else encoder.encode_words(sentences))
    return np.concatenate([c.layers.transpose(1, 0, 2).reshape(c.layers.shape[1], -1) for c in chunks])


def forward_by_layers(model, tokenizer, sentences, aggregation: str, unit: str, repeats: int = 3) -> list[dict]:
    """Seconds per sentence of a forward pass keeping 1..L blocks (Figures 10/11; ``layers`` counts the embeddings)."""
    from raydund.extract.encoder import Encoder

    rows = []
    for blocks in range(1, int(model.config.num_hidden_layers) + 1):
        cut = truncate(copy.deepcopy(model), blocks)
        enc = Encoder(cut, tokenizer, aggregation)
        seconds = _median_time(lambda: _encode_all(enc, sentences, unit), repeats)
        rows.append({"layers": blocks + 1, "seconds_per_sentence": seconds / len(sentences)})  # + embeddings
    return rows


def probe_cost(n_classes: int, features: list[int], tokens: int, epochs: int, seed: int = 0,
               repeats: int = 3) -> list[dict]:
    """Training and inference seconds of one probe against its number of features (Figure 5).

    The rows are random (time depends on shapes only): ``tokens`` rows, ``n_classes`` classes.
    """
    rng = np.random.default_rng(seed)
    out = []
    for k in features:
        X = rng.standard_normal((tokens, k)).astype(np.float32)
        y = rng.integers(0, n_classes, tokens)
        bank = ProbeBank(np.ones((1, k), dtype=bool), epochs=epochs, seed=seed)
        train = _median_time(lambda: bank.fit(X, y, n_classes), 1)
        infer = _median_time(lambda: bank.predict(X), repeats)
        out.append({"features": int(k), "train_seconds": train, "inference_seconds": infer})
    return out


def stages_by_tokens(X: np.ndarray, widths: tuple[int, ...], encoder, sentences, unit: str, y: np.ndarray,
                     n_classes: int, epochs: int, fractions=(0.25, 0.5, 1.0)) -> list[dict]:
    """Seconds of extraction, correlation clustering and ranking on growing token counts (Figures 12-14)."""
    rows = []
    token_of_sentence = None
    for f in fractions:
        n_sent = max(1, int(round(f * len(sentences))))
        part = sentences[:n_sent]
        extract_s = _median_time(lambda: _encode_all(encoder, part, unit), 1)
        if token_of_sentence is None:
            token_of_sentence = np.cumsum([1 if unit == "cls" else len(s) for s in sentences])
        T = int(token_of_sentence[n_sent - 1])
        Z = X[:T]

        def cluster():
            m = Moments.empty(widths, Z[0].astype(np.float64)).update(Z)
            sim = similarity(m)
            CorrelationClustering((0.3,)).fit(sim.r, np.repeat(np.arange(len(widths)), widths), sim.constant)

        def rank():
            bank = ProbeBank(np.ones((1, Z.shape[1]), dtype=bool), epochs=epochs).fit(Z, y[:T], n_classes)
            lca_ordering(bank.coef_[0].T)

        rows.append({"tokens": T, "extraction_seconds": extract_s, "clustering_seconds": _median_time(cluster, 1),
                     "ranking_seconds": _median_time(rank, 1)})
    return rows


def linear_fit(x, y) -> dict:
    """Slope, intercept and R^2 of a least-squares line (is the stage linear in T?)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": float(1 - np.sum(resid**2) / total) if total > 0 else 1.0}


def sample_sentences(settings: Settings, corpus: str, split: str, n: int) -> list[list[str]]:
    """The first ``n`` sentences of a corpus split (the timing workload)."""
    frame = pl.from_arrow(Lake(settings).read_corpus(corpus, split)).sort("sentence_id").head(n)
    return [list(w) for w in frame["words"].to_list()]


def run_timing(cfg, results: list[dict], source: dict, settings: Settings, mlflow) -> dict:
    """Every timing of the module on the test split's first sentences; logged to the active MLflow run."""
    from raydund.extract.encoder import Encoder
    from raydund.extract.models import load_model, source_spec

    torch.manual_seed(cfg.seed)
    sentences = sample_sentences(settings, cfg.corpus, cfg.splits[2], cfg.timing_sentences)
    aggregation = source.get("aggregation", "last")
    model, tokenizer = load_model(source_spec(cfg.model, source["model_source"]))
    full = Encoder(model, tokenizer, aggregation)
    out = {"sentences": len(sentences),
           "forward_by_layers": forward_by_layers(model, tokenizer, sentences, aggregation, cfg.unit)}
    X = _encode_all(full, sentences, cfg.unit)
    first = results[0]
    widths = first["widths"]
    n_classes = len(first["classes"]) if first["classes"] else 1
    rng = np.random.default_rng(cfg.seed)
    oracle_W = rng.standard_normal((X.shape[1], n_classes)).astype(np.float32)  # same shapes as the oracle probe

    def full_predict():
        (_encode_all(full, sentences, cfg.unit) @ oracle_W).argmax(1)

    full_s = _median_time(full_predict)
    out["reduced_vs_full"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for res in results:
            sel = res["model"].reduced_sets_[0]
            folder = save_reduced(Path(tmp) / res["label"], source["model_source"], sel.layer, sel.neurons,
                                  sel.coef, sel.intercept, {"classes": res["classes"], "unit": cfg.unit,
                                                            "task": cfg.task, "aggregation": aggregation})
            reduced = ReducedModel.from_folder(folder)
            texts = [" ".join(s) for s in sentences]
            red_s = _median_time(lambda: reduced.predict(None, texts))
            out["reduced_vs_full"].append({"task": res["label"], "layers": sel.layer + 1, "neurons": len(sel.neurons),
                                           "full_seconds": full_s, "reduced_seconds": red_s,
                                           "speedup": full_s / red_s})
    chosen = sorted({len(r["model"].reduced_sets_[0].neurons) for r in results})
    grid = sorted({10, 30, 100, 300, 1000, X.shape[1]} | set(chosen))
    out["probe_cost"] = probe_cost(n_classes, [k for k in grid if k <= X.shape[1]], len(X), cfg.epochs, cfg.seed)
    out["chosen_features"] = chosen
    y = np.random.default_rng(cfg.seed).integers(0, n_classes, len(X))  # time depends on shapes, not labels
    out["stages_by_tokens"] = stages_by_tokens(X, widths, full, sentences, cfg.unit, y, n_classes, cfg.epochs)
    tokens = [r["tokens"] for r in out["stages_by_tokens"]]
    out["linear_fits"] = {stage: linear_fit(tokens, [r[f"{stage}_seconds"] for r in out["stages_by_tokens"]])
                          for stage in ("extraction", "clustering", "ranking")}
    mlflow.log_dict(out, "timing/timing.json")
    for r in out["reduced_vs_full"]:
        mlflow.log_metric(f"speedup_{r['task']}", r["speedup"])
    for name, fig in figures.timing_figures(out, f"{cfg.model}, {cfg.corpus}").items():
        mlflow.log_figure(fig, f"figures/{name}.png")
        figures.close(fig)
    return out
