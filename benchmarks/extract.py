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


def timed(cmd: list[str], env: dict) -> float:
    """Wall seconds of one command, launch to exit; its output is kept only when it fails."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def bench_extract(settings: Settings, model: str = "minilm", corpus: str = "conll2000", split: str = "train",
                  sizes: str = "100,1000,10000,all", repeats: int = 1, neurox: bool = True,
                  out: str | None = None) -> dict:
    """Time the three commands at every size; print a table and return the figures (medians of ``repeats``)."""
    from benchmarks.bench import corpus_split
    from raydund.extract.models import resolve_model
    from raydund.lake import Lake

    table = corpus_split(Lake(settings), settings, corpus, split)
    source = resolve_model(model, settings).source
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
                                      "--quiet", "--no-progress"] + (["--limit", str(size)] if size else []),
                "bare": [sys.executable, "-m", "benchmarks.extract_scripts", "bare", text, source],
            }
            if neurox:
                commands["neurox"] = [sys.executable, "-m", "benchmarks.extract_scripts", "neurox", text, source]
            times = {name: [] for name in commands}
            for _ in range(repeats):
                for name, cmd in commands.items():
                    times[name].append(timed(cmd, env))
            row = {"sentences": part.num_rows, "words": sum(len(w) for w in words),
                   **{f"{name}_s": round(statistics.median(t), 2) for name, t in times.items()}}
            row["raydund_over_bare"] = round(row["raydund_s"] / row["bare_s"], 2)
            if neurox:
                row["raydund_over_neurox"] = round(row["raydund_s"] / row["neurox_s"], 2)
            rows.append(row)
            _print_row(row, first=len(rows) == 1)
    figures = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
               "model": model, "corpus": f"{corpus}/{split}", "repeats": repeats, "rows": rows}
    if out:
        Path(out).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return figures


def _print_row(row: dict, first: bool) -> None:
    if first:
        print(f"{'sentences':>9} {'words':>8} {'raydund s':>10} {'bare s':>8} {'NeuroX s':>9} "
              f"{'raydund/bare':>13} {'raydund/NeuroX':>15}")
    nx = row.get("neurox_s")
    print(f"{row['sentences']:>9,} {row['words']:>8,} {row['raydund_s']:>10.1f} {row['bare_s']:>8.1f} "
          f"{(f'{nx:.1f}' if nx else '-'):>9} {row['raydund_over_bare']:>13.2f} "
          f"{(str(row['raydund_over_neurox']) if nx else '-'):>15}", flush=True)
