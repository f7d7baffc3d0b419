"""The criteria's hidden states, read from the lake's activations (extracted once, reused).

A pruning study's residual-stream criteria (:mod:`raydund.prune.criteria`) and its probe
criterion read ``H[l]`` (``l = 0..L``) on the calibration sentences. By default these are
the per-word vectors of the ``word`` unit that ``raydund extract`` stored for the
calibration split (layer 0 the embeddings, layer ``l`` the output of block ``l - 1``; each
word's last subword; no BOS/prefix token ever enters, and each sentence's first word is left
out, see :func:`lake_states`). If the lake holds no extraction
covering the calibration sentences, the study runs one (``limit`` = the calibration
sentences; the corpus is ingested first when it is not in the lake) and reads that: later
studies, and every other analysis, reuse it.

Two conventions differ from :func:`raydund.prune.evaluate.hidden_states` (the ``model``
source, every token): statistics are over words, not tokens, and the last layer is what
``transformers`` returns as the last hidden state (after the final norm, as in ShortGPT's
and Gromov et al.'s code).
"""

from __future__ import annotations

import logging

import numpy as np

from raydund.config import Settings
from raydund.errors import UserError

log = logging.getLogger(__name__)

SOURCES = ("lake", "model")


def _covered(lake, model: str, corpus: str, split: str, sentences: int) -> bool:
    """Whether the lake's ``word`` extraction of (model, corpus, split) holds sentences ``0..sentences-1``."""
    try:
        keys = lake.layer_keys(model, corpus, split)
    except UserError:  # no activations table yet
        return False
    have = set(keys.column("sentence_id").to_pylist())
    return all(i in have for i in range(sentences))


def ensure_extracted(model: str, corpus: str, split: str, sentences: int, settings: Settings) -> str:
    """Make sure the lake holds the ``word`` activations of the first ``sentences`` sentences; the lake model name.

    Nothing is extracted when they are there (an extraction of the whole split serves).
    """
    from raydund.corpora.job import ingest
    from raydund.extract.job import ExtractConfig, run_extraction
    from raydund.extract.models import resolve_model
    from raydund.lake import Lake
    from raydund.lake.names import corpus_table_name

    lake = Lake(settings)
    name = resolve_model(model, settings).name
    if _covered(lake, name, corpus, split, sentences):
        return name
    try:
        lake.table(corpus_table_name(corpus))
    except UserError:
        log.info("prune: ingesting %s (the criteria read its %s activations from the lake)", corpus, split)
        ingest(corpus, settings)
    log.info("prune: extracting %s %s/%s, first %d sentences, for the criteria", name, corpus, split, sentences)
    run_extraction(ExtractConfig(model=model, corpus=corpus, split=split, limit=sentences), settings, progress=False)
    return name


def lake_states(model: str, corpus: str, split: str, sentences: list[list[str]], settings: Settings,
                labels: list[list] | None = None) -> tuple[list[np.ndarray], list | None]:
    """``H[l]`` per word of the first ``len(sentences)`` sentences of a split, from the lake.

    ``sentences`` are the study's calibration sentences (word lists); the lake's words must
    be the same (a :class:`UserError` otherwise: the lake's corpus was ingested from other
    files). The first word of every sentence is left out: a decoder given no BOS (SmolLM2,
    GPT-2, Qwen2) makes it the attention sink, whose massive activations would dominate
    every statistic (BENCHMARKS.md, "Massive activations").

    Returns
    -------
    H : list of numpy.ndarray
        ``[words x hidden]`` float32 per layer, rows in (sentence, word) order, first words left out.
    labels : list or None
        ``labels`` (word labels per sentence) flattened to the same rows.
    """
    from raydund.lake import Lake

    name = ensure_extracted(model, corpus, split, len(sentences), settings)
    lake = Lake(settings)
    ids = range(len(sentences))
    layers = sorted({layer for layer, _ in lake.activation_files(name, corpus, split)})
    H, keep = [], None
    for layer in layers:
        X, keys = lake.layer_matrix(name, corpus, split, layer, sentences=ids)
        if keep is None:
            if keys.column("word").to_pylist() != [w for s in sentences for w in s]:
                raise UserError(f"the lake's {corpus}/{split} words differ from the corpus files the study read: "
                                f"re-ingest {corpus} (`raydund ingest {corpus}`)")
            keep = np.flatnonzero(keys.column("word_id").to_numpy() != 0)
        H.append(X[keep])
    log.info("prune: criteria read %d layers x %d words from the lake (%s %s/%s)", len(H), len(keep), name,
             corpus, split)
    flat = None if labels is None else [x for s in labels for x in s[1:]]
    return H, flat
