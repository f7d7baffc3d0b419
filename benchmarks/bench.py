"""``raydund bench`` (except ``extract``, in :mod:`benchmarks.extract`): raydund's stages side by side
with their baselines (NeuroX 1.0.9, the hardware floor), time and peak memory."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import platform
import time

import numpy as np
import torch

from raydund.config import Settings
from raydund.errors import UserError

log = logging.getLogger(__name__)


class PeakMemory:
    """Samples the memory (PSS: shared pages split among the processes mapping them, so Ray's
    shared-memory object store is not counted twice) of this process and Ray's workers
    (``ray::``) every 0.5 s (reading PSS costs CPU: sample rarely).

    ``peak_work`` is the largest sum over this process and the workers; ``peak_all``
    also counts Ray's own daemons (raylet, GCS, ...); ``baseline`` is the first sample
    (the libraries this process has imported, idle workers), so ``peak_work - baseline``
    is what the measured work added; ``peak_process`` is the largest single process (the
    driver or one worker).

    ``tree=True`` counts this process and ALL its descendants whatever their names (its
    own local Ray: raylet and its object store pages, GCS, every worker) and nothing
    else on the machine: ``peak_work`` is then the peak of the whole process tree.
    """

    def __init__(self, interval: float = 0.5, own_only: bool = False, tree: bool = False):
        import threading

        self.interval, self.peak_work, self.peak_all, self.baseline = interval, 0, 0, None
        self.peak_process = 0
        #: only this process's descendants (its own local Ray), not other users' ``ray::`` processes
        self.own_only = own_only or tree
        self.tree = tree
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        import psutil

        me = psutil.Process()
        work = me.memory_full_info().pss
        largest = work
        infra = 0
        procs = me.children(recursive=True) if self.own_only else psutil.process_iter(["name", "cmdline"])
        for proc in procs:
            try:
                if proc.pid == me.pid:
                    continue
                info = proc.info if hasattr(proc, "info") else proc.as_dict(["name", "cmdline"])
                cmd = " ".join(info["cmdline"] or [])
                if self.tree or info["name"] and info["name"].startswith("ray::") or cmd.startswith("ray::"):
                    pss = proc.memory_full_info().pss
                    work += pss
                    largest = max(largest, pss)
                elif "ray" in cmd and ("raylet" in cmd or "gcs_server" in cmd or "dashboard" in cmd
                                       or "default_worker" in cmd or "log_monitor" in cmd):
                    infra += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if self.baseline is None:
            self.baseline = work
        self.peak_work = max(self.peak_work, work)
        self.peak_process = max(self.peak_process, largest)
        self.peak_all = max(self.peak_all, work + infra)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def corpus_split(lake, settings: Settings, corpus: str, split: str):
    """A corpus split from the lake, ingesting it first when the lake lacks it."""
    try:
        return lake.read_corpus(corpus, split)
    except UserError:
        from raydund.corpora.job import ingest

        ingest(corpus, settings, [split])
        return lake.read_corpus(corpus, split)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def floor_syrk(tokens: int, widths: tuple[int, ...], chunk: int = 4096, seed: int = 0) -> float:
    """Seconds of ``sum_chunks D^T D`` in float64 over data of the given size (products only)."""
    from benchmarks.synthetic import structured_chunk

    rng = np.random.default_rng(seed)
    N = sum(widths)
    mixing = rng.standard_normal((64, N), dtype=np.float32)
    means = rng.uniform(-3, 3, N).astype(np.float32)
    G = np.zeros((N, N))
    seconds = 0.0
    for start in range(0, tokens, chunk):
        D = structured_chunk(rng, min(chunk, tokens - start), widths, mixing, means).astype(np.float64)
        t0 = time.perf_counter()
        G += D.T @ D  # NumPy dispatches a transposed self-product to BLAS syrk
        seconds += time.perf_counter() - t0
    return seconds


def bench_similarity(settings: Settings, model: str = "minilm", corpus: str = "conll2000", split: str = "train",
                     paper_tokens: int = 150_000, paper_layers: int = 13, paper_hidden: int = 768,
                     threshold: float = 0.3, parts: tuple[str, ...] = ("minilm", "paper"),
                     out: str | None = None) -> dict:
    """General redundancy: the streaming job vs NeuroX's clustering, and vs the SYRK floor at paper scale."""
    from raydund.extract.job import ensure_ray
    from raydund.lake import Lake

    lake = Lake(settings)
    ensure_ray()
    figures: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}"}

    if "minilm" in parts:
        figures["minilm"] = _similarity_vs_neurox(lake, model, corpus, split, threshold)
    if "paper" in parts:
        figures["paper"] = _similarity_vs_floor(lake, paper_tokens, (paper_hidden,) * paper_layers)
    print(json.dumps(figures, indent=2))
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)
    return figures


def _similarity_vs_neurox(lake, model: str, corpus: str, split: str, threshold: float) -> dict:
    """MiniLM scale: real activations, the raydund pass + one cut vs NeuroX create_correlation_clusters."""
    from raydund.general.clustering import CorrelationClustering
    from raydund.general.similarity import similarity
    from raydund.general.stream import SimilarityConfig, compute_moments, layer_of

    cfg = SimilarityConfig(model=model, corpus=corpus, split=split)

    def ours():
        sim = similarity(compute_moments(lake, cfg, progress=False))
        return CorrelationClustering(thresholds=(threshold,)).fit(sim.r, layer_of(sim.widths), sim.constant), sim

    with PeakMemory(tree=True) as mem:
        (cc, sim), t_ours = _timed(ours)
    result = {"tokens": sim.n, "neurons": len(sim.constant), "raydund_s": round(t_ours, 1),
              "raydund_peak_gb": round(mem.peak_work / 2**30, 2),
              "raydund_added_gb": round((mem.peak_work - mem.baseline) / 2**30, 2),
              "raydund_clusters": int(cc.summary_[0]["clusters"]), "constant_neurons": int(sim.constant.sum())}
    try:
        from neurox.interpretation.clustering import create_correlation_clusters
    except ImportError:
        create_correlation_clusters = None
    if create_correlation_clusters is not None:
        (X, t_load) = _timed(lambda: np.hstack([lake.layer_matrix(model, corpus, split, l)[0]
                                                for l in range(len(sim.widths))]))
        with PeakMemory(tree=True) as mem, contextlib.redirect_stdout(io.StringIO()):
            labels, t_nx = _timed(lambda: create_correlation_clusters(
                X, use_abs_correlation=True, clustering_threshold=threshold, method="average"))
        result.update(neurox_s=round(t_nx, 1), neurox_load_s=round(t_load, 1),
                      neurox_peak_gb=round(mem.peak_work / 2**30, 2),
                      neurox_added_gb=round((mem.peak_work - mem.baseline) / 2**30, 2),
                      neurox_clusters=int(len(np.unique(labels))),
                      speedup=round(t_nx / t_ours, 2), speedup_with_load=round((t_nx + t_load) / t_ours, 2))
        del X
    return result


def _similarity_vs_floor(lake, paper_tokens: int, widths: tuple[int, ...]) -> dict:
    """Paper scale: synthetic activations through the lake, against the float64 SYRK floor.

    Memory is the PSS of the whole process tree (this process and all its descendants:
    its local Ray's daemons, object store and workers; nothing else on the machine), as
    added to the tree before the pass: for the pass, and for the pass followed by r and
    CKA (G becomes r in place: the N x N output).
    """
    from benchmarks.synthetic import write_activations
    from raydund.general.similarity import similarity
    from raydund.general.stream import SimilarityConfig, compute_moments

    _, t_write = _timed(lambda: write_activations(lake, model="synthetic", corpus="paper", split="bench",
                                                  tokens=paper_tokens, widths=widths))
    cfg = SimilarityConfig(model="synthetic", corpus="paper", split="bench")
    # the floor before AND after the pass: on a shared machine the load moves within minutes
    t_floor_before = floor_syrk(paper_tokens, widths)
    load = os.getloadavg()[0]
    with PeakMemory(tree=True) as mem:
        moments, t_job = _timed(lambda: compute_moments(lake, cfg, progress=False))
        pass_peak = mem.peak_work
        start = time.perf_counter()
        n = similarity(moments, inplace=True).n  # r (in G's place) is dropped with the moments below
        t_stats = time.perf_counter() - start
    moments = None
    n2 = sum(widths) ** 2 * 8
    load_after = os.getloadavg()[0]
    t_floor_after = floor_syrk(paper_tokens, widths)
    t_floor = (t_floor_before + t_floor_after) / 2
    return {"tokens": n, "neurons": sum(widths), "write_s": round(t_write, 1),
            "raydund_s": round(t_job, 1), "floor_syrk_s": round(t_floor, 1),
            "floor_before_s": round(t_floor_before, 1), "floor_after_s": round(t_floor_after, 1),
            "ratio_vs_floor": round(t_job / t_floor, 2), "r_and_cka_s": round(t_stats, 1),
            "tree_baseline_gb": round(mem.baseline / 2**30, 2),
            "added_gb": round((pass_peak - mem.baseline) / 2**30, 2),
            "added_with_r_cka_gb": round((mem.peak_work - mem.baseline) / 2**30, 2),
            "largest_process_gb": round(mem.peak_process / 2**30, 2),
            "nxn_float64_gb": round(n2 / 2**30, 2),
            "load_before": round(load, 2), "load_after": round(load_after, 2)}




def bench_probes(settings: Settings, model: str = "minilm", corpus: str = "conll2000", label: str = "pos",
                 train_tokens: int = 50_000, out: str | None = None, threads: int | None = None,
                 precision: str = "auto") -> dict:
    """Layer-wise analysis + minimal-set search: raydund's probe banks vs NeuroX one probe at a time.

    Both run in this process with the same torch threads (``threads``, default all CPUs),
    raydund before and after NeuroX (its time is the mean of the two).

    Same settings for both (the paper's: ElasticNet 1e-5/1e-5, Adam 1e-3, batch 128, 10
    epochs), same rows (the first ``train_tokens`` tokens of train), same probes.
    ``precision`` is the type of raydund's training products (NeuroX: float32).
    """
    from raydund.lake import Lake
    from raydund.probes import analysis
    from raydund.probes.data import TaskData, layer_masks
    from raydund.probes.job import ProbeConfig, load_splits

    torch.set_num_threads(threads or os.cpu_count())
    cfg = ProbeConfig(model=model, corpus=corpus, label=label, precision=precision)
    splits = load_splits(Lake(settings), cfg)
    tr = splits.train  # the class list is made from the rows actually trained on
    splits = analysis.make_splits(TaskData(tr.X[:train_tokens], tr.labels[:train_tokens], tr.words[:train_tokens],
                                           tr.widths), splits.dev, splits.test, cfg.task)
    ps = cfg.settings()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # warm-up: the first optimiser imports ~800 modules

    def ours():
        layer = analysis.layerwise(splits, ps)
        oracle = next(r for r in layer["rows"] if r["probe"] == "oracle")["dev"]["accuracy"]
        ranks = analysis.rankings(splits, layer["oracle_weights"])
        return layer, analysis.minimal_set(splits, ps, ranks["lca"], oracle), ranks

    cpu0 = time.process_time()
    (layer, minimal, ranks), t_ours = _timed(ours)
    cpu_ours = time.process_time() - cpu0
    masks, names = layer_masks(splits.train.widths)
    masks = list(masks) + list(analysis.masks_for(ranks["lca"], [r["k"] for r in minimal["rows"]],
                                                  splits.train.X.shape[1]))
    ours_test = [r["test"]["accuracy"] for r in layer["rows"]] + [r["test"]["accuracy"] for r in minimal["rows"]]
    result = {"train_tokens": len(splits.train.X), "neurons": splits.train.X.shape[1],
              "classes": len(splits.classes), "probes": len(masks), "raydund_s": round(t_ours, 1),
              "raydund_cpu_s": round(cpu_ours, 1), "load_average_1min": round(os.getloadavg()[0], 2),
              "threads": torch.get_num_threads(), "precision": precision,
              "precision_resolved": layer["bank"].precision_}
    log.info("raydund: %s", json.dumps(result))
    try:
        from neurox.interpretation import linear_probe
    except ImportError:
        linear_probe = None
    if linear_probe is not None:
        y_train = splits.targets(splits.train)
        scored = {}  # NeuroX scores known labels only; the rows are picked once, before the clock
        for name in ("dev", "test"):
            part, y = getattr(splits, name), splits.targets(getattr(splits, name))
            scored[name] = (part.X[y >= 0], y[y >= 0], float(np.mean(y >= 0)))

        def accuracy(probe, name, mask):
            X, y, known = scored[name]
            acc = linear_probe.evaluate_probe(probe, X[:, mask], y, batch_size=ps.batch_size)["__OVERALL__"]
            return acc * known  # unseen labels count as errors, as in raydund

        def neurox_all():  # dev scores too: the analysis reads them (share of the oracle, the chosen k)
            accs = []
            for mask in masks:
                with contextlib.redirect_stdout(io.StringIO()):
                    probe = linear_probe.train_logistic_regression_probe(
                        splits.train.X[:, mask], y_train, lambda_l1=ps.l1, lambda_l2=ps.l2,
                        num_epochs=ps.epochs, batch_size=ps.batch_size, learning_rate=ps.lr)
                    accuracy(probe, "dev", mask)
                    accs.append(accuracy(probe, "test", mask))
            return accs

        cpu0 = time.process_time()
        nx_test, t_nx = _timed(neurox_all)
        cpu_nx = time.process_time() - cpu0
        # raydund once more after NeuroX: the machine's speed drifts over a minute, so its time is the
        # mean of the runs on either side (the second should give the same answers: every choice is seeded)
        cpu0 = time.process_time()
        (layer2, minimal2, _), t_again = _timed(ours)
        cpu_again = time.process_time() - cpu0
        tests_of = lambda lay, mini: [r["test"] for r in lay["rows"] + mini["rows"]]  # noqa: E731
        same = tests_of(layer2, minimal2) == tests_of(layer, minimal)
        runs = (t_ours, t_again)
        t_ours, cpu_ours = sum(runs) / 2, (cpu_ours + cpu_again) / 2
        diffs = 100 * np.abs(np.array(ours_test) - np.array(nx_test))
        result.update(raydund_s=round(t_ours, 1), raydund_runs_s=[round(t, 1) for t in runs],
                      second_run_same_answers=same,
                      raydund_cpu_s=round(cpu_ours, 1),
                      neurox_s=round(t_nx, 1), speedup=round(t_nx / t_ours, 2), neurox_cpu_s=round(cpu_nx, 1),
                      cpu_speedup=round(cpu_nx / cpu_ours, 2), load_average_1min_after=round(os.getloadavg()[0], 2),
                      max_test_accuracy_diff_points=round(float(diffs.max()), 2),
                      mean_test_accuracy_diff_points=round(float(diffs.mean()), 2),
                      oracle_test_accuracy=round(100 * ours_test[names.index("oracle")], 2),
                      neurox_oracle_test_accuracy=round(100 * nx_test[names.index("oracle")], 2))
    print(json.dumps(result, indent=2))
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return result


def bench_probe_workers(settings: Settings, model: str = "minilm", corpus: str = "conll2000", label: str = "pos",
                        train_tokens: int = 50_000, workers: tuple[int, ...] = (1, 2), epochs: int = 10,
                        out: str | None = None) -> dict:
    """The probe job (``raydund probe``, no control task) with 1 and more layer-block workers.

    Per run: seconds, the peak memory of the largest single process (the driver or one
    actor: what must fit on one node) and of all of them together.
    """
    from raydund.extract.job import ensure_ray
    from raydund.probes.job import ProbeConfig, run_probes

    ensure_ray()
    rows = []
    for n in workers:
        cfg = ProbeConfig(model=model, corpus=corpus, label=label, train_limit=train_tokens, control=False,
                          epochs=epochs, workers=n)
        with PeakMemory(own_only=True) as mem:
            result, seconds = _timed(lambda: run_probes(cfg, settings))
        oracle = next(r for r in result["layerwise"] if r["probe"] == "oracle")
        rows.append({"workers": n, "seconds": round(seconds, 1), "peak_process_gb": round(mem.peak_process / 1e9, 2),
                     "peak_all_gb": round(mem.peak_work / 1e9, 2), "baseline_gb": round(mem.baseline / 1e9, 2),
                     "oracle_test_accuracy": round(100 * oracle["test"]["accuracy"], 2),
                     "minimal_set": result["minimal"]["k"]})
        log.info("probe workers: %s", json.dumps(rows[-1]))
    result = {"train_tokens": train_tokens, "epochs": epochs, "runs": rows}
    print(json.dumps(result, indent=2))
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return result


def bench_scaling(settings: Settings, model: str = "minilm", corpus: str = "conll2000", split: str = "train",
                  words: tuple[int, ...] = (10_000, 20_000, 40_000), pool_sizes: tuple[int, ...] = (1, 2),
                  shard_words: int = 5_000, out: str | None = None) -> dict:
    """Scaling: words/s and peak memory of extraction and of the correlation pass at growing sizes.

    For every size in ``words`` (a prefix of the split, whole sentences), one extraction
    (1 actor, all cores) and one similarity pass (co-moments of all neurons) run with
    :class:`PeakMemory` sampling this process and every Ray worker. Then, at the largest
    size, the same two jobs with 1 and 2 Ray worker processes (``pool_sizes`` actors with
    cores / actors torch threads; similarity tasks of 2 or 1 CPUs). Linear scaling shows as
    a constant words/s and a flat peak memory.
    """
    from raydund.extract.job import ExtractConfig, ensure_ray, run_extraction
    from raydund.general.stream import SimilarityConfig, compute_moments
    from raydund.lake import Lake

    lake = Lake(settings)
    table = corpus_split(lake, settings, corpus, split)
    lengths = np.cumsum([len(s) for s in table.column("words").to_pylist()])
    cores = os.cpu_count() or 1
    ensure_ray()

    def extract(n_words: int, pool: int) -> dict:
        limit = int(np.searchsorted(lengths, n_words) + 1)
        cfg = ExtractConfig(model=model, corpus=corpus, split=split, limit=limit, shard_words=shard_words,
                            pool_size=pool, threads=max(1, cores // pool), fresh=True)
        with PeakMemory() as mem:
            result, seconds = _timed(lambda: run_extraction(cfg, settings, progress=False))
        return {"words": result.words, "sentences": limit, "shards": -(-result.words // shard_words),
                "seconds": round(seconds, 1), "words_per_s": round(result.words / seconds, 1),
                "peak_gb": round(mem.peak_work / 2**30, 2),
                "added_gb": round((mem.peak_work - mem.baseline) / 2**30, 2),
                "bytes": result.bytes}

    def correlate(cpus_per_task: float) -> dict:
        cfg = SimilarityConfig(model=model, corpus=corpus, split=split, cpus_per_task=cpus_per_task)
        with PeakMemory() as mem:
            moments, seconds = _timed(lambda: compute_moments(lake, cfg, progress=False))
        return {"tokens": moments.n, "neurons": int(sum(moments.widths)), "seconds": round(seconds, 1),
                "words_per_s": round(moments.n / seconds, 1), "peak_gb": round(mem.peak_work / 2**30, 2),
                "added_gb": round((mem.peak_work - mem.baseline) / 2**30, 2)}

    figures: dict = {"machine": f"{platform.machine()}, {cores} cores, torch {torch.__version__}",
                     "model": model, "corpus": f"{corpus}/{split}", "shard_words": shard_words,
                     "sizes": [], "workers": []}
    for n_words in sorted(words):
        row = {"target_words": n_words, "extract": extract(n_words, 1), "similarity": correlate(1)}
        figures["sizes"].append(row)
        log.info("scaling %s", row)
    largest = max(words)
    for pool in pool_sizes:
        # pool actors share the cores; similarity: `pool` tasks of cores / pool CPUs each
        figures["workers"].append({"workers": pool, "extract": extract(largest, pool),
                                   "similarity": correlate(max(1, cores // pool))})
    print(f"{'words':>8} {'extract w/s':>12} {'peak GB':>8} {'similarity w/s':>15} {'peak GB':>8}")
    for row in figures["sizes"]:
        e, s = row["extract"], row["similarity"]
        print(f"{e['words']:>8} {e['words_per_s']:>12,.0f} {e['peak_gb']:>8.2f} {s['words_per_s']:>15,.0f} "
              f"{s['peak_gb']:>8.2f}")
    for row in figures["workers"]:
        e, s = row["extract"], row["similarity"]
        print(f"{row['workers']} worker(s) at {e['words']} words: extract {e['words_per_s']:,.0f} w/s, "
              f"similarity {s['words_per_s']:,.0f} w/s")
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)
    return figures


def large_model(settings: Settings, layers: int = 24, hidden: int = 1024, heads: int = 16,
                intermediate: int = 4096, seed: int = 0) -> str:
    """A BERT-large-shaped model with random weights, saved once under ``RAYDUND_HOME/models``.

    ``transformers.BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
    intermediate_size=4096)``: the compute and memory of ``bert-large-cased`` without its
    weights (none can be fetched here), with the MiniLM catalog model's WordPiece tokenizer
    (vocabulary 30,522) so CoNLL-2000 sentences tokenise as a real BERT's would. Returns the folder.
    """
    from transformers import AutoTokenizer, BertConfig, BertModel

    from raydund.extract.encoder import resolve_model

    folder = settings.home / "models" / f"bert-large-random-l{layers}-h{hidden}"
    if (folder / "config.json").exists():
        return str(folder)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm").source, use_fast=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate)
    tmp = folder.with_name(folder.name + ".tmp")
    BertModel(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)  # complete or absent
    return str(folder)


def bench_large(settings: Settings, words: tuple[int, ...] = (20_000,), corpus: str = "conll2000", label: str = "pos",
                eval_words: int | None = None, batch_size: int = 16, shard_words: int = 5_000,
                stages: tuple[str, ...] = ("extract", "similarity", "cluster", "probes"),
                memory_limit_gb: float | None = 20.0, out: str | None = None) -> dict:
    """The whole analysis on a BERT-large-shaped model (25 hidden states x 1024 = 25,600 neurons).

    For every size in ``words`` (a prefix of the corpus's train split, whole sentences):
    extraction into the lake (train, plus ``eval_words`` of dev and of test for the probes;
    default a tenth of the size), the streaming co-moment pass with r and all-layer CKA
    (``raydund similarity``'s job), the correlation-clustering sweep on all neurons
    (``raydund cluster``'s job) and the layer-wise probes (25 layers, the oracle, the
    prefixes; in process, all cores). Each stage is timed and its peak memory sampled
    (:class:`PeakMemory`: this process and Ray's workers, PSS), next to its memory plan.
    ``memory_limit_gb`` sets ``RAYDUND_MEMORY_LIMIT_GB`` (the issue's 20 GB) unless it is
    set already. The JSON is rewritten after every stage, so a long run leaves partial figures.
    """
    from raydund import memory
    from raydund.extract.job import ExtractConfig, ensure_ray, run_extraction
    from raydund.general.job import ClusterConfig, run_clustering, run_similarity
    from raydund.general.stream import SimilarityConfig
    from raydund.lake import Lake
    from raydund.probes import analysis
    from raydund.probes.job import ProbeConfig, load_splits

    if memory_limit_gb and not os.environ.get("RAYDUND_MEMORY_LIMIT_GB"):
        os.environ["RAYDUND_MEMORY_LIMIT_GB"] = str(memory_limit_gb)
    lake = Lake(settings)
    tables = {}
    for split in ("train", "dev", "test"):
        try:
            tables[split] = lake.read_corpus(corpus, split)
        except UserError:
            from raydund.corpora.job import ingest

            ingest(corpus, settings, ["train", "dev", "test"])
            tables[split] = lake.read_corpus(corpus, split)
    lengths = {s: np.cumsum([len(x) for x in t.column("words").to_pylist()]) for s, t in tables.items()}
    folder = large_model(settings)
    model = os.path.basename(folder)
    cores = os.cpu_count() or 1
    ensure_ray()
    figures: dict = {"machine": f"{platform.machine()}, {cores} cores, {memory.total_ram() / 1e9:.1f} GB RAM, "
                                f"torch {torch.__version__}, numpy {np.__version__}",
                     "model": "BertConfig(hidden 1024, 24 layers, 16 heads, intermediate 4096), random weights",
                     "neurons": 25 * 1024, "memory_limit_gb": memory.memory_limit() / 1e9, "sizes": []}

    def save():
        if out:
            with open(out, "w", encoding="utf-8") as fh:
                json.dump(figures, fh, indent=2)

    def measured(fn):
        with PeakMemory(own_only=True) as mem:  # the machine is shared: count this run's processes only
            result, seconds = _timed(fn)
        return result, {"seconds": round(seconds, 1), "peak_gb": round(mem.peak_work / 1e9, 2),
                        "added_gb": round((mem.peak_work - mem.baseline) / 1e9, 2),
                        "peak_gb_with_ray_daemons": round(mem.peak_all / 1e9, 2)}

    for n_words in sorted(words):
        row: dict = {"target_words": n_words}
        figures["sizes"].append(row)
        limits = {"train": int(np.searchsorted(lengths["train"], n_words) + 1)}
        n_eval = eval_words or max(1_000, n_words // 10)
        for s in ("dev", "test"):
            limits[s] = int(np.searchsorted(lengths[s], n_eval) + 1)
        row["words"] = {s: int(lengths[s][min(limits[s], len(lengths[s])) - 1]) for s in limits}
        if "extract" in stages:
            def extract_all():
                out_ = {}
                for s, limit in limits.items():
                    cfg = ExtractConfig(model=folder, corpus=corpus, split=s, limit=limit, batch_size=batch_size,
                                        shard_words=shard_words, threads=cores, fresh=True)
                    t0 = time.perf_counter()
                    res = run_extraction(cfg, settings, progress=False)
                    out_[s] = {"words": res.words, "seconds": round(time.perf_counter() - t0, 1), "bytes": res.bytes}
                return out_

            parts, row["extract"] = measured(extract_all)
            row["extract"]["splits"] = parts
            row["extract"]["train_words_per_s"] = round(parts["train"]["words"] / parts["train"]["seconds"], 1)
            log.info("large %d words: extract %s", n_words, row["extract"])
            save()
        tokens = row["words"]["train"]
        if "similarity" in stages:
            plan = memory.similarity_plan(25 * 1024, 25, tokens, 1)
            res, row["similarity"] = measured(lambda: run_similarity(
                SimilarityConfig(model=model, corpus=corpus, split="train"), settings, progress=False))
            row["similarity"].update(planned_peak_gb=round(plan.peak / 1e9, 2), tokens=res["tokens"],
                                     cka_adjacent_mean=round(res["cka_adjacent_mean"], 4))
            del res
            log.info("large %d words: similarity %s", n_words, row["similarity"])
            save()
        if "cluster" in stages:
            plan = memory.clustering_plan(25 * 1024, 25)
            cc, row["cluster"] = measured(lambda: run_clustering(
                ClusterConfig(model=model, corpus=corpus, split="train"), settings))
            row["cluster"].update(planned_peak_gb=round(plan.peak / 1e9, 2),
                                  clusters={f"{r['threshold']:.1f}": r["clusters"] for r in cc.summary_})
            del cc
            log.info("large %d words: cluster %s", n_words, row["cluster"])
            save()
        if "probes" in stages:
            torch.set_num_threads(cores)
            cfg = ProbeConfig(model=model, corpus=corpus, label=label)

            def probes():
                from raydund.probes.job import check_memory

                check_memory(lake, dataclasses.replace(cfg, control=False), object_store=False)  # in process
                splits = load_splits(lake, cfg)
                return analysis.layerwise(splits, cfg.settings()), splits.train.X.shape

            (layer, shape), row["probes"] = measured(probes)
            oracle = next(r for r in layer["rows"] if r["probe"] == "oracle")
            best = max((r for r in layer["rows"] if r["probe"].startswith("layer ")),
                       key=lambda r: r["dev"]["accuracy"])
            row["probes"].update(train_rows=shape[0], features=shape[1], probes=len(layer["rows"]),
                                 oracle_dev_accuracy=round(oracle["dev"]["accuracy"], 4),
                                 best_layer=best["probe"], best_layer_dev_accuracy=round(best["dev"]["accuracy"], 4))
            log.info("large %d words: probes %s", n_words, row["probes"])
            save()
    print(json.dumps(figures, indent=2))
    save()
    return figures


__all__ = ["PeakMemory", "bench_large", "bench_probe_workers", "bench_probes",
           "bench_scaling", "bench_similarity", "floor_syrk", "corpus_split", "large_model"]
