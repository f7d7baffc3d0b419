"""Activation heatmaps over text (the paper's Figure 6): one row per neuron, one cell per word.

Colours diverge at zero (blue negative, white zero, red positive). Each cell is as wide
as its word, and a sentence wraps onto a new block of rows when its line would pass
``line_chars`` characters. matplotlib (Agg); :func:`save` writes SVG and PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle

CMAP = "RdBu_r"
SCALES = ("neuron", "global")
CHAR_INCH = 0.085  # width of one character cell at the cell font size
ROW_INCH = 0.26


def cell_widths(words: Sequence[str], min_chars: int = 3, pad: int = 2) -> np.ndarray:
    """Width of each word's cell in characters."""
    return np.array([max(len(w), min_chars) + pad for w in words], dtype=float)


def wrap(words: Sequence[str], line_chars: int) -> list[tuple[int, int]]:
    """``(start, stop)`` word ranges of the lines a sentence wraps into (at least one word per line)."""
    widths = cell_widths(words)
    lines, start, used = [], 0, 0.0
    for i, w in enumerate(widths):
        if i > start and used + w > line_chars:
            lines.append((start, i))
            start, used = i, 0.0
        used += w
    lines.append((start, len(words)))
    return lines


def scaled(values: Sequence[np.ndarray], scale: str = "neuron") -> tuple[list[np.ndarray], float]:
    """Values divided by the largest |value| of their neuron (``neuron``) or of all (``global``).

    Returns the scaled ``[neurons x words]`` arrays (in [-1, 1]) and the global divisor
    (1.0 for ``neuron``); the inputs are not modified.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {SCALES}")
    stacked = np.abs(np.concatenate([np.asarray(v, dtype=np.float64) for v in values], axis=1))
    if scale == "neuron":
        peak = stacked.max(axis=1, keepdims=True)
        peak[peak == 0] = 1.0
        return [np.asarray(v, dtype=np.float64) / peak for v in values], 1.0
    peak = float(stacked.max()) or 1.0
    return [np.asarray(v, dtype=np.float64) / peak for v in values], peak


def activation_heatmap(sentences: Sequence[Sequence[str]], values: Sequence[np.ndarray], neurons: Sequence[str],
                       title: str = "", line_chars: int = 90, scale: str = "neuron",
                       sentence_titles: Sequence[str] | None = None):
    """Draw neurons' activations over sentences.

    Parameters
    ----------
    sentences : sequence of sequence of str
        The words of each sentence.
    values : sequence of numpy.ndarray
        Per sentence, ``[neurons x words]`` activations (same neuron order in all).
    neurons : sequence of str
        Row labels (e.g. ``"L3 n42"``).
    line_chars : int
        Wrap a sentence when its cells pass this many characters.
    scale : {"neuron", "global"}
        Colour scale: each neuron by its own largest |activation| over the shown words
        (compares words within a neuron, the default), or one scale for all.
    sentence_titles : sequence of str, optional
        A caption above each sentence.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if len(sentences) != len(values):
        raise ValueError("one value array per sentence is needed")
    for words, v in zip(sentences, values):
        if np.shape(v) != (len(neurons), len(words)):
            raise ValueError(f"values of shape {np.shape(v)} do not match {len(neurons)} neurons x {len(words)} words")
    shown, peak = scaled(values, scale)
    cmap = plt.get_cmap(CMAP)
    label_chars = max(len(n) for n in neurons) + 2
    R = len(neurons)
    blocks = []  # (sentence index, caption or None, start, stop)
    for s, words in enumerate(sentences):
        for j, (a, b) in enumerate(wrap(words, line_chars)):
            caption = (sentence_titles[s] if sentence_titles else None) if j == 0 else None
            blocks.append((s, caption, a, b))
    rows_total = sum(R + 0.6 + (0.9 if caption else 0.0) for _, caption, _, _ in blocks)
    width_chars = label_chars + line_chars
    fig = plt.figure(figsize=(width_chars * CHAR_INCH + 0.4, rows_total * ROW_INCH + 1.4 + (0.3 if title else 0)))
    ax = fig.add_axes((0.01, 0.95 / fig.get_figheight(), 0.98, 1 - (1.2 + (0.3 if title else 0)) / fig.get_figheight()))
    y = 0.0
    for s, caption, a, b in blocks:
        words = sentences[s]
        if caption:
            ax.text(0, y + 0.45, caption, ha="left", va="center", fontsize=8, style="italic", color="#444")
            y += 0.9
        x0 = np.concatenate([[0.0], np.cumsum(cell_widths(words[a:b]))]) + label_chars
        for i in range(R):
            ax.text(label_chars - 1, y + i + 0.5, neurons[i], ha="right", va="center", fontsize=7, family="monospace")
            for k, w in enumerate(words[a:b]):
                v = shown[s][i, a + k]
                ax.add_patch(Rectangle((x0[k], y + i), x0[k + 1] - x0[k], 1, facecolor=cmap((v + 1) / 2),
                                       edgecolor="white", linewidth=0.6))
                ax.text((x0[k] + x0[k + 1]) / 2, y + i + 0.5, w, ha="center", va="center", fontsize=7,
                        family="monospace", color="white" if abs(v) > 0.6 else "black")
        y += R + 0.6
    ax.set_xlim(0, width_chars)
    ax.set_ylim(y, 0)
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.12 / fig.get_figheight(), va="top")
    cax = fig.add_axes((0.35, 0.5 / fig.get_figheight(), 0.3, 0.12 / fig.get_figheight()))
    mappable = plt.cm.ScalarMappable(norm=Normalize(-peak, peak), cmap=cmap)
    bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
    bar.ax.tick_params(labelsize=6)
    bar.set_label("activation / max |activation| of the neuron" if scale == "neuron" else "activation", fontsize=7)
    return fig


def save(fig, stem: str | Path, dpi: int = 110) -> list[Path]:
    """Write ``<stem>.svg`` and ``<stem>.png``; return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".svg"), stem.with_suffix(".png")]
    fig.savefig(paths[0])
    fig.savefig(paths[1], dpi=dpi)
    return paths


def close(fig) -> None:
    """Free a figure's memory."""
    plt.close(fig)


__all__ = ["activation_heatmap", "cell_widths", "close", "save", "scaled", "wrap"]
