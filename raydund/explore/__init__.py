"""Looking at neurons: top words, label association, clusters, rankings, heatmaps, a browser.

============== ==========================================================================
module         holds
============== ==========================================================================
``queries``    questions answered from the activation table: a neuron's activations,
               top words, label association, sample sentences (lake reads)
``results``    clusters, correlations and task rankings, read through completed runs
``statistics`` pure NumPy/polars: NeuroX word scores, type statistics, class-mean
               differences, the browser's heat levels
``heatmap``    text heatmaps (the paper's Figure 6) as SVG/PNG (matplotlib)
``browser``    the static HTML neuron browser (``browser.js``/``browser.css`` inlined)
``job``        the driver: ``browser_data``, ``build_browser`` (page file + MLflow)
============== ==========================================================================

Every public name is re-exported here (``from raydund import explore as ex;
ex.top_words(...)``); ``heatmap`` and ``browser`` are imported on demand
(``from raydund.explore import heatmap``), so this package does not load matplotlib.
"""

from raydund.explore.job import BrowserConfig, browser_data, browser_runs, build_browser
from raydund.explore.queries import (
                                     Slice,
                                     check_layer,
                                     check_neurons,
                                     label_neurons,
                                     layer_width,
                                     layers_of,
                                     neuron_columns,
                                     neuron_labels,
                                     parse_neuron,
                                     partitions,
                                     sample_sentences,
                                     sentence_activations,
                                     token_labels,
                                     top_words,
)
from raydund.explore.results import (
                                     CLUSTERS,
                                     CORRELATION,
                                     RANKINGS,
                                     ClusterView,
                                     cluster_of,
                                     cluster_rows,
                                     cluster_run,
                                     correlations,
                                     distinct_runs,
                                     neuron_ranks,
                                     ranking_runs,
                                     rankings,
                                     similarity_run,
                                     task_top_neurons,
                                     thresholds,
)
from raydund.explore.statistics import (
                                     MIN_SCORE,
                                     SORTS,
                                     class_mean_differences,
                                     heat_levels,
                                     select_top,
                                     top_types,
                                     type_statistics,
                                     word_scores,
)

__all__ = [
    "CLUSTERS", "CORRELATION", "MIN_SCORE", "RANKINGS", "SORTS", "BrowserConfig", "ClusterView", "Slice",
    "browser_data", "browser_runs", "build_browser", "check_layer", "check_neurons", "class_mean_differences",
    "cluster_of", "cluster_rows", "cluster_run", "correlations", "distinct_runs", "heat_levels", "label_neurons",
    "layer_width", "layers_of", "neuron_columns", "neuron_labels", "neuron_ranks", "parse_neuron", "partitions",
    "ranking_runs", "rankings", "sample_sentences", "select_top", "sentence_activations", "similarity_run",
    "task_top_neurons", "thresholds", "token_labels", "top_types", "top_words", "type_statistics", "word_scores",
]
