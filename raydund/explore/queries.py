"""Questions about single neurons, answered from the activation table (lake reads, no Ray).

Every question is a polars query over the lakehouse whose filters name the partition
columns (model, corpus, split, unit, layer), so only the files of the asked-for slice
are read:

``top_words``
    the word types a neuron responds to (:func:`raydund.explore.statistics.word_scores`,
    NeuroX's ``get_top_words``). Counts and the mean activation of every type come with
    it; ``sort="high"``/``"low"`` ranks by the mean activation instead.
``label_neurons`` / ``neuron_labels``
    class-mean differences: ``(mean over tokens of the class - mean over the other
    tokens) / std of the neuron``, for every neuron against one label value, or for one
    neuron against every value.
``sentence_activations``
    activations of chosen neurons over chosen sentences, for
    :func:`raydund.explore.heatmap.activation_heatmap`.

Clusters, correlations and rankings are result tables, read through completed runs:
:mod:`raydund.explore.results`.

Data convention: ``X [tokens x neurons]``; a neuron is ``(layer, index within layer)``;
``position`` is its index on the stacked axis of all layers (layer 0 first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import polars as pl

from raydund.errors import UserError
from raydund.explore.statistics import MIN_SCORE, class_mean_differences, select_top, word_scores
from raydund.lake import Lake, corpus_table_name, decode_half


@dataclasses.dataclass(frozen=True)
class Slice:
    """One (model, corpus, split, unit) of the activation table."""

    model: str
    corpus: str
    split: str = "dev"
    unit: str = "word"

    def where(self, layer: int | None = None) -> pl.Expr:
        """Filter on the partition columns (polars pushes it down to the Iceberg scan)."""
        expr = ((pl.col("model") == self.model) & (pl.col("corpus") == self.corpus)
                & (pl.col("split") == self.split) & (pl.col("unit") == self.unit))
        return expr if layer is None else expr & (pl.col("layer") == int(layer))


# -- what the lake holds ----------------------------------------------------------------
def partitions(lake: Lake) -> pl.DataFrame:
    """Rows per (model, corpus, split, unit, layer) of the activation table, from metadata only."""
    if "raydund.activations" not in lake.table_names():
        raise UserError("the lake holds no activations yet; run `raydund extract` first")
    parts = pl.from_arrow(lake.activations().inspect.partitions().select(["partition", "record_count"]))
    return parts.unnest("partition").rename({"record_count": "rows"}).sort("model", "corpus", "split", "unit", "layer")


def layers_of(lake: Lake, where: Slice) -> list[int]:
    """The layers stored for a slice; a :class:`UserError` naming what exists otherwise."""
    parts = partitions(lake)
    for column in ("model", "corpus", "split", "unit"):
        value = getattr(where, column)
        have = sorted(set(parts[column].to_list()))
        if value not in have:
            raise UserError(f"unknown {column} {value!r} in the activation table (have: {', '.join(map(str, have))})")
        parts = parts.filter(pl.col(column) == value)
    return sorted(parts["layer"].to_list())


def check_layer(lake: Lake, where: Slice, layer: int) -> None:
    """Refuse a layer the slice does not have."""
    layers = layers_of(lake, where)
    if int(layer) not in layers:
        raise UserError(f"layer {layer} is out of range for {where.model} {where.corpus}/{where.split} "
                        f"(layers {layers[0]}..{layers[-1]})")


def check_neurons(neurons: Sequence[int], width: int, layer: int) -> None:
    """Refuse neuron indices outside ``0..width - 1`` of ``layer``."""
    bad = [n for n in neurons if not 0 <= int(n) < width]
    if bad:
        raise UserError(f"neuron {bad[0]} is out of range for layer {layer} (neurons 0..{width - 1})")


def neuron_columns(lake: Lake, where: Slice, layer: int, neurons: Sequence[int],
                   sentences: Sequence[int] | None = None) -> pl.DataFrame:
    """``sentence_id, word_id, word`` and one column ``n<i>`` per asked neuron, ordered by position.

    Parameters
    ----------
    neurons : sequence of int
        Indices within ``layer``.
    sentences : sequence of int, optional
        Only these sentence ids (default: the whole split).
    """
    check_layer(lake, where, layer)
    lazy = lake.scan("activations").filter(where.where(layer))
    if sentences is not None:
        lazy = lazy.filter(pl.col("sentence_id").is_in([int(s) for s in sentences]))
    keys = ["sentence_id", "word_id", "word"]
    frame = lazy.select(*keys, "dtype", "vector", "vector_bits").sort("sentence_id", "word_id").collect()
    if frame.height == 0:
        raise UserError(f"no activations for sentences {list(sentences or [])} of {where.corpus}/{where.split}")
    dtype = frame["dtype"][0]
    if dtype == "float32":
        width = int(frame["vector"].list.len().min())
        check_neurons(neurons, width, layer)
        cols = [pl.col("vector").list.get(int(n)).alias(f"n{int(n)}") for n in neurons]
        return frame.select(*keys, *cols)
    bits = frame["vector_bits"].to_arrow()
    width = int(frame["vector_bits"].bin.size().min()) // 2
    check_neurons(neurons, width, layer)
    X = decode_half(bits, dtype, width)
    return frame.select(keys).with_columns(
        [pl.Series(f"n{int(n)}", X[:, int(n)]) for n in neurons])


def layer_width(lake: Lake, where: Slice, layer: int) -> int:
    """Neurons in one layer (read from the first vector of the layer)."""
    check_layer(lake, where, layer)
    row = (lake.scan("activations").filter(where.where(layer))
           .select(pl.col("vector").list.len().alias("n"), (pl.col("vector_bits").bin.size() // 2).alias("h"))
           .head(1).collect())
    return int(row["n"][0] if row["n"][0] is not None else row["h"][0])


def top_words(lake: Lake, model: str, corpus: str, layer: int, neuron: int, *, split: str = "dev",
              unit: str = "word", top_k: int = 10, min_count: int = 1, min_score: float = MIN_SCORE,
              sort: str = "score") -> pl.DataFrame:
    """The word types neuron ``neuron`` of ``layer`` responds to most (see :func:`word_scores`).

    Returns
    -------
    polars.DataFrame
        ``word, count, mean, mean_z, score``, best first.
    """
    frame = neuron_columns(lake, Slice(model, corpus, split, unit), layer, [neuron])
    return select_top(word_scores(frame.rename({f"n{int(neuron)}": "act"})), top_k, min_count, min_score, sort)


# -- labels -----------------------------------------------------------------------------
def token_labels(lake: Lake, where: Slice, label: str) -> pl.LazyFrame:
    """``sentence_id, word_id, <label>`` of the corpus table (scalar labels repeat for ``unit=cls``)."""
    table = corpus_table_name(where.corpus)
    if table not in lake.table_names():
        raise UserError(f"corpus {where.corpus!r} is not in the lake; run `raydund ingest {where.corpus}`")
    corpus = lake.scan(table).filter(pl.col("split") == where.split)
    columns = corpus.collect_schema()
    if label not in columns or label in ("split", "sentence_id", "words"):
        known = [c for c in columns if c not in ("split", "sentence_id", "words", "words_b")]
        raise UserError(f"corpus {where.corpus!r} has no label {label!r} (labels: {', '.join(known)})")
    if isinstance(columns[label], pl.List):
        return (corpus.select("sentence_id", label).explode(label)
                .with_columns(pl.int_range(pl.len()).over("sentence_id").cast(pl.Int32).alias("word_id")))
    return corpus.select("sentence_id", pl.col(label).cast(pl.String), pl.lit(-1, pl.Int32).alias("word_id"))


def _aligned_labels(lake: Lake, where: Slice, label: str, keys: pl.DataFrame) -> np.ndarray:
    aligned = keys.select("sentence_id", "word_id").join(
        token_labels(lake, where, label).collect(), on=["sentence_id", "word_id"], how="left", maintain_order="left")
    return aligned[label].cast(pl.String).to_numpy()


def label_neurons(lake: Lake, model: str, corpus: str, label: str, value: str, *, split: str = "dev",
                  unit: str = "word", layers: Sequence[int] | None = None, top_k: int = 10,
                  absolute: bool = False) -> pl.DataFrame:
    """The neurons most associated with one label value (e.g. ``pos == "NN"``), by class-mean difference.

    Returns
    -------
    polars.DataFrame
        ``layer, neuron, score, mean_in, mean_out, count``: highest ``score`` first
        (``absolute``: highest ``|score|``).
    """
    where = Slice(model, corpus, split, unit)
    have = layers_of(lake, where)
    for layer in layers or []:
        check_layer(lake, where, layer)
    parts = []
    member = None
    for layer in (list(layers) if layers else have):
        X, keys = lake.layer_matrix(model, corpus, split, layer, unit)
        if member is None:
            labels = _aligned_labels(lake, where, label, pl.from_arrow(keys))
            if value not in set(labels.tolist()):
                known = sorted({v for v in labels.tolist() if v is not None})
                raise UserError(f"label {label!r} has no value {value!r} in {corpus}/{split} "
                                f"(values: {', '.join(known[:30])}{' ...' if len(known) > 30 else ''})")
            member = labels == value
        score = class_mean_differences(X, member)
        parts.append(pl.DataFrame({
            "layer": np.full(X.shape[1], layer, np.int32), "neuron": np.arange(X.shape[1], dtype=np.int32),
            "score": score, "mean_in": X[member].mean(axis=0), "mean_out": X[~member].mean(axis=0),
            "count": np.full(X.shape[1], int(member.sum()), np.int64)}))
    frame = pl.concat(parts)
    key = pl.col("score").abs() if absolute else pl.col("score")
    frame = frame.sort(key, "layer", "neuron", descending=[True, False, False])
    return frame.head(top_k) if top_k > 0 else frame


def neuron_labels(lake: Lake, model: str, corpus: str, label: str, layer: int, neuron: int, *,
                  split: str = "dev", unit: str = "word", top_k: int = 10, min_count: int = 1) -> pl.DataFrame:
    """The label values most associated with one neuron, by class-mean difference.

    Returns
    -------
    polars.DataFrame
        ``<label>, count, mean, score``: highest ``score`` first, where
        ``score = (mean of the value's tokens - mean of the other tokens) / std``.
    """
    where = Slice(model, corpus, split, unit)
    frame = neuron_columns(lake, where, layer, [neuron]).rename({f"n{int(neuron)}": "act"})
    frame = frame.join(token_labels(lake, where, label).collect(), on=["sentence_id", "word_id"], how="left")
    total, n, std = frame["act"].sum(), frame.height, frame["act"].std(ddof=0)
    out = (frame.group_by(label).agg(pl.len().alias("count"), pl.col("act").sum().alias("_sum"))
           .filter(pl.col("count") >= min_count)
           .with_columns((pl.col("_sum") / pl.col("count")).alias("mean"),
                         ((total - pl.col("_sum")) / (n - pl.col("count"))).alias("_rest"))
           .with_columns(((pl.col("mean") - pl.col("_rest")) / (std if std else float("nan"))).alias("score"))
           .select(label, "count", "mean", "score")
           .sort(["score", label], descending=[True, False], nulls_last=True))
    return out.head(top_k) if top_k > 0 else out


# -- sentences --------------------------------------------------------------------------
def sample_sentences(lake: Lake, where: Slice, count: int = 3, min_words: int = 5, max_words: int = 25,
                     seed: int = 0) -> list[int]:
    """``count`` sentence ids drawn (seeded) among those with ``min_words..max_words`` words."""
    layer = layers_of(lake, where)[0]
    lengths = (lake.scan("activations").filter(where.where(layer)).group_by("sentence_id").agg(pl.len().alias("n"))
               .filter(pl.col("n").is_between(min_words, max_words)).sort("sentence_id").collect())
    if lengths.height == 0:
        raise UserError(f"no sentence of {min_words}..{max_words} words in {where.corpus}/{where.split}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(lengths.height, size=min(count, lengths.height), replace=False)
    return sorted(lengths["sentence_id"].gather(np.sort(chosen)).to_list())


def sentence_activations(lake: Lake, where: Slice, sentences: Sequence[int],
                         neurons: Sequence[tuple[int, int]]) -> tuple[list[list[str]], list[np.ndarray]]:
    """Words of each sentence and ``[neurons x words]`` activations of the asked (layer, neuron) pairs.

    One query per layer involved, each pruned to that layer's files and the sentences.
    """
    by_layer: dict[int, list[int]] = {}
    for layer, neuron in neurons:
        by_layer.setdefault(int(layer), []).append(int(neuron))
    frames = {layer: neuron_columns(lake, where, layer, sorted(set(ns)), sentences) for layer, ns in by_layer.items()}
    first = next(iter(frames.values()))
    missing = sorted(set(map(int, sentences)) - set(first["sentence_id"].to_list()))
    if missing:
        raise UserError(f"sentence id(s) {missing[:5]} not in {where.corpus}/{where.split}")
    words, values = [], []
    for sid in sentences:
        rows = {layer: f.filter(pl.col("sentence_id") == int(sid)) for layer, f in frames.items()}
        words.append([w if w is not None else "" for w in next(iter(rows.values()))["word"].to_list()])
        values.append(np.stack([rows[int(l)][f"n{int(n)}"].to_numpy() for l, n in neurons]).astype(np.float32))
    return words, values


def parse_neuron(text: str) -> tuple[int, int]:
    """``"3:42"`` -> ``(3, 42)``."""
    try:
        layer, neuron = text.split(":")
        return int(layer), int(neuron)
    except ValueError:
        raise UserError(f"a neuron is LAYER:INDEX (e.g. 3:42), got {text!r}") from None


__all__ = ["Slice", "check_layer", "check_neurons", "label_neurons", "layer_width", "layers_of", "neuron_columns",
           "neuron_labels", "parse_neuron", "partitions", "sample_sentences", "sentence_activations",
           "token_labels", "top_words"]
