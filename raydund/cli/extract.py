"""``raydund extract``: activations of every layer into the lake (Ray actors); resumes when re-run."""

from __future__ import annotations

import argparse

from raydund.cli.common import add_no_progress, command, emit, progress, settings
from raydund.cli.options import Opt, add_fields, config_from

#: How ExtractConfig's fields appear on the command line where they differ from the generated options.
OPTS = {
    "model": Opt(default="minilm"),
    "split": Opt(action="append", help="split to extract; repeat for several"),
    "pool_size": Opt(flag="--workers", old=("--pool-size",)),
    "num_gpus": Opt(flag="--gpus", old=("--num-gpus",)),
}
#: Fields that are not options: ``max_tokens`` forces windowing in tests.
SKIP = ("max_tokens",)


def register(sub) -> None:
    command(sub, "extract", "extract activations of every layer into the lake (Ray actors)", cmd_extract,
            populate=add_extract_arguments, resumes=True)


def add_extract_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``raydund extract``: ExtractConfig's fields, and ``--no-progress``."""
    from raydund.extract.job import ExtractConfig

    add_fields(p, ExtractConfig, OPTS, SKIP)
    add_no_progress(p)


def extract_config(args) -> list:
    """One checked :class:`~raydund.extract.job.ExtractConfig` per ``--split``."""
    from raydund.extract.job import ExtractConfig

    return [config_from(args, ExtractConfig, OPTS, SKIP, split=split).check() for split in args.split]


def cmd_extract(args) -> None:
    from raydund.extract.job import run_extraction

    found = settings()
    results = []
    for cfg in extract_config(args):
        r = run_extraction(cfg, found, progress=progress(args))
        results.append({"model": cfg.model, "corpus": cfg.corpus, "split": cfg.split, "unit": cfg.unit,
                        **vars(r), "words_per_second": r.words_per_second})
        if not args.json:  # each split as it lands
            print(f"{cfg.model} {cfg.corpus}/{cfg.split} ({cfg.unit}): {r.words} vectors x {r.layers} layers, "
                  f"{r.bytes / 1e6:.1f} MB in {r.files} files, {r.words_per_second:,.0f} words/s; "
                  f"snapshot {r.snapshot_id}, MLflow run {r.run_id}")
            if len(r.units) > 1:  # one forward pass filled several units
                print("  " + "; ".join(f"{unit}: {f['layers']} layers, {f['bytes'] / 1e6:.1f} MB"
                                       for unit, f in r.units.items()))
    if args.json:
        emit(args, results)
