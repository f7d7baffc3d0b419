"""MLflow: one experiment per (model, corpus), one run per job, absolute artifact locations.

Experiments are created here, on the driver, never by workers (concurrent creation
races in MLflow), with an absolute artifact location so that a Ray job's temporary
working directory never receives artifacts.
"""

from __future__ import annotations

import contextlib
import logging
import os

from raydund.config import Settings

log = logging.getLogger(__name__)


def configure(settings: Settings):
    """Point MLflow at the settings' tracking store and return the ``mlflow`` module."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow  # noqa: PLC0415  (slow import, only where tracking happens)

    settings.prepare()
    mlflow.set_tracking_uri(settings.tracking_uri)
    return mlflow


def experiment_name(model: str, corpus: str) -> str:
    """The experiment that groups every job on one (model, corpus)."""
    return f"raydund/{model}/{corpus}"


def ensure_experiment(settings: Settings, name: str) -> str:
    """Get or create an experiment with an absolute artifact location; return its id."""
    mlflow = configure(settings)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = f"{settings.artifact_root.rstrip('/')}/{name.replace('/', '_')}"
    return client.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def job_run(settings: Settings, experiment: str, run_name: str, params: dict, tags: dict | None = None):
    """Start an MLflow run for one job; yields the active run. Failed jobs end as FAILED."""
    mlflow = configure(settings)
    exp_id = ensure_experiment(settings, experiment)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags or {}) as run:
        mlflow.log_params({k: "" if v is None else v for k, v in params.items()})
        yield run


def ui_command(settings: Settings) -> str:
    """The command that opens the MLflow UI on this installation's store."""
    return f"mlflow ui --backend-store-uri {settings.tracking_uri} --host 127.0.0.1 --port 5000"
