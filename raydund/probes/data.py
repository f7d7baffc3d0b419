"""Probe data: activations of all layers ``X [tokens x neurons]`` and aligned labels ``y``.

Rows are ordered by (sentence_id, word_id), the order of :meth:`Lake.layer_matrix`, and
the labels of the corpus table are aligned to them by the same keys.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pyarrow as pa

from raydund.errors import UserError
from raydund.lake import Lake, corpus_table_name


@dataclasses.dataclass
class TaskData:
    """One split of a probing task.

    Attributes
    ----------
    X : numpy.ndarray
        ``[tokens x neurons]`` float32, layers side by side (layer 0 first).
    labels : numpy.ndarray
        The label of every row (strings, or floats for regression).
    words : numpy.ndarray
        The word of every row (control tasks map word types to labels).
    widths : tuple of int
        Neurons per layer.
    """

    X: np.ndarray | None  # None where the activations are held by layer-block workers
    labels: np.ndarray
    words: np.ndarray
    widths: tuple[int, ...]

    def take(self, rows) -> TaskData:
        """The rows ``rows`` (indices, a mask or a slice) of every field."""
        return TaskData(None if self.X is None else self.X[rows], self.labels[rows], self.words[rows], self.widths)


def held_out_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """The seeded ``fraction`` of ``n`` train rows held out as dev (the paper's GLUE dev; probes and fine-tuning)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(n, dtype=bool)
    held[rng.permutation(n)[: int(round(fraction * n))]] = True
    return held


#: Columns of a corpus table that are not labels.
NOT_LABELS = ("split", "sentence_id", "words", "words_b")


def check_labels(lake: Lake, corpus: str, labels) -> None:
    """Every task label is a column of the corpus table: read from its schema, before any activation.

    Parameters
    ----------
    lake : Lake
    corpus : str
        An ingested corpus.
    labels : iterable of str
        The label columns a job will read.

    Raises
    ------
    UserError
        A label the corpus lacks; the message names the label columns it has.
    """
    columns = [field.name for field in lake.table(corpus_table_name(corpus)).schema().fields]
    have = [c for c in columns if c not in NOT_LABELS]
    if not have:
        raise UserError(f"corpus {corpus!r} has no labels (unlabelled text): probes and transfer need a "
                        f"labelled corpus; similarity and cluster run on it")
    for label in labels:
        if label not in have:
            raise UserError(f"corpus {corpus!r} has no label column {label!r}; "
                            f"its label columns: {', '.join(have) or 'none'}")


def load_task(lake: Lake, model: str, corpus: str, split: str, label: str, unit: str = "word",
              activations: bool = True) -> TaskData:
    """Activations of every layer and the ``label`` column of the corpus, aligned row by row.

    With ``activations=False`` only the labels, words and widths are read (``X`` is None):
    what a driver needs when the activations are read by layer-block workers instead
    (:mod:`raydund.probes.shards`).
    """
    check_labels(lake, corpus, [label])  # before a layer is read
    n_layers = int(lake.scan("activations").filter(
        (pl.col("model") == model) & (pl.col("corpus") == corpus) & (pl.col("split") == split)
        & (pl.col("unit") == unit)).select(pl.col("layer").max()).collect().item() or -1) + 1
    if n_layers == 0:
        raise UserError(f"no activations for {model} {corpus}/{split} ({unit}); run `raydund extract` first")
    if activations:
        X, keys, widths = read_layers(lake, model, corpus, split, list(range(n_layers)), unit)
    else:
        from raydund.memory import activation_shape

        X, keys, widths = None, lake.layer_keys(model, corpus, split, 0, unit), \
            activation_shape(lake, model, corpus, split, unit)[1]
    corpus_frame = pl.from_arrow(lake.read_corpus(corpus, split))
    if label not in corpus_frame.columns:
        raise UserError(f"corpus {corpus!r} has no label {label!r}; columns: {', '.join(corpus_frame.columns)}")
    key_frame = pl.from_arrow(keys)
    if unit != "cls":  # per-word units: word, mlp, attn
        tokens = (corpus_frame.select("sentence_id", "words", label).explode(["words", label])
                  .with_columns(pl.int_range(pl.len()).over("sentence_id").cast(pl.Int32).alias("word_id")))
        aligned = key_frame.join(tokens, on=["sentence_id", "word_id"], how="left", maintain_order="left")
    else:
        aligned = key_frame.join(corpus_frame.select("sentence_id", "words", label), on="sentence_id",
                                 how="left", maintain_order="left").with_columns(pl.col("words").list.join(" "))
    if aligned[label].null_count():
        raise UserError(f"{aligned[label].null_count()} activation rows have no {label!r} label in {corpus}/{split}")
    return TaskData(X, aligned[label].to_numpy(), aligned["words"].to_numpy(), tuple(widths))


def read_layers(lake: Lake, model: str, corpus: str, split: str, layers: list[int], unit: str = "word"
                ) -> tuple[np.ndarray, pa.Table, list[int]]:
    """``layers`` of one split side by side as ``X [T x sum of widths]`` float32, with the row keys and widths.

    Memory: every layer is copied into one preallocated float32 matrix as it is read (no
    list of layers beside an hstack of them); layers of different widths fall back to hstack.
    """
    mats, keys, out, widths = [], None, None, []
    for i, layer in enumerate(layers):
        X, k = lake.layer_matrix(model, corpus, split, layer, unit)
        keys = keys or k
        widths.append(X.shape[1])
        if i == 0:
            out = np.empty((len(X), X.shape[1] * len(layers)), dtype=np.float32)
        if out is not None and X.shape == (len(out), widths[0]):
            out[:, i * widths[0] : (i + 1) * widths[0]] = X
            mats.append(None)
        else:
            if out is not None:  # widths differ: collect the layers copied so far back
                mats = [out[:, j * widths[0] : (j + 1) * widths[0]].copy() for j in range(i)]
                out = None
            mats.append(X)
        del X
    return (out if out is not None else np.hstack(mats)), keys, widths


def encode(labels: np.ndarray, classes: list) -> np.ndarray:
    """Class ids of ``labels`` in ``classes``; -1 for a label outside them."""
    index = {c: i for i, c in enumerate(classes)}
    values, inverse = np.unique(np.asarray(labels), return_inverse=True)  # look up each distinct label once
    return np.array([index.get(v, -1) for v in values.tolist()], dtype=np.int64)[inverse.reshape(-1)]


def control_labels(words: np.ndarray, labels: np.ndarray, seed: int = 0, vocabulary: dict | None = None):
    """Hewitt & Liang control task: every word type gets one label, drawn from the label distribution.

    Returns the control labels and the word -> label map (pass it back in for dev/test so a
    word keeps its label; unseen words draw a fresh one).
    """
    rng = np.random.default_rng(seed)
    values, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    vocabulary = dict(vocabulary or {})
    out = np.empty(len(words), dtype=object)
    for i, w in enumerate(words):
        if w not in vocabulary:
            vocabulary[w] = values[rng.choice(len(values), p=p)]
        out[i] = vocabulary[w]
    return out, vocabulary


def layer_masks(widths: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """Masks of the layer-wise analysis: each layer, the prefixes 0..l, and the oracle (all).

    In this order every layer is read by two runs of consecutive probes (itself, and the
    prefixes from it on with the oracle), which is what a :class:`~raydund.probes.model.Plan`
    turns into products.
    """
    off = np.concatenate([[0], np.cumsum(widths)])
    N, L = int(off[-1]), len(widths)
    masks, names = [], []
    for l in range(L):
        m = np.zeros(N, bool)
        m[off[l] : off[l + 1]] = True
        masks.append(m)
        names.append(f"layer {l}")
    for l in range(L - 1):
        m = np.zeros(N, bool)
        m[: off[l + 1]] = True
        masks.append(m)
        names.append(f"layers 0-{l}")
    masks.append(np.ones(N, bool))
    names.append("oracle")
    return np.stack(masks), names
