"""``raydund bench extract``: whole commands timed side by side, at several corpus sizes.

For each size (first N sentences of a corpus split, as ``--limit`` takes them), three
commands run one after the other, each in its own process, timed from launch to exit,
as a user types them:

1. ``raydund extract --corpus C --split S --limit N --fresh`` (the corpus is in the lake
   already: ingesting happens once per corpus, not per extraction),
2. the bare script a user writes without raydund (:func:`benchmarks.extract_scripts.bare`):
   read a text file, a batched ``transformers`` loop, ``last`` aggregation, vectors kept
   in numpy, nothing written,
3. NeuroX 1.0.9 ``extract_representations`` on the same text file (HDF5 output).

Each process gets all the machine's cores. Ratios are times: ``raydund / bare`` (goal at
most 1.5 at every size) and ``raydund / NeuroX`` (goal at most 0.5).

A decoder LLM (``--model smollm2``) is extracted as ``raydund extract --unit word,mlp``
(every hidden state and every block's MLP neurons from one forward pass per batch, issue 18)
against :func:`benchmarks.extract_scripts.bare_decoder`, the bare loop collecting the same
tensors with the same tokenisation and word alignment; NeuroX's extractor reads encoders
only (pre-split words, no decoder word alignment), so it is left out there. Each row also
holds every command's peak RSS (``wait4``) and the load average before and after it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from raydund.config import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


def parse_sizes(text: str) -> list[int | None]:
    """``"100,1000,all"`` -> ``[100, 1000, None]`` (``all``: the whole split)."""
    return [None if part.strip() == "all" else int(part) for part in text.split(",") if part.strip()]


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds of one command, launch to exit, and its peak RSS in MB; its output is kept only when it fails."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{tail}")
    return seconds, usage.ru_maxrss / 1024


def is_decoder_model(spec) -> bool:
    """Whether the model is a decoder LLM (its config only; GGUF metadata for a GGUF file)."""
    from transformers import AutoConfig

    from raydund.extract.text import is_decoder

    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    return is_decoder(AutoConfig.from_pretrained(spec.source, **kwargs))


def bench_extract(settings: Settings, model: str = "minilm", corpus: str = "conll2000", split: str = "train",
                  sizes: str = "100,1000,10000,all", repeats: int = 1, neurox: bool = True,
                  out: str | None = None, bare: bool = True) -> dict:
    """Time the three commands at every size; print a table and return the figures (medians of ``repeats``).

    ``bare=False`` runs raydund alone (its time and peak memory at sizes whose vectors the
    bare script, which keeps them all in memory, cannot hold).
    """
    from benchmarks.bench import corpus_split
    from raydund.extract.models import resolve_model
    from raydund.lake import Lake

    table = corpus_split(Lake(settings), settings, corpus, split)
    spec = resolve_model(model, settings)
    source = spec.source
    decoder = is_decoder_model(spec)
    if decoder and neurox:
        print(f"{model} is a decoder LLM: NeuroX is left out (its extractor reads encoders only)", flush=True)
        neurox = False
    env = {**os.environ, "RAYDUND_HOME": str(settings.home), "RAY_AUTH_MODE": "disabled",
           "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RAYDUND_CATALOG_URI", "RAYDUND_WAREHOUSE", "MLFLOW_TRACKING_URI", "RAYDUND_ARTIFACT_ROOT"):
        env.pop(name, None)
    script = Path(sys.executable).with_name("raydund")  # the console script, as a user types it
    raydund = [str(script)] if script.is_file() else [sys.executable, "-m", "raydund.cli"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # a size at or above the split's sentences is the whole split, measured once
        wanted = sorted({size if size and size < table.num_rows else None for size in parse_sizes(sizes)},
                        key=lambda size: size or table.num_rows)
        for size in wanted:
            part = table.slice(0, size) if size else table
            words = part.column("words").to_pylist()
            text = os.path.join(tmp, f"sentences-{part.num_rows}.txt")
            Path(text).write_text("\n".join(" ".join(w) for w in words) + "\n", encoding="utf-8")
            commands = {
                "raydund": raydund + ["extract", "--model", model, "--corpus", corpus, "--split", split, "--fresh",
                                      "--quiet", "--no-progress"] + (["--limit", str(size)] if size else [])
                + (["--unit", "word,mlp"] if decoder else []),
                "bare": [sys.executable, "-m", "benchmarks.extract_scripts", "bare", text, source],
            }
            if not bare:
                del commands["bare"]
            elif decoder:
                commands["bare"] = [sys.executable, "-m", "benchmarks.extract_scripts", "bare_decoder", text, source,
                                    *([spec.gguf_file] if spec.gguf_file else [])]
            if neurox:
                commands["neurox"] = [sys.executable, "-m", "benchmarks.extract_scripts", "neurox", text, source]
            times = {name: [] for name in commands}
            peaks = {name: 0.0 for name in commands}
            load_before = os.getloadavg()[0]
            for _ in range(repeats):
                for name, cmd in commands.items():
                    seconds, peak = timed(cmd, env)
                    times[name].append(seconds)
                    peaks[name] = max(peaks[name], peak)
            row = {"sentences": part.num_rows, "words": sum(len(w) for w in words),
                   **{f"{name}_s": round(statistics.median(t), 2) for name, t in times.items()},
                   **{f"{name}_rss_mb": round(peak) for name, peak in peaks.items()},
                   "load_before": round(load_before, 1), "load_after": round(os.getloadavg()[0], 1)}
            if bare:
                row["raydund_over_bare"] = round(row["raydund_s"] / row["bare_s"], 2)
            if neurox:
                row["raydund_over_neurox"] = round(row["raydund_s"] / row["neurox_s"], 2)
            rows.append(row)
            _print_row(row, first=len(rows) == 1)
    figures = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
               "model": model, "corpus": f"{corpus}/{split}", "repeats": repeats, "rows": rows,
               "units": "word,mlp" if decoder else "word",
               **({"neurox": "left out: a decoder LLM (NeuroX's extractor reads encoders only)"} if decoder else {})}
    if out:
        Path(out).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return figures


def _print_row(row: dict, first: bool) -> None:
    if first:
        print(f"{'sentences':>9} {'words':>8} {'raydund s':>10} {'bare s':>8} {'NeuroX s':>9} "
              f"{'raydund/bare':>13} {'raydund/NeuroX':>15} {'raydund MB':>11} {'bare MB':>8} {'load':>10}")
    nx, bare_s = row.get("neurox_s"), row.get("bare_s")
    print(f"{row['sentences']:>9,} {row['words']:>8,} {row['raydund_s']:>10.1f} "
          f"{(f'{bare_s:.1f}' if bare_s else '-'):>8} {(f'{nx:.1f}' if nx else '-'):>9} "
          f"{(str(row['raydund_over_bare']) if bare_s else '-'):>13} "
          f"{(str(row['raydund_over_neurox']) if nx else '-'):>15} {row['raydund_rss_mb']:>11,} "
          f"{(format(row['bare_rss_mb'], ',') if bare_s else '-'):>8} "
          f"{row['load_before']:>4.1f}-{row['load_after']:<4.1f}", flush=True)
