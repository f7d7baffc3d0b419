"""``raydund`` command line: one subcommand per stage, plus ``demo`` and ``bench``.

User mistakes (:class:`~raydund.errors.UserError`) end in one line on stderr and exit
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from raydund.errors import UserError

log = logging.getLogger("raydund")


def _settings():
    from raydund.config import Settings  # noqa: PLC0415

    return Settings.from_env().prepare()


def _read_lake():
    """Settings and the lake of a read-only command: nothing is created; no lake is one clear error."""
    from raydund.config import Settings  # noqa: PLC0415
    from raydund.lake import Lake  # noqa: PLC0415

    settings = Settings.from_env()
    return settings, Lake(settings, create=False).require()


#: Arguments that name something in the lake, and the kind of name each is (see ``raydund.lake.check_name``).
_NAME_ARGS = {"corpus": "corpus", "model": "model", "split": "split", "splits": "split", "stats_split": "split",
              "cluster_split": "split", "unit": "unit"}
#: Commands whose names are checked before any work; the arguments that are sources, not names
#: (a catalog entry, folder or hub id: checked once resolved).
_NAME_COMMANDS = {"extract": ("model",), "similarity": (), "cluster": (), "probe": (), "transfer": (),
                  "finetune": ("model",), "explore": ()}


def _check_names(args) -> None:
    """Apply the one name rule to every lake name a command was given, before it does anything."""
    if args.command not in _NAME_COMMANDS:
        return
    from raydund.lake import check_name  # noqa: PLC0415

    for attr, kind in _NAME_ARGS.items():
        value = getattr(args, attr, None)
        if value is None or attr in _NAME_COMMANDS[args.command]:
            continue
        for name in value if isinstance(value, list) else [value]:
            check_name(kind, name)


class _RedactFilter(logging.Filter):
    """Log records with any password inside a URI replaced by ``***`` (tracking and catalog URIs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from raydund.config import redact_uri  # noqa: PLC0415

        message = record.getMessage()
        redacted = redact_uri(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RedactFilter())
    logging.getLogger("raydund").setLevel(logging.INFO)
    logging.getLogger("pyiceberg.io.pyarrow").setLevel(logging.ERROR)  # "statistics missing" for vectors
    if not verbose:
        logging.getLogger("ray").setLevel(logging.WARNING)  # Ray Data's per-dataset INFO lines
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from transformers.utils import logging as hf_logging  # noqa: PLC0415

            hf_logging.disable_progress_bar()  # "Loading weights" bars
        except ImportError:
            pass
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("POLARS_ICEBERG_PLANNER", "pyiceberg")


# -- subcommands ----------------------------------------------------------------------
def cmd_ingest(args) -> None:
    from raydund.corpora.job import ingest  # noqa: PLC0415

    result = ingest(args.corpus, _settings(), args.split or None)
    for split, n in result.sentences.items():
        print(f"{result.corpus}/{split}: {n} sentences, {result.tokens[split]} tokens")
    print(f"snapshot {result.snapshot_id}, MLflow run {result.run_id}")


def extract_config(args):
    from raydund.extract.job import ExtractConfig  # noqa: PLC0415

    return [
        ExtractConfig(
            model=args.model, corpus=args.corpus, split=split, unit=args.unit, aggregation=args.aggregation,
            dtype=args.dtype, batch_size=args.batch_size, shard_words=args.shard_words,
            pool_size=args.pool_size, num_gpus=args.num_gpus, num_cpus=args.num_cpus,
            threads=args.threads, limit=args.limit, fresh=args.fresh, allow_nonfinite=args.allow_nonfinite,
            name=args.name,
        ).check()
        for split in args.split
    ]


def cmd_extract(args) -> None:
    from raydund.extract.job import run_extraction  # noqa: PLC0415

    settings = _settings()
    for cfg in extract_config(args):
        r = run_extraction(cfg, settings, progress=not args.no_progress)
        print(f"{cfg.model} {cfg.corpus}/{cfg.split} ({cfg.unit}): {r.words} vectors x {r.layers} layers, "
              f"{r.bytes / 1e6:.1f} MB in {r.files} files, {r.words_per_second:,.0f} words/s; "
              f"snapshot {r.snapshot_id}, MLflow run {r.run_id}")


def cmd_similarity(args) -> None:
    from raydund.general.job import run_similarity  # noqa: PLC0415
    from raydund.general.stream import SimilarityConfig  # noqa: PLC0415

    settings = _settings()
    for split in args.split:
        cfg = SimilarityConfig(model=args.model, corpus=args.corpus, split=split, unit=args.unit,
                               groups=args.groups, skip_first=args.skip_first, num_gpus=args.num_gpus)
        out = run_similarity(cfg, settings, progress=not args.no_progress)
        sim = out["similarity"]
        print(f"{cfg.model} {cfg.corpus}/{split}: {sim.n} tokens x {len(sim.constant)} neurons "
              f"({out['constant_neurons']} constant); mean CKA of adjacent layers {out['cka_adjacent_mean']:.3f} "
              f"(debiased {out['cka_debiased_adjacent_mean']:.3f}); MLflow run {out['run_id']}")
        print(_matrix("CKA", sim.cka))


def _matrix(title, m) -> str:
    rows = [f"{title:>6} " + " ".join(f"{j:>5}" for j in range(m.shape[1]))]
    rows += [f"{i:>6} " + " ".join(f"{v:5.2f}" for v in row) for i, row in enumerate(m)]
    return "\n".join(rows)


def cmd_cluster(args) -> None:
    from raydund.general.job import ClusterConfig, run_clustering  # noqa: PLC0415

    from raydund.config import check_unit_interval  # noqa: PLC0415

    for t in args.thresholds:
        check_unit_interval("--thresholds", t)
    settings = _settings()
    cfg = ClusterConfig(model=args.model, corpus=args.corpus, split=args.split, unit=args.unit,
                        thresholds=tuple(args.thresholds), representative=args.representative, seed=args.seed)
    cc = run_clustering(cfg, settings)
    print(f"{'threshold':>9} {'clusters':>8} {'kept':>6} {'reduction':>9}  same/adjacent/within3/far")
    for row in cc.summary_:
        print(f"{row['threshold']:>9.2f} {row['clusters']:>8} {row['neurons_kept']:>6} {row['reduction']:>9.1%}  "
              f"{row['same layer']:.2f}/{row['adjacent layers']:.2f}/{row['within 3 layers']:.2f}/"
              f"{row['more than 3 apart']:.2f}")


def cmd_probe(args) -> None:
    from raydund.config import check_unit_interval  # noqa: PLC0415
    from raydund.probes.job import ProbeConfig, run_probes  # noqa: PLC0415

    check_unit_interval("--redundant-share", args.redundant_share)
    check_unit_interval("--keep-share", args.keep_share)
    cfg = ProbeConfig(model=args.model, corpus=args.corpus, label=args.label, unit=args.unit, task=args.task,
                      splits=tuple(args.splits), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      l1=args.l1, l2=args.l2, seed=args.seed, control=not args.no_control,
                      cluster_split=args.cluster_split, redundant_share=args.redundant_share,
                      keep_share=args.keep_share, train_limit=args.train_limit, standardize=args.standardize,
                      precision=args.precision, workers=args.workers)
    out = run_probes(cfg, _settings())
    key = "pearson" if cfg.task == "regression" else "accuracy"
    control = {r["probe"]: r for r in out["control"] or []}
    print(f"{'probe':<14}{'dev':>8}{'test':>8}{'/oracle':>9}  redundant  selectivity")
    for r in out["layerwise"]:
        sel = control.get(r["probe"], {}).get("selectivity_dev")
        print(f"{r['probe']:<14}{100 * r['dev'][key]:>8.2f}{100 * r['test'][key]:>8.2f}{r['share_of_oracle']:>9.3f}"
              f"  {'yes' if r['redundant'] else '':<9}  {'' if sel is None else f'{100 * sel:.1f}'}")
    m = out["minimal"]
    print(f"minimal neuron set keeping {cfg.keep_share:.0%} of the oracle: "
          f"{m['k'] if m['k'] else 'none of the grid'} of {len(m['neurons']) if not m['k'] else 'N'} neurons")
    for r in out["reduced"]:
        print(f"clustering threshold {r['threshold']:.1f}: {r['neurons']} neurons, dev {100 * r['dev'][key]:.2f}")
    print(f"MLflow run {out['run_id']}")


def cmd_transfer(args) -> None:
    from raydund.transfer.job import TransferConfig, format_table, run_transfer  # noqa: PLC0415

    cfg = TransferConfig(model=args.model, corpus=args.corpus, labels=tuple(args.label), unit=args.unit,
                         task=args.task, splits=tuple(args.splits), stats_split=args.stats_split,
                         train_limit=args.train_limit, ls_thresholds=tuple(args.ls_threshold or (0.01,)),
                         ccfs_thresholds=tuple(args.ccfs_threshold or (0.01,)), epochs=args.epochs, lr=args.lr,
                         seed=args.seed, timing=not args.no_timing, register=not args.no_register,
                         standardize=args.standardize, precision=args.precision, workers=args.workers)
    out = run_transfer(cfg, _settings())
    print(format_table(out["rows"]))
    for label, uri in out["registered"].items():
        print(f"reduced model for {label}: {uri}")
    print(f"MLflow run {out['run_id']}  (raydund report {out['run_id']})")


def cmd_report(args) -> None:
    from raydund.report.html import build_report  # noqa: PLC0415

    settings, _ = _read_lake()
    print(build_report(settings, args.run))


def cmd_finetune(args) -> None:
    from raydund.finetune import FinetuneConfig, run_finetune  # noqa: PLC0415

    cfg = FinetuneConfig(model=args.model, corpus=args.corpus, task=args.task, label=args.label, lr=args.lr,
                         epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
                         warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, seed=args.seed,
                         dev_fraction=args.dev_fraction, train_limit=args.train_limit, num_workers=args.num_workers,
                         use_gpu={"auto": None, "yes": True, "no": False}[args.gpu], cpus_per_worker=args.num_cpus,
                         threads=args.threads, max_failures=args.max_failures, fresh=args.fresh)
    out = run_finetune(cfg, _settings())
    for record in out.history:
        dev = ", ".join(f"{k[4:]} {v:.4f}" for k, v in record.items() if k.startswith("dev_"))
        print(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, dev {dev}")
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in out.test.items()))
    if out.reused:
        print(f"job {out.job_key} had already finished: nothing trained")
    elif len(out.start_epochs) > 1:
        print(f"resumed from the checkpoint after epoch {out.start_epochs[-1] - 1}")
    print(f"registered model {out.uri}  (MLflow run {out.run_id})")
    print(f"extract it with: raydund extract --model {out.uri} --corpus {cfg.corpus} --unit cls --split ...")
    print(f"its activations are stored as model {out.lake_model!r}")


def cmd_tables(args) -> None:
    import polars as pl  # noqa: PLC0415

    from raydund.lake import partition_counts  # noqa: PLC0415

    _, lake = _read_lake()
    with pl.Config(tbl_rows=200, tbl_width_chars=160):
        print(lake.summary())
        if args.partitions and "raydund.activations" in lake.table_names():
            print(partition_counts(lake))


def cmd_runs(args) -> None:
    import json  # noqa: PLC0415

    from raydund.lake import runs  # noqa: PLC0415

    _, lake = _read_lake()
    found = runs.completed(lake, args.stage, args.model, args.corpus)
    if not found:
        print("no completed runs")
    for run in found[-args.last:]:
        scope = {k: v for k, v in run.scope.items() if k not in ("model", "corpus")}
        print(f"{run.run_id}  {run.stage:<10} {run.model} {run.corpus} {json.dumps(scope)}  "
              f"MLflow {run.mlflow_run_id}")
        for table, snap in sorted(run.outputs.items()):
            print(f"    {table} @ {snap}")


def cmd_tracking_flush(args) -> None:
    from raydund import tracking  # noqa: PLC0415

    settings = _settings()
    pending = sorted(p.stem for p in (settings.home / "mlflow-spool").glob("*.jsonl"))
    if not pending:
        print("nothing spooled: MLflow holds everything")
        return
    sent = tracking.replay_spool(settings)
    print(f"replayed {sent} of {len(pending)} spooled run(s) to {tracking.redact(settings.tracking_uri)}")
    if sent < len(pending):
        raise UserError(f"{len(pending) - sent} run(s) still spooled: MLflow did not take them; try again later")


def cmd_vacuum(args) -> None:
    from datetime import timedelta  # noqa: PLC0415

    from raydund.config import Settings  # noqa: PLC0415
    from raydund.lake.vacuum import check_options, lake_exists, sqlite_catalog_path, vacuum  # noqa: PLC0415

    settings = Settings.from_env()  # not prepared: a maintenance command creates nothing
    retention = timedelta(days=args.retention_days)
    check_options(retention, args.keep_last)
    if not lake_exists(settings):
        print(f"the lake is empty: no catalog at {sqlite_catalog_path(settings)}; nothing to vacuum")
        return
    report = vacuum(settings, retention=retention, keep_last=args.keep_last, dry_run=not args.yes)
    verb = "would expire" if report.dry_run else "expired"
    print(f"{len(report.tables)} tables; {verb} {report.snapshots_expired} snapshots")
    for table, ids in sorted(report.expired.items()):
        print(f"  {table}: {len(ids)}")
    if report.dry_run:
        print(f"would delete {len(report.files)} unreferenced files: {report.bytes:,} bytes to reclaim")
    else:
        print(f"deleted {len(report.files)} unreferenced files: {report.bytes:,} bytes reclaimed")
    print(f"kept {report.kept_recent} unreferenced files younger than the retention")
    if report.dry_run:
        print("dry run: re-run with --yes to delete")


def cmd_catalog(args) -> None:
    from raydund.config import CATALOG_DIR, catalog_entries, load_yaml  # noqa: PLC0415

    listing = {kind: catalog_entries(kind) for kind in ("corpora", "models")}
    for kind, entries in listing.items():
        print(f"{kind}:")
        for name, path in entries.items():
            entry = load_yaml(kind, str(path))
            where = "" if path.parent.parent == CATALOG_DIR else f"  [{path}]"
            print(f"  {name:<20} {entry.get('description', entry.get('hf_name', ''))}{where}")


def cmd_demo(args) -> None:
    from raydund.workflows.demo import run_demo  # noqa: PLC0415

    run_demo(_settings(), limit=args.limit)


def cmd_submit(args) -> None:
    from raydund.workflows.submit import submit  # noqa: PLC0415

    job_id, status = submit(_settings(), args.script, args.args, address=args.address, working_dir=args.working_dir,
                            forward=tuple(args.env or ()), wait=not args.no_wait)
    print(f"raydund: job {job_id} {status}")
    if status not in ("SUCCEEDED", "PENDING", "RUNNING"):
        sys.exit(1)


def _bench_module():
    """``benchmarks/bench.py`` of the source checkout (developer tooling: not in the wheel)."""
    import importlib  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "bench.py").is_file():
        raise UserError("`raydund bench` runs the benchmarks of a source checkout (benchmarks/); "
                        "this installation has none")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("benchmarks.bench")


def _bench_settings():
    """Benchmarks write synthetic and sample data: their own lake (``RAYDUND_BENCH_HOME``,
    default ``~/.raydund-bench``), never the user's."""
    from raydund.config import Settings  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if k not in ("RAYDUND_CATALOG_URI", "RAYDUND_WAREHOUSE",
                                                           "MLFLOW_TRACKING_URI", "RAYDUND_ARTIFACT_ROOT")}
    env["RAYDUND_HOME"] = os.environ.get("RAYDUND_BENCH_HOME", os.path.expanduser("~/.raydund-bench"))
    return Settings.from_env(env).prepare()


def cmd_bench(args) -> None:
    bench = _bench_module()
    settings = _bench_settings()
    if args.bench == "scaling":
        bench.bench_scaling(settings, model=args.model, corpus=args.corpus, split=args.split,
                      words=tuple(args.words), pool_sizes=tuple(args.pool_sizes), out=args.out)
        return
    if args.bench == "large":
        bench.bench_large(settings, words=tuple(args.words), corpus=args.corpus, label=args.label,
                    stages=tuple(args.stages), out=args.out)
        return
    if args.bench == "probes":
        bench.bench_probes(settings, model=args.model, corpus=args.corpus, label=args.label,
                     train_tokens=args.train_tokens, out=args.out, threads=args.threads,
                     precision=args.precision)
        return
    if args.bench == "probe-workers":
        bench.bench_probe_workers(settings, model=args.model, corpus=args.corpus, label=args.label,
                            train_tokens=args.train_tokens, workers=tuple(args.workers), epochs=args.epochs,
                            out=args.out)
        return
    if args.bench == "similarity":
        bench.bench_similarity(settings, model=args.model, corpus=args.corpus, split=args.split,
                         paper_tokens=args.paper_tokens, parts=tuple(args.parts), out=args.out)
        return
    bench.bench_extract(settings, model=args.model, corpus=args.corpus, split=args.split, limit=args.limit,
                  neurox_limit=args.neurox_limit, batch_size=args.batch_size, out=args.out)


def cmd_explore(args) -> None:
    import polars as pl  # noqa: PLC0415

    from raydund import explore as ex  # noqa: PLC0415

    settings, lake = _read_lake()
    where = ex.Slice(args.model, args.corpus, args.split, args.unit)
    with pl.Config(tbl_rows=100, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
        if args.explore == "top-words":
            print(ex.top_words(lake, args.model, args.corpus, args.layer, args.neuron, split=args.split, unit=args.unit,
                               top_k=args.top_k, min_count=args.min_count, min_score=args.min_score, sort=args.sort))
        elif args.explore == "label-neurons":
            print(ex.label_neurons(lake, args.model, args.corpus, args.label, args.value, split=args.split,
                                   unit=args.unit, layers=args.layer, top_k=args.top_k, absolute=args.absolute))
        elif args.explore == "neuron-labels":
            print(ex.neuron_labels(lake, args.model, args.corpus, args.label, args.layer, args.neuron, split=args.split,
                                   unit=args.unit, top_k=args.top_k, min_count=args.min_count))
        elif args.explore == "cluster":
            view = ex.cluster_of(lake, args.model, args.corpus, args.layer, args.neuron, args.threshold,
                                 split=args.split, unit=args.unit, representative=args.representative, seed=args.seed)
            print(f"L{view.layer} n{view.neuron}: cluster {view.cluster_id} at threshold {view.threshold:g}, "
                  f"{view.members.height} member(s)")
            print(view.members)
            print("task rankings:" if view.ranks.height else "task rankings: none stored (run `raydund probe`)")
            if view.ranks.height:
                print(view.ranks)
        elif args.explore == "heatmap":
            from raydund.report import heatmap  # noqa: PLC0415

            if args.cluster:
                layer, neuron = ex.parse_neuron(args.cluster)
                view = ex.cluster_of(lake, args.model, args.corpus, layer, neuron, args.threshold, split=args.split,
                                     unit=args.unit)
                neurons = list(zip(view.members["layer"].to_list(), view.members["neuron"].to_list()))
                what = f"cluster of L{layer} n{neuron} at threshold {args.threshold:g}"
            elif args.task:
                neurons = ex.task_top_neurons(lake, args.model, args.corpus, args.task, args.ranker, args.top_k,
                                              args.unit)
                what = f"top {len(neurons)} {args.ranker} neurons of {args.task}"
            elif args.neuron:
                neurons = [ex.parse_neuron(n) for n in args.neuron]
                what = ", ".join(f"L{l} n{n}" for l, n in neurons)
            else:
                raise UserError("choose neurons: --neuron L:N (repeatable), --cluster L:N or --task TASK")
            sentences = args.sentence or ex.sample_sentences(lake, where, args.sentences, seed=args.seed)
            words, values = ex.sentence_activations(lake, where, sentences, neurons)
            fig = heatmap.activation_heatmap(words, values, [f"L{l} n{n}" for l, n in neurons],
                                             title=f"{args.model}, {args.corpus}/{args.split}: {what}",
                                             line_chars=args.line_chars, scale=args.scale,
                                             sentence_titles=[f"sentence {s}" for s in sentences])
            stem = args.out or settings.report_dir(args.model, args.corpus) / "heatmaps" / "heatmap"
            for path in heatmap.save(fig, stem):
                print(path)
            heatmap.close(fig)
        elif args.explore == "browser":
            cfg = ex.BrowserConfig(top_k=args.top_k, min_count=args.min_count, sentences=args.sentences,
                                   threshold=args.threshold, seed=args.seed)
            page = ex.build_browser(settings, args.model, args.corpus, args.split, args.unit, cfg,
                                    track=not args.no_track, representative=args.representative,
                                    cluster_seed=args.cluster_seed)
            print(f"neuron browser: {page}")


# -- parser ---------------------------------------------------------------------------
def add_extract_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``raydund extract`` (also used by ``jobs/extract.py``)."""
    p.add_argument("--model", default="minilm", help="catalog name, local folder or hub id (default: minilm)")
    p.add_argument("--name", default=None, help="the model's lake name (default: its catalog name, the model id "
                   "in a folder's config, or the folder's name)")
    p.add_argument("--corpus", required=True, help="an ingested corpus (see `raydund tables`)")
    p.add_argument("--split", action="append", required=True, help="split to extract; repeat for several")
    p.add_argument("--unit", choices=["word", "cls"], default="word", help="per-word vectors or one [CLS] per sentence")
    p.add_argument("--aggregation", choices=["last", "first", "mean"], default="last", help="subwords -> word")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="storage dtype")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass")
    p.add_argument("--shard-words", type=int, default=20_000, help="words per shard (one file per layer)")
    p.add_argument("--pool-size", type=int, default=1, help="extraction actors (model copies)")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor (0: CPU)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs Ray reserves per actor")
    p.add_argument("--threads", type=int, default=None, help="torch threads per actor (default: CPUs / pool size)")
    p.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    p.add_argument("--fresh", action="store_true", help="recompute shards an interrupted run already finished")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="store NaN/infinite activations as 0 and count them (default: refuse, naming the sentence)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="minilm", help="model name as stored in the lake (default: minilm)")
    p.add_argument("--corpus", required=True)
    p.add_argument("--unit", choices=["word", "cls"], default="word")


def _add_probe_training(p: argparse.ArgumentParser, workers: bool = True) -> None:
    """The probe training flags shared by `probe`, `transfer` (and, precision only, `bench probes`)."""
    if workers:
        p.add_argument("--workers", type=int, default=None,
                       help="layer-block actors training every bank in step (default: Ray's CPUs, at most one "
                            "per layer; 1: all layers in one process)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="type of the probes' training products (bfloat16: float32 accumulation, 2-4x faster "
                        "on CPUs with AVX-512-BF16/AMX and on GPUs; auto, the default: bfloat16 where the "
                        "device has it natively, else float32)")


def _add_probe_bench_task(b: argparse.ArgumentParser) -> None:
    """The task of the probe benchmarks: model, corpus, label and train tokens."""
    b.add_argument("--model", default="minilm")
    b.add_argument("--corpus", default="conll2000")
    b.add_argument("--label", default="pos")
    b.add_argument("--train-tokens", type=int, default=50_000, help="first N tokens of train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raydund",
        description="Redundancy analysis of pretrained transformers on Ray, Iceberg and MLflow. "
        "Locations come from RAYDUND_HOME (default ~/.raydund), RAYDUND_CATALOG_URI, RAYDUND_WAREHOUSE, "
        "MLFLOW_TRACKING_URI, RAYDUND_DATA_MIRROR and RAY_ADDRESS.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="read a catalog corpus into the lake")
    p.add_argument("corpus", help="catalog name (see `raydund catalog`) or a YAML file")
    p.add_argument("--split", action="append", help="only these splits (repeatable; default: all)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("extract", help="extract activations of every layer into the lake (Ray actors)")
    add_extract_arguments(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("similarity", help="one streaming pass: Pearson r of all neuron pairs, CKA of all layer pairs")
    _add_target(p)
    p.add_argument("--split", action="append", required=True, help="split to analyse; repeat for several")
    p.add_argument("--groups", type=int, default=None, help="tasks per token slice (share of layer-pair blocks)")
    p.add_argument("--skip-first", action="store_true", help="leave out the first word of every sentence")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per task for the products")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("cluster", help="correlation clustering swept over thresholds (needs `similarity`)")
    _add_target(p)
    p.add_argument("--split", required=True)
    p.add_argument("--thresholds", type=float, nargs="+", default=[round(0.1 * i, 1) for i in range(10)],
                   help="distance cuts on 1 - |r| (default 0.0 .. 0.9 by 0.1)")
    p.add_argument("--representative", choices=["random", "central"], default="random",
                   help="neuron kept per cluster: seeded random (the paper) or most central")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("probe", help="task-specific redundancy: layer-wise probes, control task, minimal neuron set")
    _add_target(p)
    p.add_argument("--label", required=True, help="corpus label column (pos, chunk, upos, semtag, label)")
    p.add_argument("--task", choices=["classification", "regression"], default="classification")
    p.add_argument("--splits", nargs=3, default=["train", "dev", "test"], metavar=("TRAIN", "DEV", "TEST"),
                   help="GLUE: train train dev (10%% of train, seeded, as dev; official dev as test)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--l1", type=float, default=1e-5)
    p.add_argument("--l2", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--redundant-share", type=float, default=0.99, help="layer redundant at this share of the oracle")
    p.add_argument("--keep-share", type=float, default=0.97, help="minimal set keeps this share of the oracle")
    p.add_argument("--no-control", action="store_true", help="skip the control task")
    p.add_argument("--cluster-split", default=None, help="also score the clustering sweep of this split")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N training rows only")
    p.add_argument("--standardize", action="store_true", help="probes on z-scored neurons (e.g. [CLS] of low layers)")
    _add_probe_training(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("finetune", help="fine-tune on a sentence-level task (Ray Train) and register the model in MLflow")
    p.add_argument("--model", default="minilm", help="catalog name, local folder or hub id (default: minilm)")
    p.add_argument("--corpus", required=True, help="an ingested sentence-level corpus (sst2, mrpc, rte, stsb)")
    p.add_argument("--task", choices=["classification", "regression"], default=None,
                   help="default: from the labels (scores: regression)")
    p.add_argument("--label", default="label", help="label column of the corpus")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="sentences per step per worker")
    p.add_argument("--max-length", type=int, default=128, help="tokens per input (pairs: both sides)")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dev-fraction", type=float, default=0.1, help="share of train held out as dev (seeded)")
    p.add_argument("--train-limit", type=int, default=None, help="only the first N train sentences")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (data parallel)")
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto", help="one GPU per worker")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs Ray reserves per worker")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: CPUs / workers)")
    p.add_argument("--max-failures", type=int, default=0, help="worker restarts (each resumes from a checkpoint)")
    p.add_argument("--fresh", action="store_true", help="drop this job's checkpoints and train again")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("transfer", help="efficient transfer: LayerSelector + CCFS per task, reduced model registered")
    _add_target(p)
    p.add_argument("--label", action="append", required=True, help="a task label column (repeat for several)")
    p.add_argument("--task", choices=["classification", "regression"], default="classification")
    p.add_argument("--splits", nargs=3, default=["train", "dev", "test"], metavar=("TRAIN", "DEV", "TEST"))
    p.add_argument("--stats-split", default="dev", help="split whose correlations (raydund similarity) CC uses")
    p.add_argument("--ls-threshold", type=float, action="append", help="relative loss LS may take (default 0.01)")
    p.add_argument("--ccfs-threshold", type=float, action="append", help="relative loss CC and FS may take (0.01)")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N training rows only")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-timing", action="store_true", help="skip the timing analysis")
    p.add_argument("--no-register", action="store_true", help="do not register the reduced models")
    p.add_argument("--standardize", action="store_true", help="probes on z-scored neurons")
    _add_probe_training(p)
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("report", help="one self-contained HTML page with the paper's figures and tables for a run")
    p.add_argument("run", help="MLflow run id (or raydund run id) of a completed `raydund transfer` job")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("explore", help="look at neurons: top words, labels, clusters, heatmaps, an HTML browser")
    explore = p.add_subparsers(dest="explore", required=True, metavar="WHAT")

    def explore_parser(name, help_text, neuron=False):
        e = explore.add_parser(name, help=help_text)
        _add_target(e)
        e.add_argument("--split", default="dev", help="split of the activations (default: dev)")
        if neuron:
            e.add_argument("--layer", type=int, required=True, help="layer (0 = embeddings)")
            e.add_argument("--neuron", type=int, required=True, help="neuron index within the layer")
        e.set_defaults(func=cmd_explore)
        return e

    e = explore_parser("top-words", "word types a neuron responds to (NeuroX get_top_words scores)", neuron=True)
    e.add_argument("--top-k", type=int, default=10, help="types shown (0: all)")
    e.add_argument("--min-count", type=int, default=1, help="only types seen at least this often")
    e.add_argument("--min-score", type=float, default=0.1, help="drop types scoring at most this (NeuroX: 0.1)")
    e.add_argument("--sort", choices=["score", "high", "low"], default="score",
                   help="score: mean |z| (NeuroX); high/low: highest/lowest mean activation")
    e = explore_parser("label-neurons", "neurons most associated with a label value (class-mean difference)")
    e.add_argument("--label", required=True, help="corpus label column (pos, chunk, ...)")
    e.add_argument("--value", required=True, help="label value (e.g. NN)")
    e.add_argument("--layer", type=int, action="append", help="only this layer (repeatable; default: all)")
    e.add_argument("--top-k", type=int, default=10, help="neurons shown (0: all)")
    e.add_argument("--absolute", action="store_true", help="rank by |score| (negative association too)")
    e = explore_parser("neuron-labels", "label values most associated with a neuron", neuron=True)
    e.add_argument("--label", required=True, help="corpus label column (pos, chunk, ...)")
    e.add_argument("--top-k", type=int, default=10, help="values shown (0: all)")
    e.add_argument("--min-count", type=int, default=1, help="only values seen at least this often")
    e = explore_parser("cluster", "a neuron's correlation cluster: members, layers, r, task ranks", neuron=True)
    e.add_argument("--threshold", type=float, default=0.3, help="clustering threshold (default 0.3)")
    e.add_argument("--representative", choices=["random", "central"], default=None,
                   help="which clustering run (default: the latest of the split)")
    e.add_argument("--seed", type=int, default=None, help="seed of the clustering run")
    e = explore_parser("heatmap", "activations of neurons over sentences as a picture (SVG + PNG)")
    e.add_argument("--neuron", action="append", metavar="L:N", help="a neuron as LAYER:INDEX (repeatable)")
    e.add_argument("--cluster", metavar="L:N", help="the members of this neuron's cluster (see --threshold)")
    e.add_argument("--threshold", type=float, default=0.3, help="clustering threshold for --cluster")
    e.add_argument("--task", help="the top-k neurons of this task's ranking (`raydund probe` first)")
    e.add_argument("--ranker", default="lca", help="ranking for --task: lca or probeless")
    e.add_argument("--top-k", type=int, default=5, help="neurons for --task")
    e.add_argument("--sentence", type=int, action="append", help="sentence id (repeatable; default: a sample)")
    e.add_argument("--sentences", type=int, default=2, help="sampled sentences when --sentence is not given")
    e.add_argument("--seed", type=int, default=0, help="seed of the sentence sample")
    e.add_argument("--line-chars", type=int, default=90, help="wrap sentences at this many characters")
    e.add_argument("--scale", choices=["neuron", "global"], default="neuron",
                   help="colour scale per neuron (default) or one for all")
    e.add_argument("--out", default=None, help="output path without suffix (default: the report folder)")
    e = explore_parser("browser", "write the static HTML neuron browser of a (model, corpus) and log it to MLflow")
    e.add_argument("--top-k", type=int, default=10, help="top words exported per neuron")
    e.add_argument("--min-count", type=int, default=5, help="top words seen at least this often")
    e.add_argument("--sentences", type=int, default=3, help="sample sentences for the heatmaps")
    e.add_argument("--threshold", type=float, default=0.3, help="clustering threshold selected on opening")
    e.add_argument("--seed", type=int, default=0, help="seed of the sentence sample")
    e.add_argument("--representative", choices=["random", "central"], default=None,
                   help="which clustering run (default: the latest of the split)")
    e.add_argument("--cluster-seed", type=int, default=None, help="seed of the clustering run")
    e.add_argument("--no-track", action="store_true", help="do not log the page to MLflow")

    p = sub.add_parser("tables", help="list lake tables (rows, files, snapshot)")
    p.add_argument("--partitions", action="store_true", help="also rows per activation partition")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("runs", help="completed stage runs: what readers see, with the snapshot of every table written")
    p.add_argument("--stage", help="only this stage (similarity, cluster, probes, transfer)")
    p.add_argument("--model", help="only this model")
    p.add_argument("--corpus", help="only this corpus")
    p.add_argument("--last", type=int, default=20, help="the newest N (default 20)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("tracking", help="MLflow bookkeeping")
    tsub = p.add_subparsers(dest="tracking_command", required=True)
    t = tsub.add_parser("flush", help="send what a job could not log (MLflow was down after its lake commit)")
    t.set_defaults(func=cmd_tracking_flush)

    p = sub.add_parser("vacuum", help="expire old snapshots and delete files no retained snapshot references "
                                      "(dry run unless --yes)")
    p.add_argument("--retention-days", type=float, default=7.0,
                   help="keep snapshots and unreferenced files younger than this (default 7)")
    p.add_argument("--keep-last", type=int, default=5, help="snapshots every table keeps whatever their age (default 5)")
    p.add_argument("--yes", action="store_true", help="really expire and delete (default: only report)")
    p.set_defaults(func=cmd_vacuum)

    p = sub.add_parser("catalog", help="list the corpora and models the catalog declares")
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("demo", help="the whole analysis on MiniLM x CoNLL-2000 (POS, chunking) and PMB semantic tags")
    p.add_argument("--limit", type=int, default=None, help="only the first N sentences of each split")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("submit", help="run a jobs/*.py script on a Ray cluster (ray job submit) and stream its logs")
    p.add_argument("--address", default=None,
                   help="job server URL (default: RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, http://127.0.0.1:8265)")
    p.add_argument("--working-dir", default=None, help="uploaded as the job's working dir (default: .)")
    p.add_argument("--env", action="append", help="also pass this environment variable (never credentials)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.add_argument("script", help="extract | similarity | cluster | probe | ... or jobs/NAME.py")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("bench", help="benchmarks (see BENCHMARKS.md)")
    bench = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    b = bench.add_parser("extract", help="words/s: raydund job vs a bare transformers loop vs NeuroX 1.0.9")
    b.add_argument("--model", default="minilm")
    b.add_argument("--corpus", default="conll2000")
    b.add_argument("--split", default="train")
    b.add_argument("--limit", type=int, default=None, help="sentences (default: the whole split)")
    b.add_argument("--neurox-limit", type=int, default=200, help="sentences for NeuroX (it is slow)")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--out", default=None, help="write the figures as JSON here")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("similarity", help="streaming r/CKA/clustering vs NeuroX, and vs the float64 SYRK floor")
    b.add_argument("--model", default="minilm")
    b.add_argument("--corpus", default="conll2000")
    b.add_argument("--split", default="train")
    b.add_argument("--paper-tokens", type=int, default=150_000, help="tokens of the synthetic 13 x 768 run")
    b.add_argument("--parts", nargs="+", choices=["minilm", "paper"], default=["minilm", "paper"])
    b.add_argument("--out", default=None, help="write the figures as JSON here")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("probes", help="layer-wise probes + minimal-set search vs NeuroX one probe at a time")
    _add_probe_bench_task(b)
    b.add_argument("--threads", type=int, default=None, help="torch threads for both (default: all CPUs)")
    _add_probe_training(b, workers=False)
    b.add_argument("--out", default=None, help="write the figures as JSON here")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("probe-workers", help="the probe job with 1 and more layer-block workers: time, peak memory")
    _add_probe_bench_task(b)
    b.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    b.add_argument("--epochs", type=int, default=10)
    b.add_argument("--out", default=None, help="write the figures as JSON here")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("scaling", help="words/s and peak memory of extraction and similarity at 1x/2x/4x words")
    b.add_argument("--model", default="minilm")
    b.add_argument("--corpus", default="conll2000")
    b.add_argument("--split", default="train")
    b.add_argument("--words", type=int, nargs="+", default=[10_000, 20_000, 40_000], help="corpus sizes (words)")
    b.add_argument("--pool-sizes", type=int, nargs="+", default=[1, 2], help="extraction actors, at the largest size")
    b.add_argument("--out", default=None, help="write the figures as JSON here")
    b.set_defaults(func=cmd_bench)
    b = bench.add_parser("large", help="BERT-large shape (25,600 neurons, random weights): every stage, time + memory")
    b.add_argument("--words", type=int, nargs="+", default=[20_000], help="train words per run (CoNLL-2000 prefix)")
    b.add_argument("--corpus", default="conll2000")
    b.add_argument("--label", default="pos")
    b.add_argument("--stages", nargs="+", choices=["extract", "similarity", "cluster", "probes"],
                   default=["extract", "similarity", "cluster", "probes"])
    b.add_argument("--out", default=None, help="write the figures as JSON here")
    b.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        _check_names(args)
        args.func(args)
    except UserError as exc:
        from raydund.config import redact_uri  # noqa: PLC0415

        print(f"raydund: error: {redact_uri(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raydund: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
