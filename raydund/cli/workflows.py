"""``raydund demo``, ``raydund submit`` and ``raydund bench``: whole workflows, cluster jobs, benchmarks."""

from __future__ import annotations

import argparse
import os
import sys

from raydund.cli.common import command, emit, settings
from raydund.errors import UserError


def register(sub) -> None:
    p = command(sub, "demo", "the whole analysis on MiniLM x CoNLL-2000 (POS, chunking), PMB semantic tags and "
                "SST-2, then SmolLM2 beside MiniLM on UD-EWT and CoNLL-2000", cmd_demo, json_output=False)
    p.add_argument("--limit", type=int, default=None, help="only the first N sentences of each split")
    p.add_argument("--no-llm", dest="llm", action="store_false",
                   help="leave out the LLM part (SmolLM2 beside MiniLM on UD-EWT and CoNLL-2000)")
    p.add_argument("--llm-only", action="store_true",
                   help="only the LLM part (MiniLM is analysed where the lake has no results of it)")

    p = command(sub, "submit", "run a jobs/*.py script on a Ray cluster (ray job submit) and stream its logs",
                cmd_submit)
    p.add_argument("--address", default=None,
                   help="job server URL (default: RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, http://127.0.0.1:8265)")
    p.add_argument("--working-dir", default=None, help="uploaded as the job's working dir (default: .)")
    p.add_argument("--env", action="append", help="also pass this environment variable (never credentials)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.add_argument("script", help="extract | similarity | cluster | probe | transfer | ... or jobs/NAME.py")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")

    p = command(sub, "bench", "benchmarks (see BENCHMARKS.md)", None, json_output=False)
    _register_bench(p.add_subparsers(dest="bench", required=True, metavar="WHAT"))


def _bench_command(bench, name, help_text, *, task=False):
    """A benchmark: its figures go to ``--out`` as JSON."""
    b = command(bench, name, help_text, cmd_bench, json_output=False)
    b.add_argument("--model", default="minilm")
    b.add_argument("--corpus", default="conll2000")
    if task:
        b.add_argument("--label", default="pos")
        b.add_argument("--train-tokens", type=int, default=50_000, help="first N tokens of train")
    else:
        b.add_argument("--split", default="train")
    b.add_argument("--out", default=None, help="write the figures as JSON here")
    return b


def _register_bench(bench) -> None:
    b = _bench_command(bench, "extract", "whole commands at several sizes: raydund extract vs a bare "
                       "transformers script vs NeuroX 1.0.9")
    b.add_argument("--sizes", default="100,1000,10000,all",
                   help="sentences per run, comma-separated; 'all' is the whole split (default: %(default)s)")
    b.add_argument("--repeats", type=int, default=1, help="runs of each command per size; the median is kept")
    b.add_argument("--no-neurox", dest="neurox", action="store_false",
                   help="leave NeuroX out (always out for a decoder LLM such as smollm2, whose extraction is "
                        "--unit word,mlp against a bare loop collecting the same tensors)")
    b.add_argument("--no-bare", dest="bare", action="store_false",
                   help="raydund alone: its time and peak memory at sizes the bare script cannot hold in memory")
    b = _bench_command(bench, "similarity", "streaming r/CKA/clustering vs NeuroX, and vs the float64 SYRK floor")
    b.add_argument("--paper-tokens", type=int, default=150_000, help="tokens of the synthetic 13 x 768 run")
    b.add_argument("--parts", nargs="+", choices=["minilm", "paper"], default=["minilm", "paper"])
    b = _bench_command(bench, "probes", "layer-wise probes + minimal-set search vs NeuroX one probe at a time",
                       task=True)
    b.add_argument("--threads", type=int, default=None, help="torch threads for both (default: all CPUs)")
    b.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="type of the probes' training products (see `raydund probe --help`)")
    b = _bench_command(bench, "probe-workers", "the probe job with 1 and more layer-block workers: time, peak memory",
                       task=True)
    b.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    b.add_argument("--epochs", type=int, default=10)
    b = _bench_command(bench, "scaling", "words/s and peak memory of extraction and similarity at 1x/2x/4x words")
    b.add_argument("--words", type=int, nargs="+", default=[10_000, 20_000, 40_000], help="corpus sizes (words)")
    b.add_argument("--pool-sizes", type=int, nargs="+", default=[1, 2], help="extraction actors, at the largest size")
    b = command(bench, "large", "BERT-large shape (25,600 neurons, random weights): every stage, time + memory",
                cmd_bench, json_output=False)
    b.add_argument("--words", type=int, nargs="+", default=[20_000], help="train words per run (CoNLL-2000 prefix)")
    b.add_argument("--corpus", default="conll2000")
    b.add_argument("--label", default="pos")
    b.add_argument("--stages", nargs="+", choices=["extract", "similarity", "cluster", "probes"],
                   default=["extract", "similarity", "cluster", "probes"])
    b.add_argument("--out", default=None, help="write the figures as JSON here")


def cmd_demo(args) -> None:
    from raydund.workflows.demo import run_demo

    if args.llm_only and not args.llm:
        raise UserError("--llm-only and --no-llm exclude each other")
    run_demo(settings(), limit=args.limit, llm=args.llm, paper=not args.llm_only)


def cmd_submit(args) -> None:
    from raydund.workflows.submit import submit

    job_id, status = submit(settings(), args.script, args.args, address=args.address, working_dir=args.working_dir,
                            forward=tuple(args.env or ()), wait=not args.no_wait)
    emit(args, {"job_id": job_id, "status": status}, f"raydund: job {job_id} {status}")
    if status not in ("SUCCEEDED", "PENDING", "RUNNING"):
        sys.exit(1)


def _bench_module(name: str = "bench"):
    """``benchmarks/<name>.py`` of the source checkout (developer tooling: not in the wheel)."""
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "bench.py").is_file():
        raise UserError("`raydund bench` runs the benchmarks of a source checkout (benchmarks/); "
                        "this installation has none")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"benchmarks.{name}")


def _bench_settings():
    """Benchmarks write synthetic and sample data: their own lake (``RAYDUND_BENCH_HOME``,
    default ``~/.raydund-bench``), never the user's."""
    from raydund.config import Settings

    env = {k: v for k, v in os.environ.items() if k not in ("RAYDUND_CATALOG_URI", "RAYDUND_WAREHOUSE",
                                                           "MLFLOW_TRACKING_URI", "RAYDUND_ARTIFACT_ROOT")}
    env["RAYDUND_HOME"] = os.environ.get("RAYDUND_BENCH_HOME", os.path.expanduser("~/.raydund-bench"))
    return Settings.from_env(env).prepare()


def cmd_bench(args) -> None:
    found = _bench_settings()
    if args.bench == "extract":
        _bench_module("extract").bench_extract(found, model=args.model, corpus=args.corpus, split=args.split,
                                               sizes=args.sizes, repeats=args.repeats, neurox=args.neurox,
                                               out=args.out, bare=args.bare)
        return
    bench = _bench_module()
    if args.bench == "scaling":
        bench.bench_scaling(found, model=args.model, corpus=args.corpus, split=args.split,
                            words=tuple(args.words), pool_sizes=tuple(args.pool_sizes), out=args.out)
    elif args.bench == "large":
        bench.bench_large(found, words=tuple(args.words), corpus=args.corpus, label=args.label,
                          stages=tuple(args.stages), out=args.out)
    elif args.bench == "probes":
        bench.bench_probes(found, model=args.model, corpus=args.corpus, label=args.label,
                           train_tokens=args.train_tokens, out=args.out, threads=args.threads,
                           precision=args.precision)
    elif args.bench == "probe-workers":
        bench.bench_probe_workers(found, model=args.model, corpus=args.corpus, label=args.label,
                                  train_tokens=args.train_tokens, workers=tuple(args.workers), epochs=args.epochs,
                                  out=args.out)
    elif args.bench == "similarity":
        bench.bench_similarity(found, model=args.model, corpus=args.corpus, split=args.split,
                               paper_tokens=args.paper_tokens, parts=tuple(args.parts), out=args.out)
    else:
        raise UserError(f"unknown benchmark {args.bench!r}")
