"""``raydund similarity``, ``raydund cluster`` and ``raydund robust-cka``: general redundancy."""

from __future__ import annotations

from raydund.cli.common import add_no_progress, command, emit, progress, settings
from raydund.cli.options import UNITS, Opt, add_fields, config_from

#: The lake target of a stage reading activations.
TARGET = {"model": Opt(default="minilm", help="model name as stored in the lake"), "unit": Opt(choices=UNITS)}
SIMILARITY = {
    **TARGET,
    "split": Opt(action="append", help="split to analyse; repeat for several"),
    "groups": Opt(flag="--workers", old=("--groups",)),
    "num_gpus": Opt(flag="--gpus", old=("--num-gpus",)),
}
#: Tuning knobs and overrides that are not options (``RAYDUND_DEVICE`` chooses the device).
SIMILARITY_SKIP = ("chunk_rows", "cpus_per_task", "device")
CLUSTER = {
    **TARGET,
    "thresholds": Opt(help="distance cuts on 1 - |r|"),
    "representative": Opt(choices=("random", "central"),
                          help="neuron kept per cluster: seeded random (the paper) or most central"),
    "seed": Opt(help="seed of the random representatives"),
}
CLUSTER_SKIP = ("variant",)


def register(sub) -> None:
    command(sub, "similarity", "one streaming pass: Pearson r of all neuron pairs, CKA of all layer pairs",
            cmd_similarity, populate=_similarity_options)
    command(sub, "cluster", "correlation clustering swept over thresholds (needs `similarity`)", cmd_cluster,
            populate=_cluster_options)
    command(sub, "robust-cka", "layer similarity robust to massive activations, on a token sample: outlier "
            "dimensions, CKA without them, debiased CKA on standardised neurons, mutual k-NN", cmd_robust,
            populate=_robust_options)


def _similarity_options(p) -> None:
    from raydund.general.stream import SimilarityConfig

    add_fields(p, SimilarityConfig, SIMILARITY, SIMILARITY_SKIP)
    add_no_progress(p)


def _cluster_options(p) -> None:
    from raydund.general.job import ClusterConfig

    add_fields(p, ClusterConfig, CLUSTER, CLUSTER_SKIP)


def matrix_text(title, m) -> str:
    """A small matrix as aligned rows (2 decimals)."""
    rows = [f"{title:>6} " + " ".join(f"{j:>5}" for j in range(m.shape[1]))]
    rows += [f"{i:>6} " + " ".join(f"{v:5.2f}" for v in row) for i, row in enumerate(m)]
    return "\n".join(rows)


def cmd_similarity(args) -> None:
    from raydund.general.job import run_similarity
    from raydund.general.stream import SimilarityConfig

    found = settings()
    results = []
    for split in args.split:
        cfg = config_from(args, SimilarityConfig, SIMILARITY, SIMILARITY_SKIP, split=split)
        out = run_similarity(cfg, found, progress=progress(args))
        sim = out["similarity"]
        results.append({"model": cfg.model, "corpus": cfg.corpus, "split": split, "unit": cfg.unit,
                        "tokens": sim.n, "neurons": len(sim.constant), "constant_neurons": out["constant_neurons"],
                        "cka_adjacent_mean": out["cka_adjacent_mean"],
                        "cka_debiased_adjacent_mean": out["cka_debiased_adjacent_mean"],
                        "cka": sim.cka, "cka_debiased": sim.cka_debiased, "run_id": out["run_id"]})
        if not args.json:  # each split as it lands
            print(f"{cfg.model} {cfg.corpus}/{split}: {sim.n} tokens x {len(sim.constant)} neurons "
                  f"({out['constant_neurons']} constant); mean CKA of adjacent layers {out['cka_adjacent_mean']:.3f} "
                  f"(debiased {out['cka_debiased_adjacent_mean']:.3f}); MLflow run {out['run_id']}")
            print(matrix_text("CKA", sim.cka))
    if args.json:
        emit(args, results)


def cmd_cluster(args) -> None:
    from raydund.config import check_unit_interval
    from raydund.general.job import ClusterConfig, run_clustering

    for t in args.thresholds:
        check_unit_interval("--thresholds", t)
    found = settings()
    cc = run_clustering(config_from(args, ClusterConfig, CLUSTER, CLUSTER_SKIP), found)

    def text() -> str:
        lines = [f"{'threshold':>9} {'clusters':>8} {'kept':>6} {'reduction':>9}  same/adjacent/within3/far"]
        for row in cc.summary_:
            lines.append(f"{row['threshold']:>9.2f} {row['clusters']:>8} {row['neurons_kept']:>6} "
                         f"{row['reduction']:>9.1%}  {row['same layer']:.2f}/{row['adjacent layers']:.2f}/"
                         f"{row['within 3 layers']:.2f}/{row['more than 3 apart']:.2f}")
        return "\n".join(lines)

    emit(args, cc.summary_, text)


ROBUST = {**TARGET, "tokens": Opt(help="words in the sample (whole sentences; one tokens x tokens Gram per layer)")}


def _robust_options(p) -> None:
    from raydund.general.robust_job import RobustConfig

    add_fields(p, RobustConfig, ROBUST, ())


def cmd_robust(args) -> None:
    import numpy as np

    from raydund.general.robust_job import RobustConfig, run_robust_similarity

    cfg = config_from(args, RobustConfig, ROBUST, ()).check()
    result, run_id = run_robust_similarity(cfg, settings())
    adjacent = {v: [round(float(x), 4) for x in result.adjacent(v)] for v in result.VARIANTS}
    if args.json:
        emit(args, {"run_id": run_id, "tokens": result.tokens, "adjacent": adjacent,
                    "massive_dimensions": [o.tolist() for o in result.outliers]})
        return
    print(f"{cfg.model} {cfg.corpus}/{cfg.split} ({cfg.unit}): {result.tokens} sampled words, MLflow run {run_id}")
    dims = sorted({int(d) for o in result.outliers for d in o})
    print(f"massive dimensions (max |x| >= {cfg.ratio:g} x median): {dims or 'none'}")
    print("adjacent layers, mean (min):")
    for variant in result.VARIANTS:
        values = result.adjacent(variant)
        print(f"  {variant:<18} {np.nanmean(values):.3f} ({np.nanmin(values):.3f})")
