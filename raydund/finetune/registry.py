"""The MLflow registry side of fine-tuning: names, registration, version status, reuse.

A fine-tuned model is registered as ``raydund-<model>-<corpus>``; each version is tagged
with its job key, its test metrics and its lake name ``<model>-ft-<corpus>-v<version>``
(so two fine-tunings never mix in one partition). A version is created ``pending`` and
tagged ``committed`` last; one whose registration was interrupted is tagged ``failed``
by the next run of its job and never returned.
"""

from __future__ import annotations

import logging

from raydund import faults, tracking
from raydund.extract.encoder import LAKE_MODEL_TAG
from raydund.finetune.config import FinetuneResult

log = logging.getLogger(__name__)

JOB_KEY_TAG = "raydund.job_key"
#: Registry tag of a version's state: ``pending`` (being registered), ``committed`` (complete: a re-run
#: of its job returns it) or ``failed`` (its registration was interrupted; never returned).
STATUS_TAG = tracking.STATUS_TAG


def registered_name(model: str, corpus: str) -> str:
    """The MLflow registry name of ``model`` fine-tuned on ``corpus``."""
    return f"raydund-{model}-{corpus}"


def lake_model_name(model: str, corpus: str, version: str | int) -> str:
    """The lake ``model`` name of a registered version's activations: ``minilm-ft-sst2-v1``."""
    return f"{model}-ft-{corpus}-v{version}"


def existing_version(client, name: str, key: str):
    """The complete version an earlier run of this job registered, if any.

    Complete: tagged ``committed``, or registered before versions had a status (it has
    its lake name). A ``pending`` or ``failed`` version is never returned.
    """
    versions = client.search_model_versions(f"name='{name}'")  # empty when the model is not registered yet
    found = [v for v in versions if v.tags.get(JOB_KEY_TAG) == key and _complete(v)]
    return max(found, key=lambda v: int(v.version)) if found else None


def _complete(version) -> bool:
    status = version.tags.get(STATUS_TAG)
    return status == "committed" or (status is None and LAKE_MODEL_TAG in version.tags)


def fail_interrupted_versions(client, name: str, key: str) -> list[str]:
    """Tag ``failed`` every ``pending`` version of job ``key``: its registration never finished.

    Runs of one job key share their Ray Train storage, so they never run at the same
    time: a pending version seen by a new run of the same key belongs to a dead run.
    Returns the versions it tagged.
    """
    versions = client.search_model_versions(f"name='{name}'")  # empty when the model is not registered yet
    stale = [str(v.version) for v in versions
             if v.tags.get(JOB_KEY_TAG) == key and v.tags.get(STATUS_TAG) == "pending"]
    for number in stale:
        client.set_model_version_tag(name, number, STATUS_TAG, "failed")
        log.warning("%s version %s: its registration was interrupted; tagged failed", name, number)
    return stale


def register(client, mlflow, name: str, run_id: str, key: str, model: str, corpus: str, task: str, test: dict):
    """A new version of ``name`` from this run's ``model`` artifacts, tagged with its lake name and metrics.

    The version is created ``pending`` and tagged ``committed`` last, once every tag is set.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"raydund.base_model": model, "raydund.corpus": corpus},
                                       description=f"{model} fine-tuned on {corpus} ({task}) by raydund")
    source = mlflow.get_artifact_uri("model")
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={JOB_KEY_TAG: key, "raydund.task": task, STATUS_TAG: "pending",
                                                **{f"test_{k}": f"{v:.6f}" for k, v in test.items()}})
    lake_model = lake_model_name(model, corpus, version.version)
    client.set_model_version_tag(name, version.version, LAKE_MODEL_TAG, lake_model)
    faults.crash_point("finetune.during_registration")
    client.set_model_version_tag(name, version.version, STATUS_TAG, "committed")
    return client.get_model_version(name, version.version)


def result_of(client, version, task: str, key: str, seconds: float) -> FinetuneResult:
    """A :class:`FinetuneResult` rebuilt from a registered version and its run."""
    run = client.get_run(version.run_id)
    metrics = run.data.metrics
    history = []
    for m in client.get_metric_history(version.run_id, "train_loss"):
        record = {"epoch": m.step, "train_loss": m.value}
        for name in metrics:
            if name.startswith("dev_") and not name.endswith("_final"):
                values = [h.value for h in client.get_metric_history(version.run_id, name) if h.step == m.step]
                record[name] = values[0] if values else float("nan")
        history.append(record)
    return FinetuneResult(
        registered_name=version.name, version=str(version.version), lake_model=version.tags[LAKE_MODEL_TAG],
        task=task, test={k[5:]: v for k, v in metrics.items() if k.startswith("test_")},
        dev={k[4:-6]: v for k, v in metrics.items() if k.startswith("dev_") and k.endswith("_final")},
        history=sorted(history, key=lambda r: r["epoch"]), start_epochs=[], run_id=version.run_id, job_key=key,
        seconds=seconds, reused=True,
    )
