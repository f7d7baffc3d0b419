"""The task-specific redundancy job: lake -> probe banks on Ray -> lake table + MLflow runs.

With ``workers`` >= 2 (the default wherever Ray has 2 CPUs and the model 2 layers) the
layers are split into blocks, one per :class:`~raydund.probes.shards.LayerShard` actor,
each reading its block of train/dev/test from the lakehouse; every bank of probes
(layer-wise, control task, minimal-set search, clustering thresholds) is trained by
all of them in step, and no process, the driver included, holds every layer. With
``workers=1`` the driver reads all layers, puts them in Ray's object store once, and the
analyses run as parallel Ray tasks reading them from there without copies.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import polars as pl
import pyarrow as pa

from raydund import tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.lake import ACTIVATIONS, Lake, runs
from raydund.lake.runs import StageRun
from raydund.probes import analysis
from raydund.probes.data import check_labels, held_out_mask, load_task
from raydund.probes.model import primary_metric, resolve_precision
from raydund.probes.settings import ProbeSettings
from raydund.report import figures

log = logging.getLogger(__name__)

PROBE_RESULTS = "probe_results"
NEURON_RANKINGS = "neuron_rankings"


@dataclasses.dataclass(kw_only=True)
class ProbeConfig(ProbeSettings):
    """A probing task and what to run on it; the probe hyperparameters are
    :class:`~raydund.probes.settings.ProbeSettings`' fields (keyword-only, as all of these).

    Attributes
    ----------
    model, corpus : str
        The activations to probe: a model's lake name and an ingested corpus.
    label : str
        The corpus label column (``pos``, ``chunk``, ``upos``, ``semtag``, ``label``).
    unit : str
        ``word`` (per-word vectors), ``cls`` (one per sentence), or the per-word hooked
        units ``mlp`` and ``attn``, as extracted.
    splits : tuple of str
        (train, dev, test). For GLUE-style corpora without a test split, use
        ``("train", "train", "dev")``: 10% of train (seeded) becomes dev, official dev is test.
    redundant_share, keep_share : float
        A layer is redundant at ``redundant_share`` of the oracle (0.99); a minimal set keeps
        ``keep_share`` of it (0.97).
    control : bool
        Also train control-task probes (selectivity).
    cluster_split : str, optional
        Score the clustering sweep of this split (``raydund cluster``) on the task.
    dev_fraction : float
        Share of train held out (seeded) as dev when dev names the train split.
    train_limit : int, optional
        Train on the first N training rows only (the paper uses the first 150k tokens).
    workers : int, optional
        Layer-block actors (see the module docstring); default: Ray's CPUs, at most one per
        layer. 1 reads every layer into the driver.
    """

    model: str
    corpus: str
    label: str
    unit: str = "word"
    splits: tuple[str, str, str] = ("train", "dev", "test")
    redundant_share: float = 0.99
    keep_share: float = 0.97
    control: bool = True
    cluster_split: str | None = None
    dev_fraction: float = 0.1
    train_limit: int | None = None
    workers: int | None = None


def load_splits(lake: Lake, cfg: ProbeConfig, activations: bool = True) -> analysis.Splits:
    """Train/dev/test of the task (dev carved from train when it names the same split)."""
    return plan_splits(lake, cfg, activations)[0]


def plan_splits(lake: Lake, cfg: ProbeConfig, activations: bool = True) -> tuple[analysis.Splits, dict]:
    """The task's splits, and which stored rows make each part: ``{part: (split, rows or None)}``.

    With ``activations=False`` the splits carry labels and words only (layer-block
    workers read the activations from the second value).
    """
    train_name, dev_name, test_name = cfg.splits
    parts = {"train": (train_name, None), "dev": (dev_name, None), "test": (test_name, None)}
    train = load_task(lake, cfg.model, cfg.corpus, train_name, cfg.label, cfg.unit, activations)
    if dev_name == train_name:
        held = held_out_mask(len(train.labels), cfg.dev_fraction, cfg.seed)
        rest, held = np.flatnonzero(~held), np.flatnonzero(held)
        train, dev = train.take(rest), train.take(held)
        parts["train"], parts["dev"] = (train_name, rest), (train_name, held)
    else:
        dev = load_task(lake, cfg.model, cfg.corpus, dev_name, cfg.label, cfg.unit, activations)
    test = load_task(lake, cfg.model, cfg.corpus, test_name, cfg.label, cfg.unit, activations)
    if cfg.train_limit and cfg.train_limit < len(train.labels):
        n = int(cfg.train_limit)
        train = train.take(slice(0, n))
        rows = parts["train"][1]
        parts["train"] = (train_name, np.arange(n) if rows is None else rows[:n])
    return analysis.make_splits(train, dev, test, cfg.task), parts


def _remote(ray, fn, threads: int = 1):
    """Wrap an analysis function as a Ray task that runs torch on ``threads`` threads."""

    def run(*args, **kwargs):
        import torch

        torch.set_num_threads(threads)
        return fn(*args, **kwargs)

    return ray.remote(num_cpus=threads)(run)


def run_probes(cfg: ProbeConfig, settings: Settings) -> dict:
    """Layer-wise probes, control task, rankings, minimal set and clustering sweep for one task."""
    from raydund.extract.job import ensure_ray

    lake = Lake(settings)
    check_labels(lake, cfg.corpus, [cfg.label])  # a mistyped label fails before Ray starts or a layer is read
    ray = ensure_ray()
    start = time.perf_counter()
    workers = probe_workers(cfg, lake, ray)
    check_memory(lake, cfg, workers)  # before a byte is read: a task that cannot fit says so with the numbers
    splits, parts = plan_splits(lake, cfg, activations=workers == 1)
    probe_settings = cfg.settings()
    kept, kept_inputs = _cluster_sets(lake, cfg) if cfg.cluster_split else ({}, {})
    params = {**dataclasses.asdict(cfg), "workers": workers, "splits": ",".join(cfg.splits),
              "activations_snapshot_id": lake.activations().current_snapshot().snapshot_id,
              "train_rows": len(splits.train.labels), "neurons": splits.n_neurons,
              "precision_resolved": resolve_precision(cfg.precision)}  # as the driver's node resolves it
    with tracking.job_run(settings, tracking.experiment_name(cfg.model, cfg.corpus), f"probes {cfg.label}",
                          params, tags={"raydund.stage": "probes", "raydund.task": cfg.label}) as parent:
        if workers == 1:  # all layers in the object store once, independent analyses as parallel Ray tasks
            splits_ref = ray.put(splits)  # read zero-copy by every task ...
            splits = ray.get(splits_ref)  # ... and by the driver: its own copy of X is freed here
            results = _run_analyses(cfg, splits, probe_settings, kept, ray.get,
                                    lambda fn, *args: _remote(ray, fn).remote(splits_ref, *args))
        else:  # one analysis after another, each bank on all layer-block actors
            from raydund.probes import shards

            with shards.held_by(splits, settings, cfg.model, cfg.corpus, cfg.unit, parts, workers) as splits:
                results = _run_analyses(cfg, splits, probe_settings, kept, lambda done: done,
                                        lambda fn, *args: fn(splits, *args))
        results["seconds"] = time.perf_counter() - start
        stage = StageRun(lake, "probes", cfg.model, cfg.corpus, {"task": cfg.label, "unit": cfg.unit},
                         inputs={ACTIVATIONS: params["activations_snapshot_id"], **kept_inputs})
        props = {"mlflow.run_id": parent.info.run_id}
        stage.replace(PROBE_RESULTS, results_table(cfg, results), ("model", "corpus"), props)
        stage.replace(NEURON_RANKINGS, rankings_table(cfg, results["rankings"], splits.train.widths),
                      ("model", "corpus"), props)
        stage.complete(parent.info.run_id)
        # the lake holds the result now: tracking failures from here on are spooled, never raised
        track = tracking.Tracker(settings, parent.info.run_id)
        track.tags(stage.tags())
        _track(track, cfg, splits, results)
        results["raydund_run_id"] = stage.run_id
    results["run_id"] = parent.info.run_id
    return results


def probe_workers(cfg: ProbeConfig, lake: Lake, ray) -> int:
    """Layer-block actors for the job: ``cfg.workers``, else Ray's CPUs; at most one per layer."""
    from raydund import memory

    layers = len(memory.activation_shape(lake, cfg.model, cfg.corpus, cfg.splits[0], cfg.unit)[1])
    wanted = cfg.workers or int(ray.cluster_resources().get("CPU", 1))
    if wanted < 1:
        raise UserError(f"--workers must be at least 1, got {wanted}")
    return max(1, min(int(wanted), layers))


def _run_analyses(cfg: ProbeConfig, splits, probe_settings, kept: dict, get, submit) -> dict:
    """Layer-wise, control task and clustering sweep, then the minimal set (it needs the oracle's ranking).

    ``submit(fn, *args)`` starts ``fn(splits, *args)`` and ``get`` waits for what it
    returned: run at once in this process, or as parallel Ray tasks.
    """
    layer_job = submit(analysis.layerwise, probe_settings, cfg.redundant_share)
    control_job = None
    if cfg.control and cfg.task == "classification" and cfg.unit != "cls":
        control_job = submit(analysis.control_task, probe_settings, cfg.seed)
    reduced_job = submit(analysis.reduced_sets, probe_settings, kept) if kept else None
    layer = get(layer_job)
    oracle_dev = next(r for r in layer["rows"] if r["probe"] == "oracle")["dev"][primary_metric(cfg.task)]
    ranks = analysis.rankings(splits, layer["oracle_weights"])
    minimal_job = submit(analysis.minimal_set, probe_settings, ranks["lca"], oracle_dev, cfg.keep_share)
    control = None if control_job is None else analysis.selectivity_rows(layer["rows"], get(control_job))
    return {"layerwise": layer["rows"], "control": control, "minimal": get(minimal_job),
            "reduced": get(reduced_job) if reduced_job is not None else [], "rankings": ranks}


def check_memory(lake: Lake, cfg: ProbeConfig, workers: int = 1, object_store: bool | None = None) -> None:
    """Raise UserError when the task's arrays and probe banks would not fit (:mod:`raydund.memory`).

    ``object_store``: whether the driver puts the arrays in Ray's object store (default: the
    one-worker path does; layer-block workers and in-process banks do not).
    """
    from raydund import memory

    names = dict.fromkeys(cfg.splits)  # dev carved from train counts once
    shapes = {name: memory.activation_shape(lake, cfg.model, cfg.corpus, name, cfg.unit) for name in names}
    train_name = cfg.splits[0]
    tokens, widths = shapes[train_name]
    if cfg.train_limit:
        tokens = min(tokens, int(cfg.train_limit))
    eval_tokens = sum(t for name, (t, _) in shapes.items() if name != train_name)
    classes = 1
    if cfg.task == "classification":
        labels = pl.from_arrow(lake.read_corpus(cfg.corpus, train_name).select([cfg.label]))[cfg.label]
        classes = labels.explode().n_unique() if labels.dtype == pl.List else labels.n_unique()
    tasks = 1 + int(cfg.control) + int(bool(cfg.cluster_split))
    memory.check(memory.probe_plan(sum(widths), len(widths), tokens, eval_tokens, classes,
                                   tasks if workers == 1 else 1,
                                   object_store=workers == 1 if object_store is None else object_store))


def _cluster_sets(lake: Lake, cfg: ProbeConfig) -> tuple[dict[float, np.ndarray], dict]:
    """Kept neurons (positions on the stacked axis) per threshold of the latest clustering sweep.

    Returns the sets and the lineage (cluster run id, clusters snapshot) for the run row.
    """
    run = runs.latest(lake, "cluster", cfg.model, cfg.corpus, "clusters", split=cfg.cluster_split, unit=cfg.unit,
                      variant="all")
    if run is None:
        raise UserError(f"no clusters for {cfg.model} {cfg.corpus}/{cfg.cluster_split}; run `raydund cluster` first")
    frame = pl.from_arrow(runs.read(lake, run, "clusters", selected_fields=("threshold", "position", "kept"))
                          .to_arrow()).filter(pl.col("kept"))
    sets = {t: g.sort("position")["position"].to_numpy() for (t,), g in frame.group_by("threshold")}
    return sets, {"cluster_run": run.run_id, "raydund.clusters": run.snapshot("clusters")}


def _track(track: tracking.Tracker, cfg: ProbeConfig, splits: analysis.Splits, results: dict) -> None:
    """Child runs per layer probe, per k and per threshold; metrics, tables and figures."""
    key = primary_metric(cfg.task)
    for kind, rows in (("layer", results["layerwise"]), ("k", results["minimal"]["rows"]),
                       ("threshold", results["reduced"])):
        for row in rows:
            track.child(f"{cfg.label} {row['probe']}", {"probe": row["probe"], "analysis": kind, "task": cfg.label},
                        {f"dev_{key}": row["dev"][key], f"test_{key}": row["test"][key],
                         **({"dev_macro_f1": row["dev"]["macro_f1"]} if "macro_f1" in row["dev"] else {})})
    oracle = next(r for r in results["layerwise"] if r["probe"] == "oracle")
    minimal = results["minimal"]
    track.metrics({
        f"oracle_dev_{key}": oracle["dev"][key], f"oracle_test_{key}": oracle["test"][key],
        "redundant_layers": sum(r["redundant"] for r in results["layerwise"]),
        "minimal_set_neurons": minimal["k"] or -1, "seconds": results["seconds"],
    })
    track.json({"lca": results["rankings"]["lca"].tolist(), "cutoffs": results["rankings"]["lca_cutoffs"],
                "probeless": results["rankings"].get("probeless", np.array([])).tolist(),
                "minimal_set": np.asarray(minimal["neurons"]).tolist()}, "rankings.json")
    title = f"{cfg.model}, {cfg.corpus} {cfg.label}"
    track.figure(figures.layerwise(results["layerwise"], key, title), "figures/layerwise.png")
    if splits.classes is not None and len(splits.classes) <= 10:
        track.figure(figures.per_class(results["layerwise"], f"{title}: per class"), "figures/layerwise_per_class.png")
    track.figure(figures.minimal_set(minimal["rows"], key, oracle["dev"][key], title), "figures/minimal_set.png")


def results_table(cfg: ProbeConfig, results: dict) -> pa.Table:
    """Long table: (task, analysis, probe, layer, k, threshold, split, metric, value)."""
    rows = []

    def add(analysis_name, row, layer=None, k=None, threshold=None):
        for split in ("dev", "test"):
            for metric, value in row[split].items():
                if isinstance(value, dict):
                    for cls, v in value.items():
                        rows.append((analysis_name, row["probe"], layer, k, threshold, split, f"{metric}:{cls}", v))
                else:
                    rows.append((analysis_name, row["probe"], layer, k, threshold, split, metric, value))

    for row in results["layerwise"]:
        layer = int(row["probe"].split()[1]) if row["probe"].startswith("layer ") else None
        add("layerwise", row, layer=layer)
    for row in results["control"] or []:
        layer = int(row["probe"].split()[1])
        for split in ("dev", "test"):
            rows.append(("control", row["probe"], layer, None, None, split, "accuracy", row[f"control_{split}"]))
            rows.append(("control", row["probe"], layer, None, None, split, "selectivity", row[f"selectivity_{split}"]))
    for row in results["minimal"]["rows"]:
        add("minimal_set", row, k=row["k"])
    for row in results["reduced"]:
        add("cc_threshold", row, threshold=row["threshold"])
    cols = list(zip(*rows)) if rows else [[]] * 8
    n = len(rows)
    return pa.table({
        "model": [cfg.model] * n, "corpus": [cfg.corpus] * n, "task": [cfg.label] * n, "unit": [cfg.unit] * n,
        "analysis": list(cols[0]), "probe": list(cols[1]), "layer": pa.array(cols[2], pa.int32()),
        "k": pa.array(cols[3], pa.int32()), "threshold": pa.array(cols[4], pa.float64()),
        "split": list(cols[5]), "metric": list(cols[6]), "value": pa.array(cols[7], pa.float64()),
    })


def rankings_table(cfg: ProbeConfig, ranks: dict, widths: tuple[int, ...]) -> pa.Table:
    """One row per (ranker, ranked neuron): ``task, ranker, rank`` (1 = most important), ``layer, neuron``.

    ``ranks`` maps a ranker name to an ordering of positions on the stacked neuron axis
    (entries that are not orderings, such as ``lca_cutoffs``, are skipped).
    """
    layer_of = np.repeat(np.arange(len(widths)), widths).astype(np.int32)
    within = np.concatenate([np.arange(w) for w in widths]).astype(np.int32)
    parts = []
    for ranker, ordering in ranks.items():
        if not isinstance(ordering, np.ndarray):
            continue
        n = len(ordering)
        parts.append(pa.table({
            "model": [cfg.model] * n, "corpus": [cfg.corpus] * n, "task": [cfg.label] * n, "unit": [cfg.unit] * n,
            "ranker": [ranker] * n, "rank": pa.array(np.arange(1, n + 1, dtype=np.int32)),
            "layer": pa.array(layer_of[ordering]), "neuron": pa.array(within[ordering]),
        }))
    return pa.concat_tables(parts)
