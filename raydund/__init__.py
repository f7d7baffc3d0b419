"""raydund: redundancy analysis of pretrained transformers, from a laptop to a Ray cluster.

The pipeline, one module per stage::

    corpora/  -> lake.py  -> extract/  -> (statistics, probes, selection: later stages)
    readers      Iceberg     Ray Data actors writing per-word activations

``config`` holds where things live (home folder, catalog, warehouse, MLflow);
``tracking`` records every job as an MLflow run.
"""

__version__ = "0.1.0"
