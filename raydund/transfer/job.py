"""The efficient-transfer job: LS + CCFS per task on Ray, the reduced model registered, timing.

Tasks (labels) of one (model, corpus) are independent: each is a Ray task that reads its
activations and the general-redundancy correlations from the lake and runs the threshold
sweep. The driver then writes the lake table ``transfer_results``, the MLflow runs (a
parent for the job, a child per task, a grandchild per threshold pair), and registers
each task's reduced model (first threshold pair) as an MLflow pyfunc model.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from raydund import faults, tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.general.clustering import DEFAULT_THRESHOLDS
from raydund.general.job import correlation_run, read_correlations
from raydund.lake import ACTIVATIONS, Lake, runs
from raydund.lake.runs import StageRun
from raydund.probes import analysis
from raydund.probes.data import check_labels
from raydund.probes.job import ProbeConfig, plan_splits, probe_workers
from raydund.probes.settings import ProbeSettings, probe_fields
from raydund.report import figures
from raydund.transfer.ccfs import CCFS, Correlations, stage_rows
from raydund.transfer.reduced import log_reduced, save_reduced

log = logging.getLogger(__name__)

TRANSFER_RESULTS = "transfer_results"
#: Registry tag of a reduced model's version: ``pending`` (registered, lake not yet committed),
#: ``committed`` (its transfer run is in the lake) or ``failed`` (the job died).
STATUS_TAG = tracking.STATUS_TAG
#: Alias of the newest committed version of each reduced model (``models:/NAME@current``).
CURRENT_ALIAS = "current"


@dataclasses.dataclass(kw_only=True)
class TransferConfig(ProbeSettings):
    """LS + CCFS on some tasks of one (model, corpus); the probe hyperparameters are
    :class:`~raydund.probes.settings.ProbeSettings`' fields (keyword-only, as all of these).

    Attributes
    ----------
    model, corpus : str
        The activations: a model's lake name and an ingested corpus.
    labels : tuple of str
        Corpus label columns, one task each (``pos``, ``chunk``, ``semtag``, ``label``).
    unit : str
        ``word`` (per-word vectors) or ``cls`` (one per sentence), as extracted.
    splits : tuple of str
        (train, dev, test), as for ``raydund probe``.
    stats_split : str
        The split whose general-redundancy correlations CC restricts (``raydund similarity``).
    train_limit : int, optional
        Train on the first N training rows only (the paper uses the first 150k tokens).
    ls_thresholds, ccfs_thresholds : tuple of float
        Relative losses allowed (0.01 = 1%); every pair is run, the first is registered.
    cluster_thresholds : tuple of float
        Clustering thresholds CC tries on the layers LS kept.
    fs_grid : {"all-neurons", "kept-neurons"}
        FS's top-k grid: the paper's percentages of all the model's neurons (every layer;
        only the k below CC's count, and CC's count), or of the neurons CC kept.
    fs_target : {"cc", "ls"}
        The dev score FS keeps within the CCFS threshold: the CC stage's, the one it refines
        (the paper's), or the LS stage's.
    workers : int, optional
        Layer-block actors training the probes (as ``raydund probe``); 1: one Ray task
        per task, holding all layers.
    register : bool
        Register each task's reduced model (first threshold pair) in MLflow.
    timing : bool
        Also run the timing analysis (:mod:`raydund.transfer.timing`).
    timing_sentences : int
        Sentences the timing analysis runs through the models.
    """

    model: str
    corpus: str
    labels: tuple[str, ...]
    unit: str = "word"
    splits: tuple[str, str, str] = ("train", "dev", "test")
    stats_split: str = "dev"
    train_limit: int | None = None
    ls_thresholds: tuple[float, ...] = (0.01,)
    ccfs_thresholds: tuple[float, ...] = (0.01,)
    cluster_thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    fs_grid: str = "all-neurons"
    fs_target: str = "cc"
    workers: int | None = None
    register: bool = True
    timing: bool = True
    timing_sentences: int = 200

    def probe_config(self, label: str) -> ProbeConfig:
        return ProbeConfig(**probe_fields(self), model=self.model, corpus=self.corpus, label=label, unit=self.unit,
                           splits=self.splits, train_limit=self.train_limit, workers=self.workers)

    def ccfs(self) -> CCFS:
        return CCFS(self.settings(), self.ls_thresholds, self.ccfs_thresholds, self.cluster_thresholds,
                    fs_grid=self.fs_grid, fs_target=self.fs_target)


def fit_task(cfg: TransferConfig, label: str, settings: Settings, similarity: runs.Run, workers: int = 1) -> dict:
    """One task: its splits and the correlations of the ``similarity`` run, then the CCFS sweep.

    With ``workers`` > 1 the activations stay in layer-block actors
    (:mod:`raydund.probes.shards`); this process holds the labels and the correlations.
    """
    from raydund.probes import shards

    lake = Lake(settings)
    model = cfg.ccfs()  # validates the thresholds before any reading
    probe_cfg = cfg.probe_config(label)
    splits, parts = plan_splits(lake, probe_cfg, activations=workers == 1)
    r, layer_of, constant, snap = read_correlations(lake, similarity)
    with shards.held_by(splits, settings, cfg.model, cfg.corpus, cfg.unit, parts, workers) as splits:
        start = time.perf_counter()
        model.fit(splits, Correlations(r, layer_of, constant))
        seconds = time.perf_counter() - start
        predictions = _test_predictions(model, splits)
    return {"label": label, "model": model, "seconds": seconds,
            "classes": splits.classes, "widths": splits.train.widths, "train_rows": len(splits.train.labels),
            "correlation_snapshot_id": snap, "test_predictions": predictions}


def _test_predictions(model: CCFS, splits: analysis.Splits) -> list:
    """The pipeline's test predictions of the registered reduced set (the reduced model must match them)."""
    sel = model.reduced_sets_[0]
    scores = splits.linear_scores("test", sel.neurons, sel.coef, sel.intercept)
    return scores[:, 0].tolist() if splits.classes is None else [splits.classes[i] for i in scores.argmax(1)]


def extraction_run(settings: Settings, model: str, corpus: str, split: str, unit: str) -> dict:
    """The MLflow params of the extraction that wrote (model, corpus, split, unit): source, aggregation."""
    mlflow = tracking.configure(settings)
    exp = mlflow.MlflowClient().get_experiment_by_name(tracking.experiment_name(model, corpus))
    runs = [] if exp is None else mlflow.MlflowClient().search_runs(
        [exp.experiment_id], filter_string=(f"tags.`raydund.stage` = 'extract' and params.split = '{split}' "
                                            f"and params.unit = '{unit}' and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(f"no finished extraction of {model} {corpus}/{split} ({unit}) in MLflow")
    return {"run_id": runs[0].info.run_id, **runs[0].data.params}


def run_transfer(cfg: TransferConfig, settings: Settings) -> dict:
    """LS + CCFS for every label of ``cfg``; returns the table rows, registered models and run ids."""
    from raydund.extract.job import ensure_ray
    from raydund.probes.job import _remote

    cfg.ccfs()  # bad thresholds fail here, before Ray starts
    if not cfg.labels:
        raise UserError("give at least one task label")
    lake = Lake(settings)
    check_labels(lake, cfg.corpus, cfg.labels)  # every task's label, before a layer is read
    source = extraction_run(settings, cfg.model, cfg.corpus, cfg.splits[2], cfg.unit)
    ray = ensure_ray()
    mlflow = tracking.configure(settings)
    params = {**{k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()},
              "activations_snapshot_id": lake.activations().current_snapshot().snapshot_id,
              "extraction_run_id": source["run_id"], "model_source": source.get("model_source", "")}
    similarity_run = correlation_run(lake, cfg.model, cfg.corpus, cfg.stats_split, cfg.unit)  # one run for every task
    workers = probe_workers(cfg.probe_config(cfg.labels[0]), lake, ray)
    if workers == 1:  # small data: every task a Ray task holding all layers
        results = ray.get([_remote(ray, fit_task, threads=1).remote(cfg, label, settings, similarity_run)
                           for label in cfg.labels])
    else:  # task after task, each on layer-block actors
        results = [fit_task(cfg, label, settings, similarity_run, workers) for label in cfg.labels]
    params["workers"] = workers
    stage = StageRun(lake, "transfer", cfg.model, cfg.corpus, transfer_scope(cfg),
                     inputs={ACTIVATIONS: params["activations_snapshot_id"], "similarity_run": similarity_run.run_id})
    rows, registered = [], {}
    with tracking.job_run(settings, tracking.experiment_name(cfg.model, cfg.corpus),
                          f"transfer {','.join(cfg.labels)}", params,
                          tags={"raydund.stage": "transfer", "raydund.run_id": stage.run_id}) as parent:
        settle_versions(mlflow, lake, [registered_name(cfg.model, cfg.corpus, label) for label in cfg.labels])
        try:
            for res in results:
                task_rows, version = _track_task(mlflow, parent, cfg, res, source, settings, stage)
                rows += task_rows
                if version:
                    registered[res["label"]] = version
                    stage.outputs[f"models:/{version[0]}"] = version[1]
                    faults.crash_point("transfer.during_registration")
            timing = None
            if cfg.timing:
                from raydund.transfer.timing import run_timing

                timing = run_timing(cfg, results, source, settings, mlflow)
            stage.replace(TRANSFER_RESULTS, transfer_table(cfg, rows), ("model", "corpus"),
                          {"mlflow.run_id": parent.info.run_id})
            stage.complete(parent.info.run_id)
        except Exception:
            _mark_versions(mlflow, registered.values(), "failed")
            raise
        # the lake holds the result now: tracking failures from here on are spooled, never raised
        track = tracking.Tracker(settings, parent.info.run_id)
        for name, version in registered.values():
            track.model_version(name, version, {STATUS_TAG: "committed"}, alias=CURRENT_ALIAS)
        track.tags(stage.tags())
        track.json(rows, "tables/transfer.json")
        track.text(format_table(rows), "tables/transfer.txt")
    return {"rows": rows, "registered": {k: f"models:/{n}/{v}" for k, (n, v) in registered.items()},
            "run_id": parent.info.run_id, "raydund_run_id": stage.run_id, "timing": timing, "results": results}


def transfer_scope(cfg: TransferConfig) -> dict:
    """The rows one transfer run recomputes: unit, tasks, threshold pairs, splits, FS procedure (the write rule)."""
    return {"unit": cfg.unit, "task": list(cfg.labels), "ls_threshold": [float(t) for t in cfg.ls_thresholds],
            "ccfs_threshold": [float(t) for t in cfg.ccfs_thresholds], "splits": ",".join(cfg.splits),
            "fs_grid": cfg.fs_grid, "fs_target": cfg.fs_target}


def _mark_versions(mlflow, versions, status: str) -> None:
    """Tag registered versions with their status (``failed`` versions are never served as current)."""
    client = mlflow.MlflowClient()
    for name, version in versions:
        try:
            client.set_model_version_tag(name, version, STATUS_TAG, status)
        except Exception as exc:  # noqa: BLE001  (the next transfer job settles it: settle_versions)
            log.warning("could not tag %s version %s %s: %s", name, version, status, exc)


def settle_versions(mlflow, lake: Lake, names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Settle the ``pending`` versions earlier transfer jobs left behind.

    A pending version whose run is in the lake was committed (the job died after its run
    row, before tagging): tag it ``committed``. One whose run never completed belongs to a
    crashed job: tag it ``failed``. Returns both lists.
    """
    done = {r.run_id for r in runs.completed(lake, "transfer")}
    client = mlflow.MlflowClient()
    settled = {"committed": [], "failed": []}
    for name in names:
        try:
            versions = client.search_model_versions(f"name = '{name}'")
        except Exception:  # noqa: BLE001  (no such model yet)
            continue
        for v in versions:
            if v.tags.get(STATUS_TAG) == "pending":
                status = "committed" if v.tags.get("raydund.run_id") in done else "failed"
                settled[status].append((name, str(v.version)))
    for status, versions in settled.items():
        _mark_versions(mlflow, versions, status)
    return settled


def _track_task(mlflow, parent, cfg: TransferConfig, res: dict, source: dict, settings: Settings, stage: StageRun):
    """A child run per task, a grandchild per threshold pair; the reduced model of the first pair.

    The version is registered ``pending``; it becomes ``committed`` (alias ``current``)
    only once the job's run row is in the lake. Returns the rows and (name, version).
    """
    label, model = res["label"], res["model"]
    total = int(sum(res["widths"]))
    exp = parent.info.experiment_id
    rows = []
    with mlflow.start_run(run_name=f"transfer {label}", nested=True, experiment_id=exp) as child:
        mlflow.log_params({"task": label, "train_rows": res["train_rows"],
                           "correlation_snapshot_id": res["correlation_snapshot_id"]})
        mlflow.log_metrics({f"seconds_{k}": v for k, v in model.seconds_.items()})
        for sel in model.reduced_sets_:
            sel_rows = stage_rows(label, sel, total)
            rows += sel_rows
            with mlflow.start_run(run_name=f"ls={sel.ls_threshold} ccfs={sel.ccfs_threshold}", nested=True,
                                  experiment_id=exp):
                mlflow.log_params({"task": label, "ls_threshold": sel.ls_threshold,
                                   "ccfs_threshold": sel.ccfs_threshold, "cc_threshold": sel.cc_threshold})
                mlflow.log_metrics({f"{r['stage']}_{m}": r[m] for r in sel_rows for m in ("dev", "test", "neurons")}
                                   | {"layers": sel.layer + 1})
        fig = figures.ccfs_sweep(rows, label) if len(model.reduced_sets_) > 1 else None
        if fig is not None:
            mlflow.log_figure(fig, f"figures/ccfs_sweep_{label}.png")
            figures.close(fig)
        sel = model.reduced_sets_[0]
        width = res["widths"][0]
        neurons = [{"layer": int(p // width), "neuron": int(p % width), "position": int(p)} for p in sel.neurons]
        mlflow.log_dict({"neurons": neurons, "ls_threshold": sel.ls_threshold, "ccfs_threshold": sel.ccfs_threshold,
                         "cc_threshold": sel.cc_threshold, "layer": sel.layer,
                         "fs_grid": cfg.fs_grid, "fs_target": cfg.fs_target,
                         "scores": {k: {"dev": v["dev"], "test": v["test"], "neurons": v["neurons"]}
                                    for k, v in sel.scores.items()},
                         "lineage": {"transfer_run_id": parent.info.run_id, "extraction_run_id": source["run_id"],
                                     "correlation_snapshot_id": res["correlation_snapshot_id"],
                                     "model_source": source.get("model_source")}},
                        "ccfs/reduced_set.json")
        mlflow.log_dict({"predictions": res["test_predictions"]}, "ccfs/test_predictions.json")
        version = None
        if cfg.register:
            with tempfile.TemporaryDirectory() as tmp:
                folder = save_reduced(
                    Path(tmp) / "reduced", source["model_source"], sel.layer, sel.neurons, sel.coef, sel.intercept,
                    {"classes": res["classes"], "unit": cfg.unit, "task": cfg.task, "label": label,
                     "aggregation": source.get("aggregation", "last"), "model": cfg.model, "corpus": cfg.corpus})
                name = registered_name(cfg.model, cfg.corpus, label)
                info = log_reduced(mlflow, folder, name)
            number = _version_of(mlflow, name, info.model_id)
            client = mlflow.MlflowClient()
            for key, value in ((STATUS_TAG, "pending"), ("raydund.run_id", stage.run_id),
                               ("raydund.transfer_run_id", parent.info.run_id),
                               ("raydund.task_run_id", child.info.run_id)):
                client.set_model_version_tag(name, number, key, value)
            version = (name, number)
            mlflow.set_tag("raydund.registered_model", f"models:/{name}/{number}")
            log.info("registered models:/%s/%s (%s), pending the lake commit", name, number, info.model_uri)
    return rows, version


def registered_name(model: str, corpus: str, label: str) -> str:
    """Registry name of a reduced model: one per (base model, corpus, task)."""
    return f"raydund-transfer-{model}-{corpus}-{label}"


def _version_of(mlflow, name: str, model_id: str | None) -> str:
    """The registry version that ``log_model`` just created (matched by its logged model id)."""
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    mine = [v for v in versions if model_id and getattr(v, "model_id", None) == model_id]
    return str(max(int(v.version) for v in (mine or versions)))


def format_table(rows: list[dict]) -> str:
    """The Table 3/9/10 layout as text: per task, oracle / LS / CC / CCFS with layers, neurons, scores."""
    lines = [f"{'task':<10} {'ls,ccfs':<11} {'stage':<7} {'layers':>6} {'neurons':>8} {'reduct.':>8} "
             f"{'dev':>7} {'test':>7}"]
    for r in rows:
        layers = "all" if r["layers"] is None else str(r["layers"])
        lines.append(f"{r['task']:<10} {r['ls_threshold']:g},{r['ccfs_threshold']:<7g} {r['stage']:<7} {layers:>6} "
                     f"{r['neurons']:>8} {100 * r['reduction']:>7.1f}% {100 * r['dev']:>6.2f} {100 * r['test']:>6.2f}")
    return "\n".join(lines)


def transfer_table(cfg: TransferConfig, rows: list[dict]) -> pa.Table:
    """Lake rows: (task, ls_threshold, ccfs_threshold, stage, layers, neurons, split, metric, value)."""
    out = []
    for r in rows:
        for split in ("dev", "test"):
            out.append((r["task"], r["ls_threshold"], r["ccfs_threshold"], r["stage"], r["layers"], r["neurons"],
                        split, r["metric"], float(r[split])))
    cols = list(zip(*out)) if out else [[]] * 9
    n = len(out)
    return pa.table({
        "model": pa.array([cfg.model] * n, pa.string()), "corpus": pa.array([cfg.corpus] * n, pa.string()),
        "unit": pa.array([cfg.unit] * n, pa.string()), "task": pa.array(cols[0], pa.string()),
        "ls_threshold": pa.array(cols[1], pa.float64()), "ccfs_threshold": pa.array(cols[2], pa.float64()),
        "stage": pa.array(cols[3], pa.string()), "layers": pa.array(cols[4], pa.int32()),
        "neurons": pa.array(cols[5], pa.int32()), "splits": pa.array([",".join(cfg.splits)] * n, pa.string()),
        "fs_grid": pa.array([cfg.fs_grid] * n, pa.string()), "fs_target": pa.array([cfg.fs_target] * n, pa.string()),
        "split": pa.array(cols[6], pa.string()),
        "metric": pa.array(cols[7], pa.string()), "value": pa.array(cols[8], pa.float64()),
    })
