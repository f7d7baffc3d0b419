"""``raydund report RUN``: one self-contained HTML page with the paper's figures and tables.

Everything comes from the lake (CKA, clusters, probe results, LS + CCFS) and from the
transfer run's MLflow artefacts (timing); figures are PNGs embedded as data URIs, so the
page opens anywhere with no server and no network, and the same PNGs go to MLflow.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from raydund import tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.general.clustering import SPANS, composition
from raydund.lake import Lake, runs, table_identifier
from raydund.report import figures, pruning, robust, sources
from raydund.report.page import Report
from raydund.report.page import table as _table
from raydund.report.paper import PAPER

log = logging.getLogger(__name__)

LAYER_SIMILARITY, CLUSTERS = "layer_similarity", "clusters"
PROBE_RESULTS, TRANSFER_RESULTS = "probe_results", "transfer_results"


@dataclasses.dataclass
class Sources:
    """The completed runs one report page is built from (:mod:`raydund.lake.runs`).

    Attributes
    ----------
    transfer : raydund.lake.runs.Run
        The transfer run the report is of.
    similarity, cluster : raydund.lake.runs.Run or None
        The similarity run the transfer run read (else the latest of its stats split and
        unit) and the latest clustering run of that same split, unit and variant.
    probes : dict
        Task -> the latest probe run of that task and the transfer run's unit.
    notes : list of str
        What could not be matched exactly (shown on the page).
    extra : list of dict
        Records of further sources (a pruning study, a robust-CKA MLflow run), in
        :func:`raydund.report.sources.describe`'s form.
    """

    transfer: runs.Run
    similarity: runs.Run | None = None
    cluster: runs.Run | None = None
    probes: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)
    extra: list = dataclasses.field(default_factory=list)

    def records(self) -> list[dict]:
        """:func:`raydund.report.sources.describe` of every run the page reads, each once."""
        used = [(self.similarity, [LAYER_SIMILARITY]), (self.cluster, [CLUSTERS])]
        used += [(run, [PROBE_RESULTS]) for run in self.probes.values()]
        used.append((self.transfer, [TRANSFER_RESULTS]))
        out, seen = [], set()
        for run, tables in used:
            if run is not None and run.run_id not in seen:
                seen.add(run.run_id)
                out.append(sources.describe(run, tables))
        return out + self.extra


def _tasks(run: runs.Run) -> list[str]:
    task = run.scope.get("task")
    return [] if task is None else [str(t) for t in (task if isinstance(task, list) else [task])]


def resolve_transfer(lake: Lake, client, run_id: str) -> runs.Run:
    """The completed transfer run named by its MLflow or raydund run id; a :class:`UserError` otherwise.

    When the lake has no completed run of that id, MLflow tells why: an unknown id, a
    run of another stage, or a transfer job that failed or did not finish.
    """
    try:
        run = runs.by_id(lake, run_id)
    except UserError:
        raise UserError(_not_found(client, run_id)) from None
    if run.stage != "transfer":
        raise UserError(f"run {run_id} is a {run.stage} run, not a transfer run (`raydund transfer` prints the id)")
    return run


def _not_found(client, run_id: str) -> str:
    """Why ``run_id`` names no completed transfer run in the lake."""
    try:
        stage = client.get_run(run_id).data.tags.get("raydund.stage")
    except Exception:  # noqa: BLE001  (MLflow raises its own exception types for unknown ids)
        return f"no MLflow run and no completed raydund run {run_id!r} (`raydund transfer` prints the id)"
    if stage != "transfer":
        return f"run {run_id} is not a transfer run (`raydund transfer` prints the id)"
    return f"transfer run {run_id} has no completed run in the lake (it failed or did not finish); run it again"


def resolve_sources(lake: Lake, transfer: runs.Run, stats_split: str | None, variant: str = "all") -> Sources:
    """The runs behind each section of the report of ``transfer``.

    Parameters
    ----------
    lake : Lake
    transfer : raydund.lake.runs.Run
    stats_split : str, optional
        The transfer job's ``stats_split`` (its MLflow param), used when the run does
        not name the similarity run it read.
    variant : str
        Similarity variant the transfer job reads (``all``).
    """
    model, corpus, unit = transfer.model, transfer.corpus, transfer.scope.get("unit", "word")
    out = Sources(transfer)
    wanted = transfer.inputs.get("similarity_run")
    if wanted:
        out.similarity = runs.find(lake, wanted, "similarity")
        if out.similarity is None:
            out.notes.append(f"the similarity run {wanted} this transfer read is not in the lake")
    elif stats_split:
        out.similarity = runs.latest(lake, "similarity", model, corpus, LAYER_SIMILARITY, split=stats_split,
                                     unit=unit, variant=variant)
    if out.similarity is not None:
        scope = {k: out.similarity.scope[k] for k in ("split", "unit", "variant") if k in out.similarity.scope}
        done = [r for r in runs.completed(lake, "cluster", model, corpus)
                if r.covers(scope) and table_identifier(CLUSTERS) in r.outputs]
        same = [r for r in done if r.inputs.get("similarity_run") == out.similarity.run_id]
        out.cluster = (same or done or [None])[-1]
        if out.cluster is not None and not same:
            out.notes.append(f"clustering run {out.cluster.run_id} read another similarity run "
                             f"({out.cluster.inputs.get('similarity_run')})")
    for task in _tasks(transfer):
        probe = runs.latest(lake, "probes", model, corpus, PROBE_RESULTS, task=task, unit=unit)
        if probe is not None:
            out.probes[task] = probe
    return out


def sources_section(rep: Report, used: Sources) -> None:
    """The "Built from" table: stage, run ids, table -> snapshot id, scope of every run read."""
    rep.section("Built from")
    rep.raw(_table(sources.HEADER, sources.rows(used.records()), left=5))
    for note in used.notes:
        rep.text(note, "note")


def general_section(rep: Report, lake: Lake, sim: runs.Run | None, cluster: runs.Run | None) -> None:
    """CKA heatmaps (Figure 1), clustering curve and composition (Figures 2 and 3) of ONE run each."""
    rep.section("General redundancy")
    frame = sources.read(lake, sim, LAYER_SIMILARITY) if sim is not None else pl.DataFrame()
    if frame.height:
        split = sim.scope.get("split")
        named = {}
        for measure, M in cka_matrices(frame).items():
            named[f"{measure}_heatmap"] = figures.cka_heatmap(M, f"{measure.replace('_', ' ')} ({split})")
        rep.figures(named)
    clusters = sources.read(lake, cluster, CLUSTERS) if cluster is not None else pl.DataFrame()
    if clusters.height:
        summary = cluster_summary(clusters)
        rep.figures({"cc_threshold_curve": figures.threshold_curve(summary, "correlation clustering"),
                     "cc_composition": figures.composition_bars(summary, SPANS, "cluster composition")})
        rep.raw(_table(["threshold", "neurons kept", "of", "reduction %"],
                       [[r["threshold"], r["neurons_kept"], r["neurons_total"],
                         100 * (1 - r["neurons_kept"] / r["neurons_total"])] for r in summary], left=0))
    if not frame.height and not clusters.height:
        rep.text("No general-redundancy results: run `raydund similarity` and `raydund cluster`.", "note")


def cka_matrices(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """``layer_similarity`` rows of one run -> {measure: symmetric L x L matrix} (``cka``, ``cka_debiased``)."""
    out = {}
    for measure in ("cka", "cka_debiased"):
        part = frame.filter(pl.col("measure") == measure)
        if part.height:
            L = int(max(part["layer_a"].max(), part["layer_b"].max())) + 1
            M = np.full((L, L), np.nan)
            M[part["layer_a"].to_numpy(), part["layer_b"].to_numpy()] = part["value"].to_numpy()
            out[measure] = np.where(np.isnan(M), M.T, M)
    return out


def cluster_summary(clusters: pl.DataFrame) -> list[dict]:
    """Per threshold of ONE clustering run's rows: neurons kept, clustered, and the composition."""
    summary = []
    for (t,), g in clusters.sort("threshold").group_by("threshold", maintain_order=True):
        comp = composition(g["cluster_id"].to_numpy(), g["layer"].to_numpy())
        summary.append({"threshold": t, "neurons_kept": int(g["kept"].sum()), "neurons_total": g.height, **comp})
    return summary


def _probe_rows(frame: pl.DataFrame, analysis: str) -> list[dict]:
    """probe_results rows back into the {probe, dev: {...}, test: {...}} shape of the analyses."""
    part = frame.filter(pl.col("analysis") == analysis)
    rows = {}
    for r in part.iter_rows(named=True):
        row = rows.setdefault(r["probe"], {"probe": r["probe"], "k": r["k"], "dev": {}, "test": {}})
        metric = r["metric"]
        if ":" in metric:
            name, cls = metric.split(":", 1)
            row[r["split"]].setdefault(name, {})[cls] = r["value"]
        else:
            row[r["split"]][metric] = r["value"]
    return list(rows.values())


def task_section(rep: Report, lake: Lake, probes: dict[str, runs.Run]) -> None:
    """Per task: layer-wise redundancy (Figure 4, Table 7), per class (Figures 7-9), minimal set (Table 8).

    ``probes``: task -> the probe run whose ``probe_results`` rows of that task are shown.
    """
    frames = {task: sources.read(lake, run, PROBE_RESULTS, {"task": task}) for task, run in probes.items()}
    frames = {task: frame for task, frame in frames.items() if frame.height}
    if not frames:
        return
    rep.section("Task-specific redundancy")
    for task, frame in frames.items():
        layer_rows = _probe_rows(frame, "layerwise")
        key = "pearson" if any("pearson" in r["dev"] for r in layer_rows) else "accuracy"
        oracle = next((r for r in layer_rows if r["probe"] == "oracle"), None)
        if oracle is None:
            continue
        rep.raw(f"<h3>{html.escape(task)}</h3>")
        named = {f"layerwise_{task}": figures.layerwise(layer_rows, key, f"{task}: layer-wise")}
        if key == "accuracy" and 0 < len(oracle["dev"].get("per_class", {})) <= 10:
            named[f"per_class_{task}"] = figures.per_class(layer_rows, f"{task}: per class")
        minimal = sorted(_probe_rows(frame, "minimal_set"), key=lambda r: r["k"] or 0)
        if minimal:
            named[f"minimal_set_{task}"] = figures.minimal_set(minimal, key, oracle["dev"][key], f"{task}: top-k")
        rep.figures(named)
        rep.raw(_table(["probe", f"dev {key} %", f"test {key} %", "share of oracle"],
                       [[r["probe"], 100 * r["dev"][key], 100 * r["test"][key], r["dev"][key] / oracle["dev"][key]]
                        for r in layer_rows]))


def transfer_section(rep: Report, lake: Lake, transfer: runs.Run) -> None:
    """LS + CCFS per task (Tables 3, 9, 10) of the transfer run's own rows, with the paper's numbers beside."""
    model, corpus = transfer.model, transfer.corpus
    rows = sources.read(lake, transfer, TRANSFER_RESULTS)
    if not rows.height:
        return
    rep.section("Efficient transfer: LayerSelector + CCFS")
    wide = (rows.pivot(on="split", index=["task", "ls_threshold", "ccfs_threshold", "stage", "layers", "neurons"],
                       values="value").sort("task", "ls_threshold", "ccfs_threshold"))
    order = {"oracle": 0, "ls": 1, "cc": 2, "ccfs": 3}
    total = int(wide.filter(pl.col("stage") == "oracle")["neurons"].max())
    body = []
    for r in sorted(wide.iter_rows(named=True), key=lambda r: (r["task"], r["ls_threshold"], r["ccfs_threshold"],
                                                                 order[r["stage"]])):
        body.append([r["task"], f"{r['ls_threshold']:g} / {r['ccfs_threshold']:g}", r["stage"],
                     "all" if r["layers"] is None else r["layers"], r["neurons"],
                     100 * (1 - r["neurons"] / total), 100 * r["dev"], 100 * r["test"]])
    rep.raw(_table(["task", "thresholds LS / CCFS", "stage", "layers", "neurons", "reduction %", "dev %", "test %"],
                   body, left=3))
    paper = []
    for task in wide["task"].unique().sort():
        ref = PAPER.get((corpus, task))
        if ref is None:
            continue
        ours = {r["stage"]: r for r in wide.filter(pl.col("task") == task).iter_rows(named=True)
                if r["ls_threshold"] == wide["ls_threshold"][0] and r["ccfs_threshold"] == wide["ccfs_threshold"][0]}
        paper.append([f"{task} (paper: {ref['task']})", 100 * ours["oracle"]["test"], ref["oracle"],
                      100 * ours["ls"]["test"], ref["ls"], ours["ls"]["layers"], ref["ls_layers"],
                      100 * ours["ccfs"]["test"], ref["ccfs"], ours["ccfs"]["neurons"], ref["neurons"]])
    if paper:
        rep.raw("<h3>Side by side with the paper (BERT-base, Tables 9 and 10)</h3>")
        rep.raw(_table(["task", "oracle", "paper", "LS", "paper", "LS layers", "paper", "CCFS", "paper",
                        "CCFS neurons", "paper"], paper))
        rep.text(f"Here: {model} on {corpus} (test %). The paper's model is BERT-base (13 x 768 = 9,984 neurons) "
                 "trained on 150k tokens; its CoNLL/PMB releases and splits can differ.", "note")


def timing_section(rep: Report, timing: dict | None) -> None:
    """Figures 5 and 10-14: measured forward, probe and stage times."""
    if not timing:
        return
    rep.section("Timing (measured)")
    rep.figures(figures.timing_figures(timing, f"{timing['sentences']} sentences"))
    rep.raw(_table(["task", "layers", "neurons", "full model s", "reduced model s", "speed-up"],
                   [[r["task"], r["layers"], r["neurons"], r["full_seconds"], r["reduced_seconds"], r["speedup"]]
                    for r in timing["reduced_vs_full"]]))
    rep.raw(_table(["stage", "seconds per 1k tokens", "R² of a line in T"],
                   [[s, 1000 * f["slope"], f["r2"]] for s, f in timing["linear_fits"].items()]))


def _mlflow_params(client, run_id: str | None) -> dict:
    """The params of an MLflow run ({} when it is not in the tracking store)."""
    if not run_id:
        return {}
    try:
        return dict(client.get_run(run_id).data.params)
    except Exception:  # noqa: BLE001  (MLflow raises its own exception types for unknown ids)
        log.warning("MLflow run %s is not in the tracking store; the report uses the lake only", run_id)
        return {}


def build_report(settings: Settings, run_id: str) -> Path:
    """Render the report of a transfer run (``raydund transfer``) and log its page and PNGs to that run.

    ``run_id`` is the transfer job's MLflow run id or its raydund run id. Every section
    reads only the rows of exact completed runs (:func:`resolve_sources`), at the
    snapshots they recorded; the page's "Built from" table (and ``sources.json``) names them.
    """
    mlflow = tracking.configure(settings)
    lake = Lake(settings, create=False)
    client = mlflow.MlflowClient()
    transfer = resolve_transfer(lake, client, run_id)
    mlflow_id = transfer.mlflow_run_id
    params = _mlflow_params(client, mlflow_id)
    used = resolve_sources(lake, transfer, params.get("stats_split"))
    model, corpus = transfer.model, transfer.corpus
    prune_run, prune_rows = pruning.latest(lake, model, corpus)
    width_run, width_rows = pruning.width_latest(lake, model, corpus)
    found = robust.latest(client, model, corpus)
    used.extra += ([sources.describe(prune_run, [pruning.PRUNE_RESULTS])] if prune_run else []) + (
        [sources.describe(width_run, [pruning.PRUNE_WIDTH_RESULTS])] if width_run else []) + (
        [robust.record(found)] if found else [])
    rep = Report(f"raydund: {model} on {corpus}")
    scope = transfer.scope
    rep.text(f"Transfer run {transfer.run_id} (MLflow run {mlflow_id}); tasks {', '.join(_tasks(transfer))}; "
             f"LS thresholds {scope.get('ls_threshold')}, CCFS thresholds {scope.get('ccfs_threshold')}; "
             f"activations snapshot {params.get('activations_snapshot_id')}.", "note")
    browser = settings.report_dir(model, corpus) / "browser" / "index.html"
    if browser.exists():
        rep.raw('<p><a href="browser/index.html">Neuron browser</a></p>')
    sources_section(rep, used)
    general_section(rep, lake, used.similarity, used.cluster)
    task_section(rep, lake, used.probes)
    transfer_section(rep, lake, transfer)
    timing = None
    try:
        local = mlflow.artifacts.download_artifacts(run_id=mlflow_id, artifact_path="timing/timing.json")
        timing = json.loads(Path(local).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001  (no timing logged for this run)
        log.info("run %s has no timing artefact", mlflow_id)
    timing_section(rep, timing)
    pruning.section(rep, {model: prune_rows} if prune_rows else {}, corpus)
    pruning.width_section(rep, {model: width_rows} if width_rows else {}, corpus)
    robust.section(rep, {model: found} if found else {})
    path = rep.write(settings.report_dir(model, corpus))
    (path.parent / "sources.json").write_text(json.dumps(used.records(), indent=1), encoding="utf-8")
    if mlflow_id:
        with mlflow.start_run(run_id=mlflow_id):
            mlflow.log_artifact(str(path), "report")
            mlflow.log_artifact(str(path.parent / "sources.json"), "report")
            for name in rep.images:
                mlflow.log_artifact(str(path.parent / f"{name}.png"), "report/figures")
    return path
