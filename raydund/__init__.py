"""raydund: redundancy analysis of pretrained transformers, from a laptop to a Ray cluster.

The pipeline, one package per stage::

    corpora/  -> lake/    -> extract/                -> general/, probes/, transfer/, finetune/
    readers      Iceberg     Ray Data actors writing    statistics, probes, reduced models
                             per-word activations

``config`` holds where things live (home folder, catalog, warehouse, MLflow);
``tracking`` records every job as an MLflow run.
"""

__version__ = "0.1.0"

#: URI schemes :func:`load_model` passes to MLflow as they are.
_MODEL_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:", "file:", "s3://")


def load_model(name_or_uri: str, settings=None):
    """Load a model raydund registered (a reduced transfer model, a fine-tuning) from raydund's MLflow store.

    Plain ``mlflow.pyfunc.load_model("models:/...")`` looks in whatever store
    ``MLFLOW_TRACKING_URI`` names (``./mlruns`` when unset); this resolves the store from
    raydund's settings (``RAYDUND_HOME`` / ``MLFLOW_TRACKING_URI``) first.

    Parameters
    ----------
    name_or_uri : str
        A registered model name (its newest committed version: ``raydund-transfer-minilm-conll2000-pos``)
        or an MLflow URI (``models:/NAME/1``, ``models:/NAME@alias``, ``runs:/RUN/reduced_model``).
    settings : raydund.config.Settings, optional
        Where the store is (default: :meth:`~raydund.config.Settings.from_env`).

    Returns
    -------
    mlflow.pyfunc.PyFuncModel
        ``.predict(["Stocks fell sharply ."])`` for a reduced model.
    """
    from raydund import tracking
    from raydund.config import Settings

    mlflow = tracking.configure(settings or Settings.from_env())
    uri = str(name_or_uri)
    name = None if uri.startswith(_MODEL_URI_PREFIXES) else uri
    if uri.startswith("models:/") and uri.endswith("/latest"):
        name = uri[len("models:/"):-len("/latest")]
    if name is not None:  # the newest version whose job committed, never a failed or pending one
        uri = f"models:/{name}/{tracking.latest_valid_version(mlflow.MlflowClient(), name).version}"
    return mlflow.pyfunc.load_model(uri)
