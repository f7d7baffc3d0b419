"""Figures of the paper, drawn with matplotlib (Agg, no display needed).

Each function returns a ``matplotlib.figure.Figure``; callers log it to MLflow
(``mlflow.log_figure``) or save it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def cka_heatmap(matrix: np.ndarray, title: str):
    """Figure 1: layer x layer CKA, layer 0 = embeddings."""
    L = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * L, 0.6 + 0.5 * L))
    im = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, float(np.nanmin(matrix))), vmax=1.0, origin="lower")
    for i in range(L):
        for j in range(L):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] < 0.6 else "black")
    ax.set_xticks(range(L))
    ax.set_yticks(range(L))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("layer")
    ax.set_title(title)
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
    ax.set_ylim(max(0, low - 5), 100 * oracle + 2)
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
