"""``raydund bench extract``: the extraction job side by side with its baselines.

Three measurements on the same sentences, in one process, one after the other:

1. the raydund job (Ray Data actor pool -> Parquet files -> one Iceberg commit),
2. a bare batched ``transformers`` loop (batch sorted by length, ``last`` aggregation,
   vectors copied to numpy, nothing written): the floor for any extraction code,
3. NeuroX 1.0.9 ``extract_representations`` (one sentence per forward, HDF5 output),
   on a prefix of the sentences because it is slow.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import tempfile
import time

import torch

from raydund.config import Settings
from raydund.errors import UserError

log = logging.getLogger(__name__)


def bare_loop(sentences: list[list[str]], model, tokenizer, batch_size: int = 32) -> float:
    """Words/s of a plain batched forward loop with ``last`` subword aggregation."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    words = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = [sentences[i] for i in order[s : s + batch_size]]
            enc = tokenizer(batch, is_split_into_words=True, padding=True, return_tensors="pt")
            hidden = torch.stack(model(**enc, output_hidden_states=True).hidden_states)
            for b in range(len(batch)):
                last = {}
                for pos, w in enumerate(enc.word_ids(b)):
                    if w is not None:
                        last[w] = pos
                idx = torch.tensor([last[w] for w in sorted(last)])
                _ = hidden[:, b, idx].numpy()
                words += len(batch[b])
    return words / (time.perf_counter() - start)


def neurox_loop(sentences: list[list[str]], model_path: str, output_type: str = "hdf5") -> float | None:
    """Words/s of NeuroX 1.0.9's ``extract_representations`` (None if NeuroX is missing).

    ``output_type`` is NeuroX's writer: ``hdf5``, or ``json`` (its default).
    """
    try:
        from neurox.data.extraction import transformers_extractor  # noqa: PLC0415
    except ImportError:
        log.warning("NeuroX is not installed (make bench-deps); skipping its column")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "sentences.txt")
        with open(src, "w", encoding="utf-8") as fh:
            fh.write("\n".join(" ".join(s) for s in sentences) + "\n")
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # NeuroX prints every token list
            transformers_extractor.extract_representations(
                model_path, src, os.path.join(tmp, f"out.{output_type}"), aggregation="last", device="cpu",
                output_type=output_type)
        seconds = time.perf_counter() - start
    return sum(len(s) for s in sentences) / seconds


def bench_extract(settings: Settings, model: str = "minilm", corpus: str = "conll2000", split: str = "train",
                  limit: int | None = None, neurox_limit: int = 200, batch_size: int = 32,
                  out: str | None = None) -> dict:
    """Run the three measurements and print a table; return the figures."""
    from raydund.extract.encoder import load_model, resolve_model  # noqa: PLC0415
    from raydund.extract.job import ExtractConfig, ensure_ray, run_extraction  # noqa: PLC0415
    from raydund.lake import Lake  # noqa: PLC0415

    lake = Lake(settings)
    try:
        table = lake.read_corpus(corpus, split)
    except UserError:
        from raydund.ingest import ingest  # noqa: PLC0415

        ingest(corpus, settings, [split])
        table = lake.read_corpus(corpus, split)
    if limit:
        table = table.slice(0, limit)
    sentences = table.column("words").to_pylist()
    n_words = sum(len(s) for s in sentences)
    spec = resolve_model(model)

    ensure_ray()  # start-up is not part of the job's throughput; reported separately below
    cfg = ExtractConfig(model=model, corpus=corpus, split=split, limit=limit, batch_size=batch_size,
                        threads=os.cpu_count(), fresh=True)
    start = time.perf_counter()
    result = run_extraction(cfg, settings, progress=False)
    job_wps = n_words / (time.perf_counter() - start)

    torch.set_num_threads(os.cpu_count())
    hf_model, tokenizer = load_model(spec)
    bare_wps = bare_loop(sentences, hf_model, tokenizer, batch_size)
    nx_sentences = sentences[:neurox_limit]
    neurox_wps = neurox_loop(nx_sentences, spec.source, "hdf5") if neurox_limit else None
    neurox_json_wps = neurox_loop(nx_sentences, spec.source, "json") if neurox_limit else None

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": model, "corpus": f"{corpus}/{split}", "sentences": len(sentences), "words": n_words,
        "raydund_words_per_s": round(job_wps, 1), "bare_loop_words_per_s": round(bare_wps, 1),
        "neurox_words_per_s": round(neurox_wps, 1) if neurox_wps else None,
        "neurox_json_words_per_s": round(neurox_json_wps, 1) if neurox_json_wps else None,
        "neurox_sentences": len(nx_sentences),
        "ratio_vs_bare": round(job_wps / bare_wps, 3),
        "ratio_vs_neurox": round(job_wps / neurox_wps, 1) if neurox_wps else None,
        "bytes_written": result.bytes, "snapshot_id": result.snapshot_id,
    }
    print(f"{'what':<42}{'words/s':>12}")
    print(f"{'raydund extract (Ray actor -> Iceberg)':<42}{job_wps:>12,.0f}")
    print(f"{'bare transformers loop (no writing)':<42}{bare_wps:>12,.0f}")
    if neurox_wps:
        print(f"{'NeuroX 1.0.9, HDF5 output':<42}{neurox_wps:>12,.0f}  ({len(nx_sentences)} sentences)")
        print(f"{'NeuroX 1.0.9, JSON output (its default)':<42}{neurox_json_wps:>12,.0f}")
    print(f"ratio vs bare loop: {figures['ratio_vs_bare']:.2f}x"
          + (f", vs NeuroX: {figures['ratio_vs_neurox']:.0f}x" if neurox_wps else ""))
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)
    return figures


__all__ = ["bare_loop", "bench_extract", "neurox_loop"]
