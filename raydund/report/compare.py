"""``raydund compare``: several models on one corpus side by side, per analysis of the paper.

One self-contained page (``$RAYDUND_HOME/reports/<model>+<model>__<corpus>/index.html``):
CKA heatmaps of every model in one row, the clustering curves in one plot (and each
model's composition), per task each model's layer-wise probes and one plot of all of them
on relative depth, then, where the lake has them, each model's robust-CKA results and
depth-pruning study. Every section reads exact completed runs, as ``raydund report`` does:
per model, the latest similarity run of the split and unit, the latest clustering run of
that split, each task's latest probe run; the "Built from" table names them.
"""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path

from raydund import tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.general.clustering import SPANS
from raydund.lake import Lake, runs
from raydund.report import figures, pruning, robust, sources
from raydund.report.html import CLUSTERS, LAYER_SIMILARITY, PROBE_RESULTS, _probe_rows, cka_matrices, cluster_summary
from raydund.report.page import Report, table


@dataclasses.dataclass
class ModelSources:
    """What one model contributes to a comparison page.

    Attributes
    ----------
    model : str
    similarity, cluster : raydund.lake.runs.Run or None
    probes : dict
        Task -> the latest probe run of that task.
    prune : raydund.lake.runs.Run or None
    prune_rows : list of dict
        :func:`raydund.report.pruning.to_rows` of the pruning run.
    width : raydund.lake.runs.Run or None
    width_rows : list of dict
        :func:`raydund.report.pruning.width_to_rows` of the width-pruning run.
    robust : dict or None
        :func:`raydund.report.robust.latest`.
    """

    model: str
    similarity: runs.Run | None = None
    cluster: runs.Run | None = None
    probes: dict = dataclasses.field(default_factory=dict)
    prune: runs.Run | None = None
    prune_rows: list = dataclasses.field(default_factory=list)
    width: runs.Run | None = None
    width_rows: list = dataclasses.field(default_factory=list)
    robust: dict | None = None

    def records(self) -> list[dict]:
        """The "Built from" records of every run this model's sections read."""
        used = [(self.similarity, [LAYER_SIMILARITY]), (self.cluster, [CLUSTERS])]
        used += [(run, [PROBE_RESULTS]) for run in self.probes.values()]
        used += [(self.prune, [pruning.PRUNE_RESULTS]), (self.width, [pruning.PRUNE_WIDTH_RESULTS])]
        out, seen = [], set()
        for run, tables in used:
            if run is not None and run.run_id not in seen:
                seen.add(run.run_id)
                out.append({"model": self.model, **sources.describe(run, tables)})
        if self.robust:
            out.append({"model": self.model, **robust.record(self.robust)})
        return out


def resolve(lake: Lake, client, model: str, corpus: str, split: str, unit: str,
            tasks: tuple[str, ...] | None) -> ModelSources:
    """The runs behind one model's sections (``tasks`` None: every task with a probe run of ``unit``)."""
    out = ModelSources(model)
    out.similarity = runs.latest(lake, "similarity", model, corpus, LAYER_SIMILARITY, split=split, unit=unit,
                                 variant="all")
    out.cluster = runs.latest(lake, "cluster", model, corpus, CLUSTERS, split=split, unit=unit, variant="all")
    if tasks is None:
        tasks = tuple(sorted({str(r.scope["task"]) for r in runs.completed(lake, "probes", model, corpus)
                              if r.covers({"unit": unit}) and isinstance(r.scope.get("task"), str)}))
    for task in tasks:
        run = runs.latest(lake, "probes", model, corpus, PROBE_RESULTS, task=task, unit=unit)
        if run is not None:
            out.probes[task] = run
    out.prune, out.prune_rows = pruning.latest(lake, model, corpus)
    out.width, out.width_rows = pruning.width_latest(lake, model, corpus)
    out.robust = robust.latest(client, model, corpus, split, unit)
    return out


def general(rep: Report, lake: Lake, used: list[ModelSources], split: str) -> None:
    """CKA heatmaps side by side (linear, then debiased), the clustering curves in one plot, compositions."""
    matrices = {m.model: cka_matrices(sources.read(lake, m.similarity, LAYER_SIMILARITY))
                for m in used if m.similarity is not None}
    if matrices:
        rep.section(f"CKA between layers ({split})")
        for measure in ("cka", "cka_debiased"):
            rep.figures({f"{measure}_{model}": figures.cka_heatmap(M[measure], f"{model}: {measure.replace('_', ' ')}")
                         for model, M in matrices.items() if measure in M})
    summaries = {m.model: cluster_summary(sources.read(lake, m.cluster, CLUSTERS))
                 for m in used if m.cluster is not None}
    summaries = {model: s for model, s in summaries.items() if s}
    if summaries:
        rep.section(f"Correlation clustering ({split})")
        named = {"cc_threshold_curves": figures.threshold_curves(summaries, "neurons kept by threshold")}
        named |= {f"cc_composition_{model}": figures.composition_bars(s, SPANS, f"{model}: cluster composition")
                  for model, s in summaries.items()}
        rep.figures(named)
        thresholds = sorted({r["threshold"] for s in summaries.values() for r in s})
        kept = {model: {r["threshold"]: r for r in s} for model, s in summaries.items()}
        rep.raw(table(["threshold", *(f"{model}: kept of {s[0]['neurons_total']:,}" for model, s in summaries.items()),
                       *(f"{model}: reduction %" for model in summaries)],
                      [[t, *(kept[m][t]["neurons_kept"] if t in kept[m] else None for m in summaries),
                        *(100 * (1 - kept[m][t]["neurons_kept"] / kept[m][t]["neurons_total"]) if t in kept[m]
                          else None for m in summaries)] for t in thresholds], left=0))
    if not matrices and not summaries:
        rep.text("No general-redundancy results: run `raydund similarity` and `raydund cluster`.", "note")


def probes(rep: Report, lake: Lake, used: list[ModelSources]) -> None:
    """Per task: each model's layer-wise figure side by side, all of them on relative depth, a table."""
    tasks = sorted({t for m in used for t in m.probes})
    if not tasks:
        return
    rep.section("Task-specific redundancy: layer-wise probes")
    for task in tasks:
        rows = {m.model: _probe_rows(sources.read(lake, m.probes[task], PROBE_RESULTS, {"task": task}), "layerwise")
                for m in used if task in m.probes}
        rows = {model: r for model, r in rows.items() if any(x["probe"] == "oracle" for x in r)}
        if not rows:
            continue
        key = "pearson" if any("pearson" in x["dev"] for r in rows.values() for x in r) else "accuracy"
        rep.raw(f"<h3>{html.escape(task)}</h3>")
        named = {f"layerwise_{task}_{model}": figures.layerwise(r, key, f"{model}: {task} layer-wise")
                 for model, r in rows.items()}
        named[f"layerwise_{task}_depth"] = figures.layerwise_depth(rows, key, f"{task}: each layer alone")
        rep.figures(named)
        body = []
        for model, r in rows.items():
            oracle = next(x for x in r if x["probe"] == "oracle")
            layers = [x for x in r if x["probe"].startswith("layer ")]
            best = max(layers, key=lambda x: x["dev"][key])
            within = [x["probe"][6:] for x in layers if x["dev"][key] >= 0.99 * oracle["dev"][key]]
            body.append([model, len(layers), 100 * oracle["dev"][key], 100 * oracle["test"][key], best["probe"],
                         100 * best["test"][key], ", ".join(within) or "none"])
        rep.raw(table(["model", "layers", f"oracle dev {key} %", f"oracle test {key} %", "best layer",
                       f"its test {key} %", "layers within 99% of the oracle (dev)"], body))


def build_comparison(settings: Settings, corpus: str, models: list[str], tasks: tuple[str, ...] | None = None,
                     split: str = "dev", unit: str = "word") -> Path:
    """Write the comparison page of ``models`` on ``corpus`` (see the module docstring); return its path.

    Parameters
    ----------
    settings : Settings
    corpus : str
    models : list of str
        Lake model names, shown in this order (at least one).
    tasks : tuple of str, optional
        Label columns whose probes are shown (default: every task probed for any model).
    split, unit : str
        The split of the general analyses (similarity, clustering, robust CKA) and the unit.
    """
    if not models:
        raise UserError("name at least one --model to compare")
    mlflow = tracking.configure(settings)
    lake = Lake(settings, create=False)
    client = mlflow.MlflowClient()
    used = [resolve(lake, client, model, corpus, split, unit, tasks) for model in models]
    if not any(m.similarity or m.cluster or m.probes or m.prune or m.width or m.robust for m in used):
        raise UserError(f"no results for {', '.join(models)} on {corpus} ({split}, unit {unit}) in the lake; "
                        "run `raydund similarity`, `cluster` or `probe` first")
    rep = Report(f"raydund: {' vs '.join(models)} on {corpus}")
    rep.text(f"Each model's latest completed runs on {corpus} (general analyses on {split}, unit {unit}).", "note")
    records = [r for m in used for r in m.records()]
    rep.section("Built from")
    rep.raw(table(["model", *sources.HEADER], [[r["model"], *row] for r, row in zip(records, sources.rows(records))],
                  left=6))
    general(rep, lake, used, split)
    probes(rep, lake, used)
    robust.section(rep, {m.model: m.robust for m in used})
    pruning.section(rep, {m.model: m.prune_rows for m in used}, corpus)
    pruning.width_section(rep, {m.model: m.width_rows for m in used}, corpus)
    folder = settings.report_dir("+".join(models), corpus)
    path = rep.write(folder)
    (folder / "sources.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


__all__ = ["ModelSources", "build_comparison", "resolve"]
