"""Pruning studies in a report: depth ("blocks removed vs perplexity / SST-2 / POS" per criterion) and
width ("MLP neurons removed vs perplexity / forward time" per method), each with a table.

Read only from the lake: the latest completed ``prune`` run of (model, corpus) (written by
``raydund prune``, :mod:`raydund.prune.track`) and its ``prune_results`` rows at the
snapshot it recorded; likewise the latest ``prune-width`` run and its
``prune_width_results`` rows (``raydund prune-width``, :mod:`raydund.prune.width_track`).
The rows are taken by (model, corpus) at that snapshot and narrowed to the run's scope
here (its criteria and numbers of blocks, or methods and fractions, plus the full model).
"""

from __future__ import annotations

import html
import logging

import polars as pl

from raydund.lake import Lake, runs
from raydund.lake.commit import condition
from raydund.report import figures
from raydund.report.page import Report, table

log = logging.getLogger(__name__)

PRUNE_RESULTS = "prune_results"
PRUNE_WIDTH_RESULTS = "prune_width_results"
#: The full (unpruned) model's rows in ``prune_results`` (criterion) and ``prune_width_results`` (method).
FULL = "none"


def to_rows(frame: pl.DataFrame, scope: dict | None = None) -> list[dict]:
    """``prune_results`` rows -> one dict per (criterion, n): ``criterion, n, blocks`` (list) and each metric.

    Parameters
    ----------
    frame : polars.DataFrame
        Rows ``criterion, n, blocks, metric, value`` of one (model, corpus).
    scope : dict, optional
        A prune run's scope: only its ``criterion`` and ``n`` values are kept, plus the
        full model. Where several rows give the same (criterion, n, metric) (the full
        model's, written by every study), the last one read is kept.

    Returns
    -------
    list of dict
        Sorted by criterion, then n; the full model first.
    """
    scope = scope or {}
    wanted_c = scope.get("criterion")
    wanted_n = scope.get("n")
    out: dict[tuple, dict] = {}
    for r in frame.iter_rows(named=True):
        c, n = r["criterion"], int(r["n"])
        if c != FULL and ((wanted_c is not None and c not in _as_list(wanted_c))
                          or (wanted_n is not None and n not in _as_list(wanted_n))):
            continue
        row = out.setdefault((c, n), {"criterion": c, "n": n,
                                      "blocks": [int(b) for b in (r["blocks"] or "").split(",") if b != ""]})
        row[r["metric"]] = float(r["value"])
    return sorted(out.values(), key=lambda r: (r["criterion"] != FULL, r["criterion"], r["n"]))


def width_to_rows(frame: pl.DataFrame, scope: dict | None = None) -> list[dict]:
    """``prune_width_results`` rows -> one dict per (method, fraction): ``method, fraction`` and each metric.

    Parameters
    ----------
    frame : polars.DataFrame
        Rows ``method, fraction, metric, value`` of one (model, corpus).
    scope : dict, optional
        A ``prune-width`` run's scope: only its ``method`` and ``fraction`` values are kept
        (the full model, method ``none`` at fraction 0, is one of them).

    Returns
    -------
    list of dict
        Sorted by method, then fraction; the full model first.
    """
    scope = scope or {}
    methods, fractions = scope.get("method"), scope.get("fraction")
    out: dict[tuple, dict] = {}
    for r in frame.iter_rows(named=True):
        m, f = r["method"], float(r["fraction"])
        if (methods is not None and m not in _as_list(methods)) or (
                fractions is not None and f not in map(float, _as_list(fractions))):
            continue
        out.setdefault((m, f), {"method": m, "fraction": f})[r["metric"]] = float(r["value"])
    return sorted(out.values(), key=lambda r: (r["method"] != FULL, r["method"], r["fraction"]))


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def latest(lake: Lake, model: str, corpus: str) -> tuple[runs.Run | None, list[dict]]:
    """The latest completed pruning run of (model, corpus) and its rows (:func:`to_rows`); ``(None, [])`` if none."""
    return _latest(lake, "prune", PRUNE_RESULTS, model, corpus, to_rows)


def _latest(lake: Lake, stage: str, table: str, model: str, corpus: str, rows_of) -> tuple[runs.Run | None, list]:
    """The latest completed ``stage`` run of (model, corpus) that wrote ``table``, and ``rows_of`` its rows
    of (model, corpus) at the snapshot it recorded (narrowed to its scope)."""
    run = runs.latest(lake, stage, model, corpus, table)
    if run is None:
        return None, []
    scan = lake.table(table).scan(row_filter=condition({"model": model, "corpus": corpus}),
                                  snapshot_id=run.snapshot(table))
    return run, rows_of(pl.from_arrow(scan.to_arrow()), run.scope)


def width_latest(lake: Lake, model: str, corpus: str) -> tuple[runs.Run | None, list[dict]]:
    """The latest completed width-pruning run of (model, corpus) and its rows (:func:`width_to_rows`)."""
    return _latest(lake, "prune-width", PRUNE_WIDTH_RESULTS, model, corpus, width_to_rows)


def default_criterion() -> str | None:
    """The criterion ``raydund prune`` recommends now (marked in the table)."""
    try:
        from raydund.prune.study import DEFAULT_CRITERION
    except ImportError:  # pragma: no cover - a build without the prune package
        return None
    return DEFAULT_CRITERION


def section(rep: Report, studies: dict[str, list[dict]], corpus: str) -> None:
    """Per model with a study: the curves (:func:`raydund.report.figures.prune_curves`) and the table."""
    studies = {m: rows for m, rows in studies.items() if rows}
    if not studies:
        return
    default = default_criterion()
    rep.section("Depth pruning: blocks removed vs perplexity / SST-2 / POS")
    rep.text("raydund prune drops whole decoder blocks by each criterion and measures held-out perplexity, "
             "zero-shot SST-2 accuracy and a POS probe on the last hidden state (n = 0: the full model). "
             f"* marks raydund's default criterion ({default}).", "note")
    for model, rows in studies.items():
        rep.raw(f"<h3>{html.escape(model)}</h3>")
        rep.figures({f"prune_{model}": figures.prune_curves(rows, f"{model} on {corpus}: depth pruning", default)})
        body = []
        for r in sorted(rows, key=lambda r: (r["n"], r.get("ppl", float("inf")))):
            body.append([r["criterion"] + ("*" if r["criterion"] == default else ""), r["n"],
                         ",".join(map(str, r["blocks"])) or "-", r.get("ppl"),
                         None if "sst2" not in r else 100 * r["sst2"], None if "pos" not in r else 100 * r["pos"]])
        rep.raw(table(["criterion", "blocks removed", "blocks dropped", "perplexity", "SST-2 %", "POS %"], body,
                      left=1))


def width_section(rep: Report, studies: dict[str, list[dict]], corpus: str) -> None:
    """Per model with a width study: the curves (:func:`raydund.report.figures.width_curves`) and the table."""
    studies = {m: rows for m, rows in studies.items() if rows}
    if not studies:
        return
    rep.section("Width pruning: MLP neurons removed vs perplexity / forward time")
    rep.text("raydund prune-width removes a fraction of every block's MLP neurons by each method (fold and "
             "fold-cost fold a removed neuron into a kept one, see raydund.prune.width) and measures held-out "
             "perplexity, size and forward time per token of the smaller model (0%: the full model).", "note")
    for model, rows in studies.items():
        rep.raw(f"<h3>{html.escape(model)}</h3>")
        rep.figures({f"prune_width_{model}": figures.width_curves(rows, f"{model} on {corpus}: width pruning")})
        body = [[r["method"], 100 * r["fraction"], r.get("ppl"),
                 None if "parameters" not in r else r["parameters"] / 1e6, r.get("size_mb"), r.get("ms_per_token")]
                for r in sorted(rows, key=lambda r: (r["fraction"], r.get("ppl", float("inf"))))]
        rep.raw(table(["method", "MLP neurons removed %", "perplexity", "parameters (M)", "MB", "ms / token"],
                      body, left=1))
