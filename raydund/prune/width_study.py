"""A width-pruning study: methods x fractions of MLP neurons removed, evaluated, tracked, registered.

1. Text: calibration sentences from the start of ``calibration_split`` (UD-EWT train),
   held-out sentences from the start of ``eval_split`` (test); disjoint (checked).
2. ``workers`` Ray actors each load the model once (:class:`WidthEvaluator`); the first
   collects the calibration statistics and makes every (method, fraction) plan
   (:mod:`raydund.prune.width`); plans are small (indices and coefficients) and go to
   whichever actor evaluates them, one actor task per pruned model.
3. Each pruned model (and the full one): held-out perplexity
   (:func:`raydund.prune.evaluate.perplexity`), distinct parameters, float32 size, and
   forward time per token (the fastest of three passes over ``timing_sentences``
   held-out sentences, on the actor's ``threads`` threads).
4. MLflow: a parent run, a child per (method, fraction), the figure "fraction removed vs
   perplexity" per method, the table; the lowest-perplexity model at the largest fraction
   registered as a pyfunc model that generates text (:mod:`raydund.prune.registry`).
5. The lake table ``prune_width_results`` (one row per method, fraction and metric, the
   full model as method ``none`` at fraction 0), which ``raydund report`` and
   ``raydund compare`` draw.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pyarrow as pa

from raydund.config import Settings
from raydund.errors import UserError
from raydund.prune import width
from raydund.prune.config import StudyConfig
from raydund.prune.workers import Pool

log = logging.getLogger(__name__)

PRUNE_WIDTH_RESULTS = "prune_width_results"
#: What the lake keeps of each pruned model (and of the full one).
METRICS = ("ppl", "parameters", "mlp_parameters", "size_mb", "ms_per_token")


@dataclasses.dataclass(kw_only=True)
class WidthConfig(StudyConfig):
    """A width-pruning study of one Llama-family causal LM (more fields: :class:`~raydund.prune.config.StudyConfig`).

    Attributes
    ----------
    fractions : tuple of float
        Fractions of every block's MLP neurons to remove (``0.1,0.25,0.4``).
    methods : tuple of str
        Among ``fold cluster fold-cost magnitude random`` (see :mod:`raydund.prune.width`).
    calibration_sentences : int
        Calibration sentences (neuron statistics, fold coefficients).
    timing_sentences : int
        Held-out sentences timed for the forward time per token.
    seed : int
        Seeds the random baseline.
    register : bool
        Register the best pruned model of the largest fraction in MLflow.
    """

    fractions: tuple[float, ...] = (0.1, 0.25, 0.4)
    methods: tuple[str, ...] = width.METHODS
    eval_sentences: int = 300
    timing_sentences: int = 32
    seed: int = 0
    workers: int = 1
    POSITIVE = (*StudyConfig.POSITIVE, "timing_sentences")

    def __post_init__(self):
        super().__post_init__()
        bad = [m for m in self.methods if m not in width.METHODS]
        if bad:
            raise UserError(f"unknown width-pruning methods {bad}; known: {', '.join(width.METHODS)}")
        if not self.methods or not self.fractions:
            raise UserError("give at least one method and one fraction")
        for f in self.fractions:
            if not 0.0 < float(f) < 1.0:
                raise UserError(f"fraction {f}: give fractions of MLP neurons to remove, strictly between 0 and 1")


@dataclasses.dataclass
class WidthData:
    """Calibration, held-out and timing texts (sentences joined by spaces)."""

    calibration: list
    evaluation: list
    timing: list
    batch_size: int = 8


def study_data(cfg: WidthConfig, settings: Settings) -> WidthData:
    """Read the texts and check calibration and evaluation are disjoint."""
    from raydund.corpora import read_split
    from raydund.corpora.spec import load_spec
    from raydund.prune.evaluate import check_disjoint, join

    spec = load_spec(cfg.corpus)
    cal = read_split(spec, cfg.calibration_split, settings).column("words").to_pylist()
    ev = read_split(spec, cfg.eval_split, settings).column("words").to_pylist()
    if len(cal) < cfg.calibration_sentences:
        raise UserError(f"{cfg.corpus}/{cfg.calibration_split} has {len(cal)} sentences; "
                        f"the study needs {cfg.calibration_sentences}")
    cal, ev = join(cal[: cfg.calibration_sentences]), join(ev[: cfg.eval_sentences])
    check_disjoint(cal, ev)
    return WidthData(calibration=cal, evaluation=ev, timing=ev[: cfg.timing_sentences], batch_size=cfg.batch_size)


class WidthEvaluator:
    """One loaded model: calibration statistics, plans, and evaluations of pruned copies (a Ray actor's body)."""

    def __init__(self, model_name: str, data: WidthData, threads: int = 1, model=None, tokenizer=None):
        import torch

        from raydund.prune import models

        torch.set_num_threads(threads)
        self.data = data
        self.model, self.tok = (model, tokenizer) if model is not None else models.load(model_name)
        self.stats = None

    def plans(self, methods: tuple[str, ...], fractions: tuple[float, ...], seed: int) -> tuple[dict, dict]:
        """``{(method, fraction): [BlockPlan per block]}`` and the seconds statistics and plans took."""
        start = time.perf_counter()
        self.stats = width.collect(self.model, self.tok, self.data.calibration, self.data.batch_size)
        seconds = {"statistics": time.perf_counter() - start, "tokens": int(self.stats[0].n)}
        out = {}
        for m in methods:
            start = time.perf_counter()
            for f in fractions:
                out[m, float(f)] = width.plan(self.model, self.stats, m, f, seed)
            seconds[f"plan_{m}"] = time.perf_counter() - start
        self.stats = None  # ~N x N float64 per block: not kept while the actor evaluates
        return out, seconds

    def evaluate(self, plans: list | None) -> dict:
        """Perplexity, parameters, size and forward time per token of the model pruned by ``plans`` (None: full)."""
        from raydund.prune import evaluate

        d = self.data
        small = self.model if plans is None else width.prune(self.model, plans)
        start = time.perf_counter()
        out = {"ppl": evaluate.perplexity(small, self.tok, d.evaluation, d.batch_size)}
        out["seconds_ppl"] = time.perf_counter() - start
        out["parameters"] = float(width.parameters(small))
        out["mlp_parameters"] = float(sum(p.numel() for m in width.mlps(small) for p in m.parameters()))
        out["size_mb"] = sum(p.numel() * p.element_size() for p in {id(p): p for p in small.parameters()}.values()) \
            / 2**20
        out["ms_per_token"] = 1e3 * width.seconds_per_token(small, self.tok, d.timing, d.batch_size)
        return out

    def save(self, plans: list, folder: str) -> str:
        """Write the pruned model and its tokenizer to ``folder``."""
        width.prune(self.model, plans).save_pretrained(folder)
        self.tok.save_pretrained(folder)
        return folder


class WidthPool(Pool):
    """``cfg.workers`` :class:`WidthEvaluator` Ray actors (the :class:`~raydund.prune.workers.Pool` interface)."""

    def __init__(self, ray, cfg: WidthConfig, data: WidthData):
        from ray.util import ActorPool

        # an actor killed (e.g. by Ray's memory monitor on a shared node) restarts, reloads
        # the model and its task is retried: evaluations need only the plans they are sent
        actor = ray.remote(num_cpus=cfg.threads, max_restarts=2, max_task_retries=2)(WidthEvaluator)
        data_ref = ray.put(data)
        self.ray = ray
        self.actors = [actor.remote(cfg.model, data_ref, cfg.threads) for _ in range(cfg.workers)]
        self.pool = ActorPool(self.actors)


def run_width_study(cfg: WidthConfig, settings: Settings, pool_factory=None) -> dict:
    """Run the study (see the module docstring); returns rows, details, the registered URI and run ids.

    ``pool_factory(data) -> pool``: evaluators to use instead of Ray actors (tests pass a
    :class:`~raydund.prune.workers.LocalPool` of a :class:`WidthEvaluator`).
    """
    from raydund.prune import width_track

    wall = time.perf_counter()
    data = study_data(cfg, settings)
    if pool_factory is None:
        from raydund.extract.job import ensure_ray

        def pool_factory(data):
            return WidthPool(ensure_ray(), cfg, data)

    pool = pool_factory(data)
    try:
        plans, details = pool.one("plans", tuple(cfg.methods), tuple(float(f) for f in cfg.fractions), cfg.seed)
        log.info("statistics of %d calibration tokens and %d plans in %.0f s", details["tokens"], len(plans),
                 time.perf_counter() - wall)
        keys = [None, *plans]
        rows, start = [], time.perf_counter()
        for key, v in zip(keys, pool.imap("evaluate", [(None if k is None else plans[k],) for k in keys])):
            method, fraction = ("none", 0.0) if key is None else key
            rows.append({"method": method, "fraction": fraction, **v})
            log.info("%s %.2f: ppl %.3f, %.1f M parameters, %.3f ms/token (%.0f s)", method, fraction, v["ppl"],
                     v["parameters"] / 1e6, v["ms_per_token"], time.perf_counter() - start)
        details["evaluation"] = {"seconds": time.perf_counter() - start}
        best = best_row(rows)
        out = width_track.record(cfg, settings, rows, details, best, plans, pool)
    finally:
        pool.close()
    out.update(rows=rows, details=details, best=best, seconds=time.perf_counter() - wall)
    return out


def best_row(rows: list[dict]) -> dict:
    """The pruned row of lowest perplexity at the largest fraction (ties: method name order)."""
    top = max(r["fraction"] for r in rows)
    return min((r for r in rows if r["fraction"] == top and r["method"] != "none"),
               key=lambda r: (r["ppl"], r["method"]))


def format_table(rows: list[dict]) -> str:
    """The study as text: one line per (method, fraction)."""
    lines = [f"{'method':<10} {'removed':>7} {'ppl':>9} {'params (M)':>10} {'MLP (M)':>8} {'MB':>7} {'ms/token':>8}"]
    for r in sorted(rows, key=lambda r: (r["fraction"], r["ppl"])):
        lines.append(f"{r['method']:<10} {100 * r['fraction']:6.0f}% {r['ppl']:9.3f} {r['parameters'] / 1e6:10.2f} "
                     f"{r['mlp_parameters'] / 1e6:8.2f} {r['size_mb']:7.1f} {r['ms_per_token']:8.3f}")
    return "\n".join(lines)


def results_table(model: str, corpus: str, rows: list[dict]) -> pa.Table:
    """Lake rows: (model, corpus, method, fraction, metric, value)."""
    out = [(r["method"], float(r["fraction"]), m, float(r[m])) for r in rows for m in METRICS if m in r]
    cols = list(zip(*out)) if out else [[]] * 4
    return pa.table({"model": pa.array([model] * len(out), pa.string()),
                     "corpus": pa.array([corpus] * len(out), pa.string()),
                     "method": pa.array(cols[0], pa.string()), "fraction": pa.array(cols[1], pa.float64()),
                     "metric": pa.array(cols[2], pa.string()), "value": pa.array(cols[3], pa.float64())})


def registered_name(model: str, corpus: str, fraction: float) -> str:
    """Registry name of the best width-pruned model at ``fraction``."""
    return f"raydund-prune-width-{model}-{corpus}-minus{round(100 * fraction)}pct"


def lake_model_name(model: str) -> str:
    """The MLflow name of a model argument: a path's folder or file stem, else the name itself."""
    path = Path(model)
    if path.exists():
        return path.stem if path.is_file() else path.name
    return model.replace("/", "--")
