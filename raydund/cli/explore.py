"""``raydund explore WHAT``: look at neurons (top words, labels, clusters, heatmaps, the HTML browser)."""

from __future__ import annotations

from raydund.cli.common import command, emit, read_lake
from raydund.cli.options import UNITS, add_fields
from raydund.errors import UserError


def register(sub) -> None:
    p = command(sub, "explore", "look at neurons: top words, labels, clusters, heatmaps, an HTML browser", None,
                json_output=False)
    what = p.add_subparsers(dest="explore", required=True, metavar="WHAT")

    def explore_parser(name, help_text, func, neuron=False, populate=None):
        e = command(what, name, help_text, func, populate=populate)
        e.add_argument("--model", default="minilm", help="model name as stored in the lake (default: minilm)")
        e.add_argument("--corpus", required=True)
        e.add_argument("--unit", choices=UNITS, default="word")
        e.add_argument("--split", default="dev", help="split of the activations (default: dev)")
        if neuron:
            e.add_argument("--layer", type=int, required=True, help="layer (0 = embeddings)")
            e.add_argument("--neuron", type=int, required=True, help="neuron index within the layer")
        return e

    e = explore_parser("top-words", "word types a neuron responds to (NeuroX get_top_words scores)", cmd_top_words,
                       neuron=True)
    e.add_argument("--top-k", type=int, default=10, help="types shown (0: all)")
    e.add_argument("--min-count", type=int, default=1, help="only types seen at least this often")
    e.add_argument("--min-score", type=float, default=0.1, help="drop types scoring at most this (NeuroX: 0.1)")
    e.add_argument("--sort", choices=["score", "high", "low"], default="score",
                   help="score: mean |z| (NeuroX); high/low: highest/lowest mean activation")
    e = explore_parser("label-neurons", "neurons most associated with a label value (class-mean difference)",
                       cmd_label_neurons)
    e.add_argument("--label", required=True, help="corpus label column (pos, chunk, ...)")
    e.add_argument("--value", required=True, help="label value (e.g. NN)")
    e.add_argument("--layer", type=int, action="append", help="only this layer (repeatable; default: all)")
    e.add_argument("--top-k", type=int, default=10, help="neurons shown (0: all)")
    e.add_argument("--absolute", action="store_true", help="rank by |score| (negative association too)")
    e = explore_parser("neuron-labels", "label values most associated with a neuron", cmd_neuron_labels, neuron=True)
    e.add_argument("--label", required=True, help="corpus label column (pos, chunk, ...)")
    e.add_argument("--top-k", type=int, default=10, help="values shown (0: all)")
    e.add_argument("--min-count", type=int, default=1, help="only values seen at least this often")
    e = explore_parser("cluster", "a neuron's correlation cluster: members, layers, r, task ranks", cmd_cluster,
                       neuron=True)
    e.add_argument("--threshold", type=float, default=0.3, help="clustering threshold (default 0.3)")
    _add_clustering_run(e, "--seed")
    e = explore_parser("heatmap", "activations of neurons over sentences as a picture (SVG + PNG)", cmd_heatmap)
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
    e = explore_parser("browser", "write the static HTML neuron browser of a (model, corpus) and log it to MLflow",
                       cmd_browser, populate=_browser_options)
    _add_clustering_run(e, "--cluster-seed")
    e.add_argument("--no-track", action="store_true", help="do not log the page to MLflow")


def _add_clustering_run(e, seed_flag: str) -> None:
    e.add_argument("--representative", choices=["random", "central"], default=None,
                   help="which clustering run (default: the latest of the split)")
    e.add_argument(seed_flag, type=int, default=None, help="seed of the clustering run")


def _browser_options(p) -> None:
    from raydund.explore import BrowserConfig

    add_fields(p, BrowserConfig)


def _frame(args, frame) -> None:
    """A polars frame as a table, or as JSON rows."""
    import polars as pl

    with pl.Config(tbl_rows=100, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
        emit(args, frame.to_dicts(), lambda: str(frame))


def cmd_top_words(args) -> None:
    from raydund import explore as ex

    _, lake = read_lake()
    _frame(args, ex.top_words(lake, args.model, args.corpus, args.layer, args.neuron, split=args.split,
                              unit=args.unit, top_k=args.top_k, min_count=args.min_count, min_score=args.min_score,
                              sort=args.sort))


def cmd_label_neurons(args) -> None:
    from raydund import explore as ex

    _, lake = read_lake()
    _frame(args, ex.label_neurons(lake, args.model, args.corpus, args.label, args.value, split=args.split,
                                  unit=args.unit, layers=args.layer, top_k=args.top_k, absolute=args.absolute))


def cmd_neuron_labels(args) -> None:
    from raydund import explore as ex

    _, lake = read_lake()
    _frame(args, ex.neuron_labels(lake, args.model, args.corpus, args.label, args.layer, args.neuron,
                                  split=args.split, unit=args.unit, top_k=args.top_k, min_count=args.min_count))


def cmd_cluster(args) -> None:
    import polars as pl

    from raydund import explore as ex

    _, lake = read_lake()
    view = ex.cluster_of(lake, args.model, args.corpus, args.layer, args.neuron, args.threshold,
                         split=args.split, unit=args.unit, representative=args.representative, seed=args.seed)

    def text() -> str:
        with pl.Config(tbl_rows=100, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
            lines = [f"L{view.layer} n{view.neuron}: cluster {view.cluster_id} at threshold {view.threshold:g}, "
                     f"{view.members.height} member(s)", str(view.members),
                     "task rankings:" if view.ranks.height else "task rankings: none stored (run `raydund probe`)"]
            if view.ranks.height:
                lines.append(str(view.ranks))
            return "\n".join(lines)

    emit(args, {"layer": view.layer, "neuron": view.neuron, "cluster_id": view.cluster_id,
                "threshold": view.threshold, "members": view.members, "ranks": view.ranks}, text)


def _heatmap_neurons(args, lake, ex) -> tuple[list, str]:
    """The neurons a heatmap shows and how to name them."""
    if args.cluster:
        layer, neuron = ex.parse_neuron(args.cluster)
        view = ex.cluster_of(lake, args.model, args.corpus, layer, neuron, args.threshold, split=args.split,
                             unit=args.unit)
        neurons = list(zip(view.members["layer"].to_list(), view.members["neuron"].to_list()))
        return neurons, f"cluster of L{layer} n{neuron} at threshold {args.threshold:g}"
    if args.task:
        neurons = ex.task_top_neurons(lake, args.model, args.corpus, args.task, args.ranker, args.top_k, args.unit)
        return neurons, f"top {len(neurons)} {args.ranker} neurons of {args.task}"
    if args.neuron:
        neurons = [ex.parse_neuron(n) for n in args.neuron]
        return neurons, ", ".join(f"L{l} n{n}" for l, n in neurons)
    raise UserError("choose neurons: --neuron L:N (repeatable), --cluster L:N or --task TASK")


def cmd_heatmap(args) -> None:
    from raydund import explore as ex
    from raydund.explore import heatmap

    found, lake = read_lake()
    where = ex.Slice(args.model, args.corpus, args.split, args.unit)
    neurons, what = _heatmap_neurons(args, lake, ex)
    sentences = args.sentence or ex.sample_sentences(lake, where, args.sentences, seed=args.seed)
    words, values = ex.sentence_activations(lake, where, sentences, neurons)
    fig = heatmap.activation_heatmap(words, values, [f"L{l} n{n}" for l, n in neurons],
                                     title=f"{args.model}, {args.corpus}/{args.split}: {what}",
                                     line_chars=args.line_chars, scale=args.scale,
                                     sentence_titles=[f"sentence {s}" for s in sentences])
    stem = args.out or found.report_dir(args.model, args.corpus) / "heatmaps" / "heatmap"
    paths = [str(path) for path in heatmap.save(fig, stem)]
    heatmap.close(fig)
    emit(args, {"files": paths, "neurons": neurons, "sentences": sentences}, "\n".join(paths))


def cmd_browser(args) -> None:
    from raydund import explore as ex
    from raydund.cli.options import config_from

    found, _ = read_lake()
    page = ex.build_browser(found, args.model, args.corpus, args.split, args.unit, config_from(args, ex.BrowserConfig),
                            track=not args.no_track, representative=args.representative,
                            cluster_seed=args.cluster_seed)
    emit(args, {"browser": page}, f"neuron browser: {page}")
