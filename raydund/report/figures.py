"""Figures of the paper, drawn with matplotlib (Agg, no display needed).

Each function returns a ``matplotlib.figure.Figure``; callers log it to MLflow
(``mlflow.log_figure``) or save it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

#: Up to this many layers a heatmap writes each cell's value; deeper models (SmolLM2: 31) get a colour bar only.
ANNOTATE_LAYERS = 14


def cka_heatmap(matrix: np.ndarray, title: str):
    """Figure 1: layer x layer CKA, layer 0 = embeddings (values written in the cells of shallow models)."""
    L = matrix.shape[0]
    side = 0.5 * L if L <= ANNOTATE_LAYERS else 4.5
    fig, ax = plt.subplots(figsize=(1.0 + side, 0.6 + side))
    im = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, float(np.nanmin(matrix))), vmax=1.0, origin="lower")
    if L <= ANNOTATE_LAYERS:
        for i in range(L):
            for j in range(L):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] < 0.6 else "black")
    ticks = range(0, L, 1 if L <= ANNOTATE_LAYERS else 5)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10 if len(title) <= 40 else 8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def threshold_curve(summary: list[dict], title: str):
    """Figure 2: share of neurons kept against the clustering threshold."""
    t = [row["threshold"] for row in summary]
    kept = [100.0 * row["neurons_kept"] / row["neurons_total"] for row in summary]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(t, kept, marker="o")
    ax.set_xlabel("clustering threshold (distance 1 - |r|)")
    ax.set_ylabel("% of neurons kept")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def composition_bars(summary: list[dict], spans: tuple[str, ...], title: str):
    """Figure 3: share of multi-neuron clusters by the layer distance of their members."""
    t = [row["threshold"] for row in summary]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = np.zeros(len(t))
    for span in spans:
        values = np.array([100.0 * row[span] for row in summary])
        ax.bar([f"{x:.1f}" for x in t], values, bottom=bottom, label=span)
        bottom += values
    ax.set_xlabel("clustering threshold")
    ax.set_ylabel("% of clusters")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    """Free a figure's memory."""
    plt.close(fig)


def layerwise(rows: list[dict], key: str, title: str):
    """Figure 4: dev score of each layer alone and of the prefixes 0..l, against the oracle."""
    layers = [r for r in rows if r["probe"].startswith("layer ")]
    prefixes = [r for r in rows if r["probe"].startswith("layers 0-")]
    oracle = next(r for r in rows if r["probe"] == "oracle")["dev"][key]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(layers)), [100 * r["dev"][key] for r in layers], color="#8ab", label="layer alone")
    ax.plot(range(len(prefixes) + 1), [100 * r["dev"][key] for r in prefixes] + [100 * oracle],
            marker="o", color="#c53", label="layers 0..l")
    ax.axhline(100 * oracle, color="black", linestyle="--", linewidth=1, label="oracle (all layers)")
    ax.axhline(99 * oracle, color="grey", linestyle=":", linewidth=1, label="99% of oracle")
    low = min(100 * r["dev"][key] for r in layers)
    high = max([100 * oracle] + [100 * r["dev"][key] for r in layers + prefixes])
    ax.set_ylim(max(0, low - 5), high + 2)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(f"dev {key} (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def per_class(rows: list[dict], title: str):
    """Figures 7-9: per-class dev accuracy of each layer's probe."""
    layers = [r for r in rows if r["probe"].startswith("layer ")]
    classes = sorted({c for r in layers for c in r["dev"].get("per_class", {})})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for c in classes:
        ax.plot(range(len(layers)), [100 * r["dev"]["per_class"].get(c, np.nan) for r in layers], marker=".", label=c)
    ax.set_xlabel("layer")
    ax.set_ylabel("dev accuracy (%)")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def minimal_set(rows: list[dict], key: str, oracle: float, title: str):
    """Dev score of fresh probes on the top-k ranked neurons, against the oracle."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["k"] for r in rows], [100 * r["dev"][key] for r in rows], marker="o")
    ax.axhline(100 * oracle, color="black", linestyle="--", linewidth=1, label="oracle")
    ax.axhline(97 * oracle, color="grey", linestyle=":", linewidth=1, label="97% of oracle")
    ax.set_xscale("log")
    ax.set_xlabel("top-k neurons (LCA ranking)")
    ax.set_ylabel(f"dev {key} (%)")
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def ccfs_sweep(rows: list[dict], task: str):
    """Neurons kept against test score for every (LS, CCFS) threshold pair of one task."""
    final = [r for r in rows if r["task"] == task and r["stage"] == "ccfs"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([r["neurons"] for r in final], [100 * r["test"] for r in final])
    for r in final:
        ax.annotate(f"{r['ls_threshold']:g}/{r['ccfs_threshold']:g}", (r["neurons"], 100 * r["test"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("neurons kept (LS + CCFS)")
    ax.set_ylabel("test score (%)")
    ax.set_title(f"{task}: threshold sweep (LS / CCFS)")
    fig.tight_layout()
    return fig


def timing_figures(timing: dict, title: str) -> dict:
    """Figures 5 and 10-14 from :func:`raydund.transfer.timing.run_timing`'s measurements."""
    out = {}
    rows = timing["forward_by_layers"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar([r["layers"] for r in rows], [1e3 * r["seconds_per_sentence"] for r in rows], color="#8ab")
    for r in timing.get("reduced_vs_full", []):
        ax.axvline(r["layers"], color="#c53", linestyle=":", linewidth=1)
    ax.set_xlabel("layers kept, embeddings included (red: LS choices)")
    ax.set_ylabel("forward ms per sentence")
    ax.set_title(f"{title}: forward time by depth")
    fig.tight_layout()
    out["timing_forward_by_layers"] = fig

    rows = timing["probe_cost"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["features"] for r in rows], [r["train_seconds"] for r in rows], marker="o", label="training")
    ax.plot([r["features"] for r in rows], [r["inference_seconds"] for r in rows], marker="s", label="inference")
    for k in timing.get("chosen_features", []):
        ax.axvline(k, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("features (dotted: CCFS choices)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7)
    ax.set_title(f"{title}: probe cost by features")
    fig.tight_layout()
    out["timing_probe_cost"] = fig

    rows = timing["stages_by_tokens"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for stage in ("extraction", "clustering", "ranking"):
        fit = timing["linear_fits"][stage]
        ax.plot([r["tokens"] for r in rows], [r[f"{stage}_seconds"] for r in rows], marker="o",
                label=f"{stage} (R² {fit['r2']:.3f})")
    ax.set_xlabel("tokens")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7)
    ax.set_title(f"{title}: stage time by tokens")
    fig.tight_layout()
    out["timing_stages_by_tokens"] = fig
    return out


def threshold_curves(summaries: dict[str, list[dict]], title: str):
    """Figure 2 for several models in one plot: % of neurons kept against the clustering threshold."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, summary in summaries.items():
        total = summary[0]["neurons_total"] if summary else 0
        ax.plot([r["threshold"] for r in summary], [100.0 * r["neurons_kept"] / r["neurons_total"] for r in summary],
                marker="o", label=f"{name} ({total:,} neurons)")
    ax.set_xlabel("clustering threshold (distance 1 - |r|)")
    ax.set_ylabel("% of neurons kept")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def layerwise_depth(rows: dict[str, list[dict]], key: str, title: str):
    """Figure 4 for several models of different depth: each layer's probe on relative depth (layer / last layer).

    One line per model: the dev score of each layer's own probe; a dashed line of the
    model's colour is its oracle (all layers).
    """
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, model_rows in rows.items():
        layers = sorted((r for r in model_rows if r["probe"].startswith("layer ")), key=lambda r: int(r["probe"][6:]))
        depth = np.array([int(r["probe"][6:]) for r in layers], dtype=float)
        line, = ax.plot(depth / max(depth.max(), 1.0), [100 * r["dev"][key] for r in layers], marker=".",
                        label=f"{name} ({len(layers)} layers)")
        oracle = next((r for r in model_rows if r["probe"] == "oracle"), None)
        if oracle is not None:
            ax.axhline(100 * oracle["dev"][key], color=line.get_color(), linestyle="--", linewidth=1)
    ax.set_xlabel("relative depth (0 = embeddings, 1 = last layer)")
    ax.set_ylabel(f"dev {key} (%), one layer")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def adjacent_similarity(matrices: dict[str, np.ndarray], title: str):
    """Similarity of each layer with the next (``M[l, l + 1]``), one line per variant (robust CKA)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, M in matrices.items():
        M = np.asarray(M, dtype=float)
        ax.plot(np.arange(len(M) - 1), np.diagonal(M, 1), marker=".", label=name)
    ax.set_xlabel("layer l (similarity of l and l + 1)")
    ax.set_ylabel("similarity")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax.set_title(title)
    fig.tight_layout()
    return fig


#: Axis labels of the pruning metrics (``raydund.prune``'s ``prune_results.metric``).
PRUNE_METRICS = {"ppl": "held-out perplexity", "sst2": "SST-2 zero-shot accuracy (%)",
                 "pos": "POS probe accuracy (%)"}


def prune_curves(rows: list[dict], title: str, default: str | None = None):
    """Blocks removed against each metric (a panel per metric), one line per criterion from the full model (n = 0).

    ``rows``: ``{criterion, n, blocks, <metric>: value}``; the full model is criterion
    ``none`` at n = 0. Accuracies are drawn in %, perplexity on a log scale.
    """
    return _removal_curves(rows, "criterion", "n", PRUNE_METRICS, "blocks removed", title, default=default,
                           y_scale={m: 100.0 for m in PRUNE_METRICS if m != "ppl"})


#: Axis labels of the width-pruning panels (``raydund.prune``'s ``prune_width_results.metric``).
WIDTH_METRICS = {"ppl": "held-out perplexity", "ms_per_token": "forward time per token (ms)"}


def width_curves(rows: list[dict], title: str):
    """Fraction of MLP neurons removed against perplexity and forward time, one line per method.

    ``rows``: ``{method, fraction, <metric>: value}``; the full model is method ``none``
    at fraction 0, where every line starts. Perplexity is drawn on a log scale.
    """
    return _removal_curves(rows, "method", "fraction", WIDTH_METRICS, "MLP neurons removed (%)", title, x_scale=100.0)


def _removal_curves(rows: list[dict], key: str, amount: str, labels: dict, xlabel: str, title: str,
                    default: str | None = None, x_scale: float = 1.0, y_scale: dict | None = None):
    """A panel per metric of ``labels`` present in ``rows``, a line per value of ``rows[key]`` (the
    default one drawn thicker), each from the full model (``key`` ``none``) at ``amount`` 0;
    perplexity on a log scale."""
    full = next((r for r in rows if r[key] == "none"), {})
    metrics = [m for m in labels if any(m in r for r in rows)]
    names = sorted({r[key] for r in rows} - {"none"})
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.2 * max(len(metrics), 1), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        scale = (y_scale or {}).get(m, 1.0)
        for name in names:
            pts = sorted((r[amount], r[m]) for r in rows if r[key] == name and m in r)
            if m in full:
                pts = [(0, full[m])] + pts
            ax.plot([x_scale * p[0] for p in pts], [scale * p[1] for p in pts], marker="o",
                    linewidth=2.5 if name == default else 1.2, label=name + (" (default)" if name == default else ""))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(labels[m])
        if m == "ppl":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
