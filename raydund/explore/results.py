"""Clusters, correlations and task rankings of neurons, read through completed runs.

``cluster_of``
    the members of a neuron's correlation cluster at a threshold, from ONE completed
    clustering run (table ``clusters`` at the snapshot it recorded), their layers,
    pairwise Pearson r from the similarity run that clustering read
    (``neuron_correlation``) and ``neuron_ranks``: where each member sits in each
    task's ranking (``neuron_rankings`` of the task's latest probe run).
``rankings`` / ``task_top_neurons``
    every task's stored ranking; a task's best-ranked neurons.

Result tables are never read as "current rows" (:mod:`raydund.lake.runs`): two splits,
seeds or variants never mix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import polars as pl

from raydund.errors import UserError
from raydund.explore.queries import Slice, check_layer, check_neurons, layer_width
from raydund.lake import Lake, runs, table_identifier
from raydund.report import sources

RANKINGS = "neuron_rankings"
CLUSTERS = "clusters"
CORRELATION = "neuron_correlation"


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
    from raydund.general.job import correlation_run

    source = cluster.inputs.get("similarity_run") if cluster is not None else None
    found = runs.find(lake, source, "similarity") if source else None
    return found or correlation_run(lake, where.model, where.corpus, where.split, where.unit, variant)


def cluster_rows(lake: Lake, run: runs.Run, columns: tuple[str, ...] = ("*",)) -> pl.DataFrame:
    """The rows of ``clusters`` that one clustering run wrote, at its snapshot."""
    return sources.read(lake, run, CLUSTERS, columns=columns)


def thresholds(lake: Lake, where: Slice, variant: str = "all", representative: str | None = None,
               seed: int | None = None) -> list[float]:
    """The clustering thresholds of the latest clustering run of a slice."""
    run = cluster_run(lake, where, variant, representative, seed)
    return sorted(cluster_rows(lake, run, ("threshold",))["threshold"].unique().to_list())


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
    rows = cluster_rows(lake, run, ("threshold", "layer", "neuron", "position", "cluster_id", "kept"))
    rows = rows.filter((pl.col("threshold") - threshold).abs() < 1e-6).drop("threshold")
    if rows.height == 0:
        have = ", ".join(f"{t:g}" for t in thresholds(lake, where, variant, representative, seed))
        raise UserError(f"no clustering at threshold {threshold:g} for {model} {corpus}/{split} (thresholds: {have})")
    me = rows.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron))
    if me.height == 0:
        check_layer(lake, where, layer)
        width = int(rows.filter(pl.col("layer") == layer)["neuron"].max() or -1) + 1
        check_neurons([neuron], max(width, layer_width(lake, where, layer)), layer)
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
            *(sources.describe(p, [RANKINGS]) for p in distinct_runs(probes.values()))]
    return ClusterView(int(layer), int(neuron), float(threshold), cluster_id, members, r,
                       neuron_ranks(lake, model, corpus, members.select("layer", "neuron"), unit=unit), used)


def distinct_runs(items) -> list:
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


__all__ = ["CLUSTERS", "CORRELATION", "RANKINGS", "ClusterView", "cluster_of", "cluster_rows", "cluster_run",
           "correlations", "distinct_runs", "neuron_ranks", "ranking_runs", "rankings", "similarity_run",
           "task_top_neurons", "thresholds"]
