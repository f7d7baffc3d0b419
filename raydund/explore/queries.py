"""Looking at neurons: top words, label association, clusters, rankings, heatmaps, a browser.

Every question is a polars query over the lakehouse whose filters name the partition
columns (model, corpus, split, unit, layer), so only the files of the asked-for slice
are read:

``top_words``
    the word types a neuron responds to. Scores follow NeuroX's ``get_top_words``:
    each token's activation is z-scored over the split (population std), the score of a
    type is the mean ``|z|`` of its tokens divided by the largest such mean, and types
    scoring at most ``min_score`` (NeuroX: 0.1) are dropped. Counts and the mean
    activation of every type come with it; ``sort="high"``/``"low"`` ranks by the mean
    activation instead.
``label_neurons`` / ``neuron_labels``
    class-mean differences: ``(mean over tokens of the class - mean over the other
    tokens) / std of the neuron``, for every neuron against one label value, or for one
    neuron against every value.
``cluster_of``
    the members of a neuron's correlation cluster at a threshold, from ONE completed
    clustering run (table ``clusters`` at the snapshot it recorded), their layers,
    pairwise Pearson r from the similarity run that clustering read
    (``neuron_correlation``) and ``neuron_ranks``: where each member sits in each
    task's ranking (``neuron_rankings`` of the task's latest probe run). Result tables
    are never read as "current rows" (:mod:`raydund.lake.runs`): two splits, seeds or
    variants never mix.
``sentence_activations``
    activations of chosen neurons over chosen sentences, for
    :func:`raydund.report.heatmap.activation_heatmap`.
``build_browser``
    a bounded export of all of it into one static HTML page (``raydund.report.browser``).

Data convention: ``X [tokens x neurons]``; a neuron is ``(layer, index within layer)``;
``position`` is its index on the stacked axis of all layers (layer 0 first).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp

from raydund.lake import runs
from raydund.errors import UserError
from raydund.lake import Lake, corpus_table_name, decode_half, table_identifier
from raydund.report import sources

log = logging.getLogger(__name__)

#: NeuroX's ``MIN_THRESHOLD``: types scoring at most this share of the best are negligible.
MIN_SCORE = 0.1
SORTS = ("score", "high", "low")
RANKINGS = "neuron_rankings"
CLUSTERS = "clusters"
CORRELATION = "neuron_correlation"


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


def _check_neurons(neurons: Sequence[int], width: int, layer: int) -> None:
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
        _check_neurons(neurons, width, layer)
        cols = [pl.col("vector").list.get(int(n)).alias(f"n{int(n)}") for n in neurons]
        return frame.select(*keys, *cols)
    bits = frame["vector_bits"].to_arrow()
    width = int(frame["vector_bits"].bin.size().min()) // 2
    _check_neurons(neurons, width, layer)
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


# -- top words --------------------------------------------------------------------------
def word_scores(frame: pl.DataFrame | pl.LazyFrame, value: str = "act") -> pl.DataFrame:
    """Per word type: ``count``, ``mean`` activation, ``mean_z`` and the NeuroX ``score``.

    ``score`` is the mean ``|z|`` of the type's tokens (z over all tokens, population
    std) divided by the largest mean ``|z|`` of any type, as in NeuroX's ``get_top_words``.
    """
    act = pl.col(value)
    z = (act - act.mean()) / act.std(ddof=0)
    return (frame.lazy().with_columns(z.alias("_z"))
            .group_by("word").agg(pl.len().alias("count"), act.mean().alias("mean"),
                                  pl.col("_z").mean().alias("mean_z"), pl.col("_z").abs().mean().alias("score"))
            .with_columns(pl.col("score") / pl.col("score").max())
            .collect())


def select_top(scores: pl.DataFrame, top_k: int = 10, min_count: int = 1, min_score: float = MIN_SCORE,
               sort: str = "score") -> pl.DataFrame:
    """Keep types with ``count >= min_count`` and ``score > min_score``, best ``top_k`` first (0: all).

    ``sort``: ``score`` (NeuroX), ``high`` (highest mean activation) or ``low`` (lowest).
    """
    if sort not in SORTS:
        raise UserError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    key, descending = {"score": ("score", True), "high": ("mean", True), "low": ("mean", False)}[sort]
    out = (scores.filter((pl.col("count") >= min_count) & (pl.col("score") > min_score))
           .sort([key, "word"], descending=[descending, False], nulls_last=True))
    return out.head(top_k) if top_k > 0 else out


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


def type_statistics(X: np.ndarray, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`word_scores` for every neuron of ``X [tokens x neurons]`` at once.

    Returns
    -------
    types : numpy.ndarray
        The word types (sorted).
    counts : numpy.ndarray
        Tokens per type.
    means : numpy.ndarray
        ``[types x neurons]`` mean activation.
    scores : numpy.ndarray
        ``[types x neurons]`` NeuroX score (mean ``|z|`` over the type / its maximum over types).
    """
    types, inverse, counts = np.unique(np.asarray(words, dtype=object).astype(str), return_inverse=True,
                                       return_counts=True)
    X = np.asarray(X, dtype=np.float64)
    std = X.std(axis=0)
    z = np.abs((X - X.mean(axis=0)) / np.where(std > 0, std, np.nan))
    onehot = sp.csr_matrix((np.ones(len(inverse)), (inverse, np.arange(len(inverse)))), shape=(len(types), len(X)))
    means = np.asarray(onehot @ X) / counts[:, None]
    mean_abs_z = np.asarray(onehot @ np.nan_to_num(z)) / counts[:, None]
    peak = mean_abs_z.max(axis=0)
    scores = mean_abs_z / np.where(peak > 0, peak, np.nan)
    return types, counts, means, np.nan_to_num(scores)


def top_types(scores: np.ndarray, counts: np.ndarray, top_k: int, min_count: int = 1,
              min_score: float = MIN_SCORE) -> list[np.ndarray]:
    """Per neuron (column of ``scores``), the indices of its best ``top_k`` types (as :func:`select_top`)."""
    eligible = np.where((counts[:, None] >= min_count) & (scores > min_score), scores, -np.inf)
    order = np.argsort(-eligible, axis=0, kind="stable")[:top_k]
    return [order[:, j][np.isfinite(eligible[order[:, j], j])] for j in range(scores.shape[1])]


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


def class_mean_differences(X: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Per neuron: (mean of the member rows - mean of the others) / std over all rows (0 when constant)."""
    member = np.asarray(member, dtype=bool)
    if member.all() or not member.any():
        raise UserError("a label value must cover some tokens but not all of them")
    std = X.std(axis=0)
    diff = X[member].mean(axis=0) - X[~member].mean(axis=0)
    return np.divide(diff, std, out=np.zeros_like(diff, dtype=np.float64), where=std > 0)


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


# -- clusters and rankings --------------------------------------------------------------
@dataclasses.dataclass
class ClusterView:
    """A neuron's correlation cluster at one threshold.

    Attributes
    ----------
    members : polars.DataFrame
        ``layer, neuron, position, kept, r`` (``r``: Pearson r with the asked neuron).
    r : numpy.ndarray
        ``[members x members]`` Pearson r among the members, in the order of ``members``.
    ranks : polars.DataFrame
        ``layer, neuron, task, ranker, rank, ranked`` of every member in every stored ranking.
    sources : list of dict
        The completed runs read (:func:`raydund.report.sources.describe`): cluster,
        similarity, probes.
    """

    layer: int
    neuron: int
    threshold: float
    cluster_id: int
    members: pl.DataFrame
    r: np.ndarray
    ranks: pl.DataFrame
    sources: list = dataclasses.field(default_factory=list)


def cluster_run(lake: Lake, where: Slice, variant: str = "all", representative: str | None = None,
                seed: int | None = None) -> runs.Run:
    """The latest completed clustering run of a slice (one representative rule, one seed).

    ``representative`` and ``seed`` narrow the choice; left out, any of them matches.
    A :class:`UserError` when there is none.
    """
    want = {k: v for k, v in (("representative", representative), ("seed", seed)) if v is not None}
    run = runs.latest(lake, "cluster", where.model, where.corpus, CLUSTERS, split=where.split, unit=where.unit,
                      variant=variant, **want)
    if run is None:
        asked = "".join(f", {k} {v}" for k, v in want.items())
        raise UserError(f"no clusters for {where.model} {where.corpus}/{where.split} ({where.unit}, {variant}"
                        f"{asked}); run `raydund cluster` first")
    return run


def similarity_run(lake: Lake, where: Slice, variant: str = "all", cluster: runs.Run | None = None) -> runs.Run:
    """The similarity run whose correlations to read.

    With ``cluster``: the run that clustering read (so r and the clusters agree), else
    the latest completed similarity run of the slice. A :class:`UserError` when there is none.
    """
    source = (cluster.inputs.get("similarity_run") if cluster is not None else None)
    if source:
        found = [r for r in runs.completed(lake, "similarity", where.model, where.corpus) if r.run_id == source]
        if found:
            return found[0]
    run = runs.latest(lake, "similarity", where.model, where.corpus, CORRELATION, split=where.split, unit=where.unit,
                      variant=variant)
    if run is None:
        raise UserError(f"no correlations for {where.model} {where.corpus}/{where.split} ({where.unit}, {variant}); "
                        "run `raydund similarity` first")
    return run


def _cluster_rows(lake: Lake, run: runs.Run, columns: tuple[str, ...] = ("*",)) -> pl.DataFrame:
    """The rows of ``clusters`` that one clustering run wrote, at its snapshot."""
    return sources.read(lake, run, CLUSTERS, columns=columns)


def thresholds(lake: Lake, where: Slice, variant: str = "all", representative: str | None = None,
               seed: int | None = None) -> list[float]:
    """The clustering thresholds of the latest clustering run of a slice."""
    run = cluster_run(lake, where, variant, representative, seed)
    return sorted(_cluster_rows(lake, run, ("threshold",))["threshold"].unique().to_list())


def correlations(lake: Lake, where: Slice, positions: Sequence[int], variant: str = "all",
                 run: runs.Run | None = None) -> np.ndarray:
    """Rows of the stored Pearson r for the given stacked positions: ``[len(positions) x neurons]``.

    Read from ``run`` (default: the latest completed similarity run of the slice).
    """
    run = run or similarity_run(lake, where, variant)
    frame = sources.read(lake, run, CORRELATION, {"position": [int(p) for p in positions]}, ("position", "r"))
    index = {p: i for i, p in enumerate(frame["position"].to_list())}
    missing = [p for p in positions if int(p) not in index]
    if missing:
        raise UserError(f"no correlations for position(s) {missing[:5]} of {where.model} {where.corpus}/{where.split}")
    rows = np.array(frame["r"].to_list(), dtype=np.float64)
    return rows[[index[int(p)] for p in positions]]


def cluster_of(lake: Lake, model: str, corpus: str, layer: int, neuron: int, threshold: float, *,
               split: str = "dev", unit: str = "word", representative: str | None = None,
               seed: int | None = None, variant: str = "all") -> ClusterView:
    """The members of neuron (layer, neuron)'s cluster at ``threshold``, their r and task ranks.

    Clusters come from ONE clustering run (:func:`cluster_run`), r from the similarity
    run it read, ranks from the latest probe run of each task; ``sources`` names them.
    """
    where = Slice(model, corpus, split, unit)
    run = cluster_run(lake, where, variant, representative, seed)
    rows = _cluster_rows(lake, run, ("threshold", "layer", "neuron", "position", "cluster_id", "kept"))
    rows = rows.filter((pl.col("threshold") - threshold).abs() < 1e-6).drop("threshold")
    if rows.height == 0:
        have = ", ".join(f"{t:g}" for t in thresholds(lake, where, variant, representative, seed))
        raise UserError(f"no clustering at threshold {threshold:g} for {model} {corpus}/{split} (thresholds: {have})")
    me = rows.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron))
    if me.height == 0:
        check_layer(lake, where, layer)
        width = int(rows.filter(pl.col("layer") == layer)["neuron"].max() or -1) + 1
        _check_neurons([neuron], max(width, layer_width(lake, where, layer)), layer)
        raise UserError(f"neuron {neuron} of layer {layer} is constant in {corpus}/{split}: it is in no cluster")
    cluster_id = int(me["cluster_id"][0])
    members = rows.filter(pl.col("cluster_id") == cluster_id).sort("layer", "neuron").drop("cluster_id")
    positions = members["position"].to_list()
    sim = similarity_run(lake, where, variant, cluster=run)
    r_rows = correlations(lake, where, positions, variant, run=sim)
    r = r_rows[:, positions]
    own = positions.index(int(me["position"][0]))
    members = members.with_columns(pl.Series("r", r[own]))
    probes = ranking_runs(lake, model, corpus, unit)
    used = [sources.describe(run, [CLUSTERS]), sources.describe(sim, [CORRELATION]),
            *(sources.describe(p, [RANKINGS]) for p in _distinct(probes.values()))]
    return ClusterView(int(layer), int(neuron), float(threshold), cluster_id, members, r,
                       neuron_ranks(lake, model, corpus, members.select("layer", "neuron"), unit=unit), used)


def _distinct(items) -> list:
    """Runs in first-seen order without repeats (one probe run may hold several tasks)."""
    seen, out = set(), []
    for run in items:
        if run.run_id not in seen:
            seen.add(run.run_id)
            out.append(run)
    return out


def _tasks(run: runs.Run) -> list[str]:
    task = run.scope.get("task")
    return [] if task is None else [str(t) for t in (task if isinstance(task, list) else [task])]


def ranking_runs(lake: Lake, model: str, corpus: str, unit: str = "word") -> dict[str, runs.Run]:
    """Task -> the latest completed probe run of that task and unit that wrote ``neuron_rankings``."""
    out: dict[str, runs.Run] = {}
    for run in runs.completed(lake, "probes", model, corpus):  # oldest first: later runs win
        if run.covers({"unit": unit}) and table_identifier(RANKINGS) in run.outputs:
            for task in _tasks(run):
                out[task] = run
    return dict(sorted(out.items()))


def rankings(lake: Lake, model: str, corpus: str, unit: str = "word") -> pl.LazyFrame:
    """``task, ranker, rank, layer, neuron`` of every task's latest probe run (empty without probe runs)."""
    schema = {"task": pl.String, "ranker": pl.String, "rank": pl.Int32, "layer": pl.Int32, "neuron": pl.Int32}
    parts = [sources.read(lake, run, RANKINGS, {"task": task}, tuple(schema)).cast(schema)
             for task, run in ranking_runs(lake, model, corpus, unit).items()]
    return pl.concat(parts).lazy() if parts else pl.LazyFrame(schema=schema)


def neuron_ranks(lake: Lake, model: str, corpus: str, neurons: pl.DataFrame, unit: str = "word") -> pl.DataFrame:
    """Where each neuron (``layer, neuron`` rows) sits in every task's ranking; ``ranked``: ranking length."""
    ranks = rankings(lake, model, corpus, unit)
    sizes = ranks.group_by("task", "ranker").agg(pl.len().cast(pl.Int64).alias("ranked"))
    wanted = neurons.select(pl.col("layer").cast(pl.Int32), pl.col("neuron").cast(pl.Int32)).lazy()
    return (wanted.join(ranks, on=["layer", "neuron"]).join(sizes, on=["task", "ranker"])
            .sort("layer", "neuron", "task", "ranker").collect())


def task_top_neurons(lake: Lake, model: str, corpus: str, task: str, ranker: str = "lca", k: int = 10,
                     unit: str = "word") -> list[tuple[int, int]]:
    """The ``k`` best-ranked (layer, neuron) of a task's stored ranking."""
    ranks = rankings(lake, model, corpus, unit).filter((pl.col("task") == task) & (pl.col("ranker") == ranker))
    top = ranks.sort("rank").head(k).collect()
    if top.height == 0:
        have = rankings(lake, model, corpus, unit).select("task", "ranker").unique().sort("task", "ranker").collect()
        known = ", ".join(f"{t}/{r}" for t, r in have.iter_rows()) or "none; run `raydund probe` first"
        raise UserError(f"no {ranker!r} ranking for task {task!r} of {model} {corpus} (rankings: {known})")
    return list(zip(top["layer"].to_list(), top["neuron"].to_list()))


# -- heatmaps ---------------------------------------------------------------------------
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


# -- the browser ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BrowserConfig:
    """What the neuron browser exports (bounded, so the page stays small).

    Attributes
    ----------
    top_k : int
        Top words kept per neuron.
    min_count, min_score : int, float
        Thresholds of :func:`select_top` (a type must be seen ``min_count`` times).
    sentences : int
        Sample sentences (seeded) with ``min_words..max_words`` words for the heatmaps.
    correlated : int
        Most correlated neurons listed per neuron.
    threshold : float
        Clustering threshold selected when the page opens.
    """

    top_k: int = 10
    min_count: int = 5
    min_score: float = MIN_SCORE
    sentences: int = 3
    min_words: int = 5
    max_words: int = 25
    correlated: int = 8
    threshold: float = 0.3
    seed: int = 0


def _top_lists(X: np.ndarray, words: Sequence[str], cfg: BrowserConfig, vocab: dict[str, int]) -> list[list]:
    types, counts, means, scores = type_statistics(X, words)
    out = []
    for j, best in enumerate(top_types(scores, counts, cfg.top_k, cfg.min_count, cfg.min_score)):
        out.append([[vocab.setdefault(str(types[t]), len(vocab)), round(float(scores[t, j]), 3),
                     round(float(means[t, j]), 3), int(counts[t])] for t in best])
    return out


def _heat(values: np.ndarray) -> tuple[list[list[int]], list[float]]:
    """``[neurons x words]`` -> ints in -99..99 scaled by each neuron's peak |value|, and the peaks."""
    peak = np.abs(values).max(axis=1)
    q = np.rint(99 * values / np.where(peak > 0, peak, 1.0)[:, None]).astype(int)
    return q.tolist(), [float(f"{p:.4g}") for p in peak]


def _cluster_export(lake: Lake, run: runs.Run | None, N: int, cfg: BrowserConfig) -> dict:
    """Cluster ids and representative flags at every threshold of ONE clustering run."""
    if run is None:
        return {"thresholds": [], "clusters": [], "kept": [], "default_threshold": 0}
    rows = _cluster_rows(lake, run, ("threshold", "position", "cluster_id", "kept"))
    ts = sorted(rows["threshold"].unique().to_list())
    clusters, kept = [], []
    for t in ts:
        part = rows.filter(pl.col("threshold") == t)
        ids, flags = np.zeros(N, dtype=int), np.zeros(N, dtype=int)
        ids[part["position"].to_numpy()] = part["cluster_id"].to_numpy()
        flags[part["position"].to_numpy()] = part["kept"].cast(pl.Int8).to_numpy()
        clusters.append(ids.tolist())
        kept.append("".join(map(str, flags)))
    default = int(np.argmin([abs(t - cfg.threshold) for t in ts])) if ts else 0
    return {"thresholds": [round(float(t), 6) for t in ts], "clusters": clusters, "kept": kept,
            "default_threshold": default}


def _correlated(lake: Lake, run: runs.Run | None, N: int, k: int) -> list[list]:
    """Per position, its ``k`` most correlated neurons ``[position, r]`` from one similarity run."""
    if run is None or k <= 0:
        return []
    frame = sources.read(lake, run, CORRELATION, columns=("position", "r")).sort("position")
    if frame.height != N:
        log.info("browser without correlations: run %s has %d rows for %d neurons", run.run_id, frame.height, N)
        return []
    out = []
    for p, row in zip(frame["position"].to_list(), frame["r"].to_list()):
        r = np.nan_to_num(np.asarray(row, dtype=np.float64))
        r[p] = 0.0
        best = np.argsort(-np.abs(r), kind="stable")[:k]
        out.append([[int(b), round(float(r[b]), 3)] for b in best if r[b] != 0])
    return out


def _rank_export(lake: Lake, probes: dict[str, runs.Run], offsets: np.ndarray, N: int) -> list[dict]:
    """Per (task, ranker) of each task's probe run, the rank of every position (0: not ranked)."""
    out = []
    for task, run in probes.items():
        ranks = sources.read(lake, run, RANKINGS, {"task": task}, ("task", "ranker", "rank", "layer", "neuron"))
        for (ranker,), part in ranks.group_by("ranker", maintain_order=True):
            by_position = np.zeros(N, dtype=int)
            by_position[offsets[part["layer"].to_numpy()] + part["neuron"].to_numpy()] = part["rank"].to_numpy()
            out.append({"task": task, "ranker": ranker, "ranked": part.height, "rank": by_position.tolist()})
    return sorted(out, key=lambda d: (d["task"], d["ranker"]))


def browser_runs(lake: Lake, where: Slice, variant: str = "all", representative: str | None = None,
                 cluster_seed: int | None = None) -> tuple[runs.Run | None, runs.Run | None, dict[str, runs.Run]]:
    """The runs a browser page reads: clustering, the similarity run it read, each task's probe run.

    A missing clustering or similarity run is ``None`` (the page says so), unless a
    representative rule or seed was asked for: then there must be one.
    """
    cluster = sim = None
    try:
        cluster = cluster_run(lake, where, variant, representative, cluster_seed)
    except UserError as exc:
        if representative is not None or cluster_seed is not None:
            raise
        log.info("browser without clusters: %s", exc)
    try:
        sim = similarity_run(lake, where, variant, cluster)
    except UserError as exc:
        log.info("browser without correlations: %s", exc)
    return cluster, sim, ranking_runs(lake, where.model, where.corpus, where.unit)


def browser_data(lake: Lake, model: str, corpus: str, split: str = "dev", unit: str = "word",
                 cfg: BrowserConfig | None = None, *, variant: str = "all", representative: str | None = None,
                 cluster_seed: int | None = None) -> dict:
    """Everything the neuron browser shows, for every neuron of every layer (layout: ``raydund.report.browser``).

    Result tables are read only through completed runs (:func:`browser_runs`): clusters
    from ONE clustering run of (split, unit, variant[, representative, seed]), r from the
    similarity run it read, rankings from each task's latest probe run; ``sources``
    names each run and the snapshot it was read at.
    """
    cfg = cfg or BrowserConfig()
    where = Slice(model, corpus, split, unit)
    cluster, sim, probes = browser_runs(lake, where, variant, representative, cluster_seed)
    layers = layers_of(lake, where)
    sample = sample_sentences(lake, where, cfg.sentences, cfg.min_words, cfg.max_words, cfg.seed)
    vocab: dict[str, int] = {}
    top, widths = [], []
    heat = {sid: ([], [], None) for sid in sample}
    for layer in layers:
        X, keys = lake.layer_matrix(model, corpus, split, layer, unit)
        words = keys.column("word").to_pylist()
        top.append(_top_lists(X, words, cfg, vocab))
        widths.append(int(X.shape[1]))
        sids = keys.column("sentence_id").to_numpy()
        for sid in sample:
            rows = np.flatnonzero(sids == sid)
            q, peak = _heat(X[rows].T.astype(np.float64))
            heat[sid][0].append(q)
            heat[sid][1].append(peak)
            if heat[sid][2] is None:
                heat[sid] = (heat[sid][0], heat[sid][1], [w if w is not None else "" for w in np.asarray(words)[rows]])
        log.info("browser: layer %d exported", layer)
    offsets = np.concatenate([[0], np.cumsum(widths)])
    N = int(offsets[-1])
    return {
        "model": model, "corpus": corpus, "split": split, "unit": unit, "widths": widths,
        "min_count": cfg.min_count, "top_k": cfg.top_k, "vocab": sorted(vocab, key=vocab.get), "top": top,
        "sentences": [{"id": int(sid), "words": heat[sid][2], "heat": heat[sid][0], "peak": heat[sid][1]}
                      for sid in sample],
        **_cluster_export(lake, cluster, N, cfg),
        "correlated": _correlated(lake, sim, N, cfg.correlated),
        "rankings": _rank_export(lake, probes, offsets, N),
        "variant": variant, "sources": _browser_sources(cluster, sim, probes),
    }


def _browser_sources(cluster: runs.Run | None, sim: runs.Run | None, probes: dict[str, runs.Run]) -> list[dict]:
    """:func:`raydund.report.sources.describe` of every run a browser page read."""
    used = [] if cluster is None else [sources.describe(cluster, [CLUSTERS])]
    used += [] if sim is None else [sources.describe(sim, [CORRELATION])]
    return used + [sources.describe(run, [RANKINGS]) for run in _distinct(probes.values())]


def build_browser(settings, model: str, corpus: str, split: str = "dev", unit: str = "word",
                  cfg: BrowserConfig | None = None, track: bool = True, *, variant: str = "all",
                  representative: str | None = None, cluster_seed: int | None = None):
    """Write the neuron browser to ``report_dir(model, corpus)/browser/index.html``; log it to MLflow.

    The runs it reads (see :func:`browser_data`) are on the page and in the MLflow params.

    Returns
    -------
    pathlib.Path
        The page.
    """
    from raydund import tracking  # noqa: PLC0415
    from raydund.report import browser  # noqa: PLC0415

    cfg = cfg or BrowserConfig()
    lake = Lake(settings)
    data = browser_data(lake, model, corpus, split, unit, cfg, variant=variant, representative=representative,
                        cluster_seed=cluster_seed)
    page = browser.write(data, settings.report_dir(model, corpus) / "browser")
    log.info("neuron browser written to %s (%.1f MB)", page, page.stat().st_size / 1e6)
    if track:
        params = {**dataclasses.asdict(cfg), "model": model, "corpus": corpus, "split": split, "unit": unit,
                  "activations_snapshot_id": lake.activations().current_snapshot().snapshot_id,
                  **{f"{src['stage']}_run_id": src["run_id"] for src in data["sources"] if src["stage"] != "probes"}}
        with tracking.job_run(settings, tracking.experiment_name(model, corpus), f"neuron browser {split}", params,
                              tags={"raydund.stage": "browser"}):
            mlflow = tracking.configure(settings)
            mlflow.log_metrics({"neurons": sum(data["widths"]), "page_bytes": page.stat().st_size})
            mlflow.log_artifacts(str(page.parent), artifact_path="browser")
    return page


def parse_neuron(text: str) -> tuple[int, int]:
    """``"3:42"`` -> ``(3, 42)``."""
    try:
        layer, neuron = text.split(":")
        return int(layer), int(neuron)
    except ValueError:
        raise UserError(f"a neuron is LAYER:INDEX (e.g. 3:42), got {text!r}") from None


__all__ = [
    "MIN_SCORE", "BrowserConfig", "ClusterView", "Slice", "browser_data", "browser_runs", "build_browser",
    "class_mean_differences", "cluster_of", "cluster_run", "correlations", "label_neurons", "layer_width",
    "layers_of", "neuron_columns", "neuron_labels", "neuron_ranks", "parse_neuron", "partitions", "ranking_runs",
    "rankings", "sample_sentences", "select_top", "sentence_activations", "similarity_run", "task_top_neurons",
    "thresholds", "token_labels", "top_types", "top_words", "type_statistics", "word_scores",
]
