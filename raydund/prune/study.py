"""A depth-pruning study: criteria x blocks removed, evaluated on held-out text, tracked and registered.

1. Text: calibration sentences from the start of ``calibration_split``; the POS probe's
   training sentences right after them; evaluation sentences from the start of
   ``eval_split``; SST-2 dev for zero-shot accuracy. Calibration and evaluation text never
   overlap (checked; an overlap is a :class:`UserError`).
2. ``workers`` Ray actors each load the model once (:mod:`raydund.prune.workers`).
3. Choice of blocks for each (criterion, n): the residual-stream criteria from the full
   model's hidden states on the calibration text (one actor task), ``probe`` from the
   per-word states and labels, ``sleb`` by greedy search with one actor task per candidate.
4. Every distinct block set (and the full model) evaluated, one actor task each.
5. MLflow: a parent run, a child per (criterion, n) with ``ppl``/``sst2``/``pos``, a figure
   per criterion (blocks removed vs each metric) and one of all criteria's perplexity;
   the lake table ``prune_results``; per n the pruned model of lowest perplexity registered
   as a pyfunc model that generates text (:mod:`raydund.prune.registry`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from raydund.config import Settings
from raydund.errors import UserError
from raydund.prune import criteria as crit
from raydund.prune.config import StudyConfig
from raydund.prune.workers import Pool, StudyData, flat

log = logging.getLogger(__name__)

PRUNE_RESULTS = "prune_results"
#: The criterion raydund recommends (BENCHMARKS.md, "Depth pruning (issue 18)").
DEFAULT_CRITERION = "hybrid"
METRICS = ("ppl", "sst2", "pos")


@dataclasses.dataclass(kw_only=True)
class PruneConfig(StudyConfig):
    """A depth-pruning study of one causal LM (more fields: :class:`~raydund.prune.config.StudyConfig`).

    Attributes
    ----------
    corpus : str
        A catalog corpus with word-level labels (calibration, held-out text, POS probe).
    blocks : tuple of int
        Numbers of blocks to remove (``2,4,6,8``).
    criteria : tuple of str
        Among ``hybrid sleb shortgpt gromov last cka cka-debiased probe`` (see :mod:`raydund.prune.criteria`).
    metrics : tuple of str
        Among ``ppl sst2 pos``.
    label : str
        The corpus's word label for the probe criterion and the POS probe.
    calibration_sentences : int
        Calibration sentences (criteria read their hidden states).
    sleb_sentences : int
        The first calibration sentences SLEB scores each candidate on.
    eval_sentences : int
        Held-out sentences (perplexity; the POS probe's test words).
    probe_train_sentences : int
        Sentences after the calibration ones that train each pruned model's POS probe.
    sst2_sentences : int
        SST-2 dev sentences for zero-shot accuracy (0: all 872).
    probe_threshold : float
        Relative accuracy loss the probe criterion reports as "within".
    states : {"lake", "model"}
        Where the residual-stream and probe criteria read ``H[l]``: ``lake``, the per-word
        activations of the calibration split (extracted once if missing,
        :mod:`raydund.prune.states`); ``model``, a forward pass over every calibration token.
    device : {"auto", "cpu", "cuda"}
        Where the actors run the model: ``auto`` shares the Ray cluster's GPUs among them
        when it has any (the model in its saved dtype, e.g. bfloat16), else the CPU (float32).
    hybrid_windows : int
        Consecutive windows (of smallest angular distance) among ``hybrid``'s candidates.
    hybrid_rounds : int
        Rounds of ``hybrid``'s refinement (one block swapped per round).
    hybrid_finalists : int
        ``hybrid``'s best sets re-scored on all calibration sentences (:func:`raydund.prune.criteria.hybrid`).
    register : bool
        Register the best pruned model per n in MLflow.
    """

    blocks: tuple[int, ...] = (2, 4, 6, 8)
    criteria: tuple[str, ...] = ("hybrid", "sleb", "shortgpt", "gromov", "last", "cka", "cka-debiased", "probe")
    metrics: tuple[str, ...] = METRICS
    label: str = "upos"
    sleb_sentences: int = 64
    probe_train_sentences: int = 400
    sst2_sentences: int = 200
    probe_threshold: float = 0.01
    states: str = "lake"
    device: str = "auto"
    hybrid_windows: int = 3
    hybrid_rounds: int = 3
    hybrid_finalists: int = 3

    def __post_init__(self):
        super().__post_init__()
        bad = [c for c in self.criteria if c not in crit.ALL_CRITERIA]
        if bad:
            raise UserError(f"unknown criteria {bad}; known: {', '.join(crit.ALL_CRITERIA)}")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise UserError(f"unknown metrics {bad}; known: {', '.join(METRICS)}")
        if not self.blocks or min(self.blocks) < 1:
            raise UserError("--blocks: give numbers of blocks to remove, each >= 1")
        if self.states not in ("lake", "model"):
            raise UserError(f"states must be 'lake' or 'model', not {self.states!r}")
        if self.sleb_sentences > self.calibration_sentences:
            raise UserError("sleb_sentences must not exceed calibration_sentences")


def lake_model_name(model: str) -> str:
    """The lake/MLflow name of a model argument: a path's folder or file stem, else the name itself."""
    path = Path(model)
    if path.exists():
        return path.stem if path.is_file() else path.name
    return model.replace("/", "--")


def study_data(cfg: PruneConfig, settings: Settings) -> StudyData:
    """Read the study's text (see the module docstring) and check calibration and evaluation are disjoint."""
    from raydund.corpora import read_split
    from raydund.corpora.spec import load_spec
    from raydund.prune.evaluate import check_disjoint, join

    spec = load_spec(cfg.corpus)
    cal_table = read_split(spec, cfg.calibration_split, settings)
    ev_table = read_split(spec, cfg.eval_split, settings)
    if cfg.label not in cal_table.column_names:
        raise UserError(f"corpus {cfg.corpus} has no word label {cfg.label!r} (it has: "
                        f"{', '.join(c for c in cal_table.column_names if c not in ('sentence_id', 'words'))})")
    words, labels = cal_table.column("words").to_pylist(), cal_table.column(cfg.label).to_pylist()
    c, p = cfg.calibration_sentences, cfg.probe_train_sentences
    if len(words) < c + (p if "pos" in cfg.metrics else 0):
        raise UserError(f"{cfg.corpus}/{cfg.calibration_split} has {len(words)} sentences; "
                        f"the study needs {c} calibration + {p} probe-training ones")
    ev_words = ev_table.column("words").to_pylist()[: cfg.eval_sentences]
    ev_labels = ev_table.column(cfg.label).to_pylist()[: cfg.eval_sentences]
    check_disjoint(join(words[:c]), join(ev_words))
    sst_texts, sst_labels = [], []
    if "sst2" in cfg.metrics:
        sst = read_split(load_spec("sst2"), "dev", settings)
        n = cfg.sst2_sentences or sst.num_rows
        sst_texts = join(sst.column("words").to_pylist()[:n])
        sst_labels = [int(x) for x in sst.column("label").to_pylist()[:n]]
    return StudyData(calibration=words[:c], calibration_labels=labels[:c], evaluation=ev_words,
                     evaluation_labels=ev_labels, probe_train=words[c : c + p], probe_train_labels=labels[c : c + p],
                     sst2_texts=sst_texts, sst2_labels=sst_labels, sleb=cfg.sleb_sentences,
                     batch_size=cfg.batch_size)


class CalibrationScores:
    """Calibration perplexity of block sets, one actor task per set not scored before (memoised).

    ``sentences``: the first calibration sentences scored (``None``: SLEB's ``sleb_sentences``).
    """

    def __init__(self, pool, sentences: int | None = None):
        self.pool, self.sentences, self.cache = pool, sentences, {}

    def __call__(self, sets: list[tuple[int, ...]]) -> list[float]:
        new = [s for s in dict.fromkeys(tuple(sorted(x)) for x in sets) if s not in self.cache]
        if new:
            # blocks every new set drops (a SLEB step: the greedy set so far): each actor runs the
            # model without them once, and each set's forward resumes at its first other block
            base = tuple(sorted(set.intersection(*map(set, new)))) if len(new) > 1 else ()
            args = [(s, self.sentences, base) for s in new]
            self.cache.update(zip(new, self.pool.map("calibration_perplexity", args)))
        return [self.cache[tuple(sorted(x))] for x in sets]


def cheap_choices(cfg: PruneConfig, pool, states, candidates: dict) -> tuple[dict, dict]:
    """``{(criterion, n): blocks}`` of the residual-stream criteria and ``probe`` (those asked for), and details.

    ``states(words)`` returns the criteria's ``H[l]`` and, per row, the word labels
    (``words``: per word, as the probe needs; see :mod:`raydund.prune.states`). ``candidates``
    (n -> block sets) collects what ``hybrid`` starts from: with ``hybrid`` asked for, every
    residual-stream criterion's choice and the :data:`PruneConfig.hybrid_windows` best
    consecutive windows, and the probe's choice when it runs.
    """
    chosen, details = {}, {}
    hybrid = "hybrid" in cfg.criteria
    wanted = [c for c in crit.STATE_CRITERIA if c in cfg.criteria or hybrid]
    if not wanted and "probe" not in cfg.criteria:
        return chosen, details
    start = time.perf_counter()
    H, _ = states()
    details["hidden_states"] = {"seconds": time.perf_counter() - start, "rows": int(len(H[0])), "source": cfg.states}
    for c in wanted:
        start = time.perf_counter()
        for n, blocks in crit.by_states(c, H, cfg.blocks).items():
            candidates.setdefault(n, []).append(blocks)
            if c in cfg.criteria:
                chosen[c, n] = blocks
        details[c] = {"seconds": time.perf_counter() - start}
    if hybrid:
        for n in cfg.blocks:
            candidates[n].extend(crit.windows(H, n, cfg.hybrid_windows))
    details["scores"] = {"block_influence": crit.block_influence(H).tolist()}
    if "probe" in cfg.criteria:
        start = time.perf_counter()
        order, acc, within = crit.probe_greedy(*states(words=True), max(cfg.blocks), cfg.probe_threshold)
        for n in cfg.blocks:
            chosen["probe", n] = sorted(order[:n])
            candidates.setdefault(n, []).append(chosen["probe", n])
        details["probe"] = {"order": order, "accuracy": acc, "within_threshold": within,
                            "seconds": time.perf_counter() - start}
    return chosen, details


def search_choices(cfg: PruneConfig, pool, total: int, candidates: dict) -> tuple[dict, dict]:
    """``{(criterion, n): blocks}`` of ``sleb`` and ``hybrid`` (those asked for), and details.

    SLEB's greedy search also runs for ``hybrid`` alone (its choice is a candidate). Both
    score sets through one memoised :class:`CalibrationScores`: a set SLEB scored is not
    scored again.
    """
    chosen, details = {}, {}
    scores = CalibrationScores(pool)
    if "sleb" in cfg.criteria or "hybrid" in cfg.criteria:
        start = time.perf_counter()

        def mapper(_score, sets):
            values = scores(sets)
            log.info("sleb: step %d, %d candidates, best calibration ppl %.2f (%.0f s)", len(sets[0]), len(sets),
                     min(values), time.perf_counter() - start)
            return values

        order, trace = crit.greedy_search(None, total, max(cfg.blocks), mapper=mapper)
        for n in cfg.blocks:
            candidates.setdefault(n, []).append(sorted(order[:n]))
            if "sleb" in cfg.criteria:
                chosen["sleb", n] = sorted(order[:n])
        details["sleb"] = {"order": order, "calibration_ppl": trace, "seconds": time.perf_counter() - start}
    if "hybrid" in cfg.criteria:
        start = time.perf_counter()
        final = CalibrationScores(pool, cfg.calibration_sentences)
        details["hybrid"] = {"n": {}}
        for n in cfg.blocks:
            chosen["hybrid", n], d = crit.hybrid(scores, final, candidates[n], total, cfg.hybrid_rounds,
                                                 cfg.hybrid_finalists)
            finalists = {",".join(map(str, k)): v for k, v in d["final"].items()}
            details["hybrid"]["n"][n] = {"scored": len(d["search"]), "finalists": finalists}
            log.info("hybrid: n=%d, %d sets scored, finalists %s -> %s (%.0f s)", n, len(d["search"]), finalists,
                     chosen["hybrid", n], time.perf_counter() - start)
        details["hybrid"]["seconds"] = time.perf_counter() - start
    return chosen, details


def evaluate_sets(cfg: PruneConfig, pool, chosen: dict, done: dict | None = None) -> tuple[list[dict], float]:
    """One row per (criterion, n) plus the full model (criterion ``none``, n 0); seconds taken.

    ``done``: block set -> results already measured (filled with the new ones).
    """
    done = {} if done is None else done
    distinct = sorted(({tuple(b) for b in chosen.values()} | {()}) - set(done))
    start = time.perf_counter()
    log.info("evaluating %d distinct block sets (%s)", len(distinct), ", ".join(cfg.metrics))
    values = []
    for s, v in zip(distinct, pool.imap("evaluate", [(s, cfg.metrics) for s in distinct])):
        log.info("evaluated without blocks %s: %s (%.0f s)", list(s), {k: round(x, 4) for k, x in v.items()},
                 time.perf_counter() - start)
        values.append(v)
    done.update(zip(distinct, values))
    results = done
    seconds = time.perf_counter() - start
    log.info("evaluated in %.0f s", seconds)
    rows = [{"criterion": "none", "n": 0, "blocks": [], **results[()]}]
    for (c, n), b in sorted(chosen.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rows.append({"criterion": c, "n": n, "blocks": list(b), **results[tuple(b)]})
    return rows, seconds


def run_study(cfg: PruneConfig, settings: Settings, pool_factory=None) -> dict:
    """Run the study (see the module docstring); returns rows, details, registered URIs and run ids.

    ``pool_factory(data) -> pool``: evaluators to use instead of Ray actors (tests pass one
    making a :class:`~raydund.prune.workers.LocalPool`).
    """
    from raydund.prune import track

    wall = time.perf_counter()
    data = study_data(cfg, settings)
    if pool_factory is None:
        from raydund.extract.job import ensure_ray

        def pool_factory(data):
            return Pool(ensure_ray(), cfg.model, data, cfg.workers, cfg.threads, cfg.device)

    if cfg.states == "lake":
        @functools.cache
        def from_lake():
            from raydund.prune.states import lake_states

            return lake_states(cfg.model, cfg.corpus, cfg.calibration_split, data.calibration, settings,
                               data.calibration_labels)

        def states(words: bool = False):  # per word either way
            return from_lake()
    else:
        def states(words: bool = False):
            return pool.one("states", words), flat(data.calibration_labels) if words else None

    pool = pool_factory(data)
    pool.data = data
    try:
        total = pool.one("num_blocks")
        for n in cfg.blocks:
            if n >= total:
                raise UserError(f"cannot remove {n} of the model's {total} blocks")
        # the cheap criteria first, evaluated, then the searches (a long study shows results early)
        candidates: dict = {}
        chosen, details = cheap_choices(cfg, pool, states, candidates)
        done: dict = {}
        rows, eval_seconds = evaluate_sets(cfg, pool, chosen, done)
        more, more_details = search_choices(cfg, pool, total, candidates)
        if more:
            chosen.update(more)
            details.update(more_details)
            rows, more_seconds = evaluate_sets(cfg, pool, chosen, done)
            eval_seconds += more_seconds
        details["evaluation"] = {"seconds": eval_seconds}
        best = best_per_n(rows)
        out = track.record(cfg, settings, rows, details, best, pool, total, lake_model_name(cfg.model))
    finally:
        pool.close()
    out.update(rows=rows, details=details, best=best, seconds=time.perf_counter() - wall, blocks_total=total)
    return out


def best_per_n(rows: list[dict]) -> dict[int, dict]:
    """Per n, the row of lowest perplexity (ties: the criterion first in name order)."""
    best: dict[int, dict] = {}
    for r in rows:
        if r["n"] and "ppl" in r and (r["n"] not in best or r["ppl"] < best[r["n"]]["ppl"]):
            best[r["n"]] = r
    return best


def results_table(model: str, corpus: str, rows: list[dict]) -> pa.Table:
    """Lake rows: (model, corpus, criterion, n, blocks, metric, value)."""
    out = [(r["criterion"], r["n"], ",".join(map(str, r["blocks"])), m, float(r[m]))
           for r in rows for m in METRICS if m in r]
    cols = list(zip(*out)) if out else [[]] * 5
    return pa.table({"model": pa.array([model] * len(out), pa.string()),
                     "corpus": pa.array([corpus] * len(out), pa.string()),
                     "criterion": pa.array(cols[0], pa.string()), "n": pa.array(cols[1], pa.int32()),
                     "blocks": pa.array(cols[2], pa.string()), "metric": pa.array(cols[3], pa.string()),
                     "value": pa.array(cols[4], pa.float64())})


def format_table(rows: list[dict]) -> str:
    """The study as text: one line per (criterion, n), the default criterion marked ``*``."""
    head = f"{'criterion':<13} {'n':>2} {'ppl':>9} {'sst2':>6} {'pos':>6}  blocks dropped"
    lines = [head]
    for r in sorted(rows, key=lambda r: (r["n"], r.get("ppl", 0.0))):
        mark = "*" if r["criterion"] == DEFAULT_CRITERION else " "
        ppl = f"{r['ppl']:9.2f}" if "ppl" in r else f"{'':9}"
        sst = f"{100 * r['sst2']:6.1f}" if "sst2" in r else f"{'':6}"
        pos = f"{100 * r['pos']:6.1f}" if "pos" in r else f"{'':6}"
        lines.append(f"{r['criterion'] + mark:<13} {r['n']:>2} {ppl} {sst} {pos}  {','.join(map(str, r['blocks']))}")
    return "\n".join(lines)


def registration_folder() -> tempfile.TemporaryDirectory:
    """Where a pruned model is saved before MLflow copies it."""
    return tempfile.TemporaryDirectory(prefix="raydund-prune-")
