"""What a stage logs after its lake commit: :class:`Tracker`, and the spool that keeps what MLflow refused.

From the first failed call on, a tracker's records go to ``$RAYDUND_HOME/mlflow-spool/<run_id>.jsonl``
in order (artifacts as files beside it); :func:`replay_spool` (``raydund tracking flush``)
sends them later. Re-exported by :mod:`raydund.tracking`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from raydund import tracking
from raydund.config import Settings

log = logging.getLogger(__name__)


def _spool_dir(settings: Settings):
    return settings.home / "mlflow-spool"


def _spool_path(settings: Settings, run_id: str):
    return _spool_dir(settings) / f"{run_id}.jsonl"


def _spool(settings: Settings, run_id: str, record: dict) -> None:
    path = _spool_path(settings, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.time(), **record}) + "\n")
        log.warning("MLflow: kept what could not be logged in %s (send it later with `raydund tracking flush`)",
                    path)
    except OSError as exc:
        log.error("MLflow: could not spool %s for run %s: %s", record, run_id, exc)


class Tracker:
    """Everything a stage logs to one MLflow run once its lake commit stands; never raises.

    Each call goes to MLflow by run id (no active-run state, safe from any process).
    When one fails (server gone, store locked), that record and every later one of this
    tracker go to the spool ``$RAYDUND_HOME/mlflow-spool/<run_id>.jsonl`` in order
    (artifacts as files beside it), and ``raydund tracking flush`` (:func:`replay_spool`)
    sends them later. So a tracking failure after the commit never loses or undoes the
    commit, in every stage.

    Parameters
    ----------
    settings : Settings
    run_id : str
        The MLflow run of the job.
    """

    def __init__(self, settings: Settings, run_id: str):
        self.settings = settings
        self.run_id = run_id
        #: Whether a call failed and the rest went to the spool.
        self.spooling = False
        self._mlflow = None

    def _send(self, record: dict) -> bool:
        if not self.spooling:
            try:
                self._mlflow = self._mlflow or tracking.configure(self.settings)
                _apply(self._mlflow, self.run_id, record)
                return True
            except Exception as exc:  # noqa: BLE001  (tracking must not lose computed results)
                log.warning("MLflow: %s for run %s failed (%s)", record["kind"], self.run_id, exc)
                self.spooling = True
        _spool(self.settings, self.run_id, record)
        return False

    def metrics(self, metrics: dict, step: int | None = None) -> bool:
        """Log numbers (cast to float)."""
        return self._send({"kind": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step})

    def tags(self, tags: dict) -> bool:
        """Set tags (scrubbed of credentials)."""
        return self._send({"kind": "tags", "tags": {k: str(v) for k, v in tracking.scrub(tags).items()}})

    def artifact(self, write, artifact_path: str) -> bool:
        """Log a file that ``write(path)`` creates, as ``artifact_path`` of the run."""
        folder = _spool_dir(self.settings) / "artifacts" / self.run_id
        local = folder / artifact_path
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            write(local)
        except Exception as exc:  # noqa: BLE001  (a figure that cannot be drawn must not fail a finished job)
            log.warning("could not write %s: %s", artifact_path, exc)
            return False
        sent = self._send({"kind": "artifact", "local": str(local), "path": artifact_path})
        if sent:
            local.unlink(missing_ok=True)
        return sent

    def figure(self, fig, artifact_path: str) -> bool:
        """A matplotlib figure as a PNG artifact (the figure is closed)."""
        from raydund.report import figures

        try:
            return self.artifact(lambda p: fig.savefig(p, dpi=110, bbox_inches="tight"), artifact_path)
        finally:
            figures.close(fig)

    def text(self, text: str, artifact_path: str) -> bool:
        """A text artifact."""
        return self.artifact(lambda p: p.write_text(text, encoding="utf-8"), artifact_path)

    def json(self, data, artifact_path: str) -> bool:
        """A JSON artifact (``data`` must be JSON-serialisable: lists, dicts, numbers, strings)."""
        return self.text(json.dumps(data, indent=1, default=float), artifact_path)

    def child(self, run_name: str, params: dict | None = None, metrics: dict | None = None) -> bool:
        """A nested run under this one, with its parameters and metrics."""
        return self._send({"kind": "child", "name": run_name, "params": {k: str(v) for k, v in
                                                                           tracking.scrub(params or {}).items()},
                           "metrics": {k: float(v) for k, v in (metrics or {}).items()}})

    def model_version(self, name: str, version: str, tags: dict, alias: str | None = None) -> bool:
        """Tag a registered model version (and point ``alias`` at it)."""
        return self._send({"kind": "model_version", "name": name, "version": str(version),
                           "tags": {k: str(v) for k, v in tags.items()}, "alias": alias})


def _apply(mlflow, run_id: str, record: dict) -> None:
    """Send one tracking record to MLflow (live, or replayed from the spool)."""
    client = mlflow.MlflowClient()
    now = int(record.get("time", time.time()) * 1000)
    kind = record.get("kind") or next(k for k in ("metrics", "tags", "status") if k in record)
    if kind == "metrics":
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, now, record.get("step") or 0)
                                          for k, v in record["metrics"].items()])
    elif kind == "tags":
        client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in record["tags"].items()])
    elif kind == "status":
        client.set_terminated(run_id, record["status"])
    elif kind == "artifact":
        path = record["path"]
        folder = path.rpartition("/")[0] or None
        client.log_artifact(run_id, record["local"], folder)
    elif kind == "child":
        parent = client.get_run(run_id)
        child = client.create_run(parent.info.experiment_id, run_name=record["name"],
                                  tags={"mlflow.parentRunId": run_id})
        client.log_batch(child.info.run_id,
                         metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in record["metrics"].items()],
                         params=[mlflow.entities.Param(k, v) for k, v in record["params"].items()])
        client.set_terminated(child.info.run_id, "FINISHED")
    elif kind == "model_version":
        for key, value in record["tags"].items():
            client.set_model_version_tag(record["name"], record["version"], key, value)
        if record.get("alias"):
            client.set_registered_model_alias(record["name"], record["alias"], record["version"])
    else:  # pragma: no cover - written by this module only
        raise ValueError(f"unknown tracking record {kind!r}")


def log_metrics(settings: Settings, run_id: str, metrics: dict, step: int | None = None) -> bool:
    """Log metrics to a run; on failure keep them in the spool instead of raising (see :class:`Tracker`)."""
    return Tracker(settings, run_id).metrics(metrics, step)


def set_tags(settings: Settings, run_id: str, tags: dict) -> bool:
    """Set (scrubbed) tags on a run; on failure keep them in the spool instead of raising."""
    return Tracker(settings, run_id).tags(tags)


def read_spool(settings: Settings, run_id: str) -> list[dict]:
    """The records spooled for a run (empty when everything reached MLflow)."""
    path = _spool_path(settings, run_id)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def replay_spool(settings: Settings) -> int:
    """Send every spooled record to MLflow, in order; remove what went through. Returns runs replayed.

    A run whose records fail again keeps its spool file (from the first record that failed).
    """
    folder = _spool_dir(settings)
    done = 0
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        run_id = path.stem
        mlflow = tracking.configure(settings)
        records = read_spool(settings, run_id)
        for i, record in enumerate(records):
            try:
                _apply(mlflow, run_id, record)
            except Exception as exc:  # noqa: BLE001  (keep what is left for the next flush)
                log.warning("MLflow: replay of run %s stopped at record %d (%s)", run_id, i, exc)
                with open(path, "w", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in records[i:])
                break
            if record.get("kind") == "artifact":
                Path(record["local"]).unlink(missing_ok=True)
        else:
            path.unlink()
            done += 1
    return done
