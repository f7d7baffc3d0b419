"""MLflow: one experiment per (model, corpus), one run per job, absolute artifact locations.

Experiments are created here, on the driver, never by workers (concurrent creation
races in MLflow), with an absolute artifact location so that a Ray job's temporary
working directory never receives artifacts.

Failure modes:

* an MLflow server that cannot be reached when a job starts is a :class:`UserError`
  raised before any compute (:func:`check_reachable`, called by :func:`job_run`);
* a logging call that fails once the work is done (server gone mid-job) never loses the
  results: the lake commit has happened, and the metrics/tags that could not be sent
  are spooled to ``$RAYDUND_HOME/mlflow-spool/<run_id>.jsonl`` (:class:`Tracker`, which
  every stage uses after its lake commit; ``raydund tracking flush`` /
  :func:`replay_spool` sends them later);
* parameters and tags are scrubbed of credentials (:func:`scrub`) before they are sent.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import re
import sys
import threading
import urllib.error
import urllib.request

from raydund.config import Settings, redact_uri
from raydund.errors import UserError

log = logging.getLogger(__name__)

#: Parameter/tag names whose values are credentials (``*_password``, ``aws_secret_access_key``, ...).
SECRET_NAME = re.compile(
    r"(?:^|[_.\-])(password|passwd|pwd|secret|token|auth|credentials?|api_?key|access_?key|secret_?key|"
    r"private_?key|session_?token)(?:$|[_.\-])", re.IGNORECASE)
#: AWS access key ids and long base64-ish secrets that sneak into free-text values.
SECRET_VALUE = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
REDACTED = "***"

_reachable: set[str] = set()


def redact(value) -> str:
    """``value`` as text with passwords in URIs and AWS key ids replaced by ``***``."""
    return SECRET_VALUE.sub(REDACTED, redact_uri(str(value)))


def scrub(params: dict) -> dict:
    """Parameters/tags safe to record: credential-like names blanked, URIs without passwords.

    ``None`` becomes ``""`` (MLflow rejects ``None``).
    """
    out = {}
    for key, value in params.items():
        if value is None:
            out[key] = ""
        elif SECRET_NAME.search(str(key)):
            out[key] = REDACTED
        else:
            out[key] = redact(value) if isinstance(value, str) else value
    return out


def check_reachable(settings: Settings, timeout: float = 5.0) -> None:
    """Refuse to start a job whose MLflow server does not answer (one short request).

    Only ``http(s)://`` tracking URIs are probed (``GET /health``); file and SQLite
    stores are local. A success is remembered for the process.

    Raises
    ------
    UserError
        With the (password-free) URI and the reason, before any compute starts.
    """
    uri = settings.tracking_uri
    if not uri.startswith(("http://", "https://")) or uri in _reachable:
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            ok = resp.status == 200
            reason = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        ok, reason = False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        ok, reason = False, str(getattr(exc, "reason", exc))
    if not ok:
        raise UserError(f"MLflow tracking server {redact(uri)} is not reachable ({reason}); start it "
                        "(infra/local/mlflow-server.sh start) or point MLFLOW_TRACKING_URI elsewhere")
    _reachable.add(uri)


def configure(settings: Settings):
    """Point MLflow at the settings' tracking store and return the ``mlflow`` module.

    HTTP retries are bounded (3 retries, 30 s timeout unless the ``MLFLOW_HTTP_REQUEST_*``
    variables say otherwise), so a server that dies mid-job costs seconds, not minutes.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow

    settings.prepare()
    mlflow.set_tracking_uri(settings.tracking_uri)
    return mlflow


def experiment_name(model: str, corpus: str) -> str:
    """The experiment that groups every job on one (model, corpus) (names checked: no path escapes)."""
    from raydund.lake import check_name

    return f"raydund/{check_name('model', model)}/{check_name('corpus', corpus)}"


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
    """Start an MLflow run for one job; yields the active run. Failed jobs end as FAILED.

    The server is probed first (:func:`check_reachable`): an unreachable one stops the
    job before any compute. Parameters and tags are scrubbed of credentials. If ending
    the run fails (the server went away), the job's outcome stands and a warning is
    logged; the run stays RUNNING on the server.
    """
    check_reachable(settings)
    mlflow = configure(settings)
    exp_id = ensure_experiment(settings, experiment)
    run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=scrub(tags or {}))
    status = "FAILED"
    try:
        mlflow.log_params(scrub(params))
        yield run
        status = "FINISHED"
    finally:
        _end_run(settings, run.info.run_id, status, lambda: mlflow.end_run(status))


def _end_run(settings: Settings, run_id: str, status: str, end) -> None:
    """``end()`` marks the run ``status``; if that fails (the server went away) warn and spool it."""
    try:
        end()
    except Exception as exc:  # noqa: BLE001  (tracking must not turn a finished job into a failure)
        log.warning("MLflow: could not mark run %s %s (%s); the job's results are unaffected", run_id, status, exc)
        _spool(settings, run_id, {"kind": "status", "status": status})


class _RunBeside:
    """An MLflow run being created on a thread; ``.info`` waits for it (what ``job_run`` yields with ``beside``)."""

    def __init__(self, start):
        self._box: dict = {}

        def target():
            try:
                self._box["run"] = start()
            except BaseException as exc:  # noqa: BLE001  (re-raised on the job's thread by .info)
                self._box["error"] = exc

        self._thread = threading.Thread(target=target, name="mlflow-run", daemon=True)
        self._thread.start()

    def wait(self):
        """The created run; raises what creating it raised."""
        self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["run"]

    @property
    def info(self):
        return self.wait().info


@contextlib.contextmanager
def job_run_beside(settings: Settings, experiment: str, run_name: str, params: dict, tags: dict | None = None):
    """:func:`job_run` whose run is created on a thread while the job starts working.

    For jobs whose fixed costs matter (a small extraction: importing MLflow and opening
    its store take about as long as encoding a few thousand words): the yielded handle's
    ``.info`` waits for the run, so the job asks for its id only where it needs it (the
    commit). The run is made with the client API (no active run on any thread): use
    :class:`Tracker` or the module functions with its id, never ``mlflow.log_*``. A failure
    to create it is raised by ``.info`` (or at the end), before anything is committed.
    """
    check_reachable(settings)

    def start():
        mlflow = configure(settings)
        from mlflow.entities import Param

        client = mlflow.MlflowClient()
        context = {"mlflow.user": getpass.getuser(), "mlflow.source.type": "LOCAL",
                   "mlflow.source.name": os.path.basename(sys.argv[0] or "python")}
        run = client.create_run(ensure_experiment(settings, experiment), run_name=run_name,
                                tags={**context, **scrub(tags or {})})
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in scrub(params).items()])
        return run

    handle = _RunBeside(start)
    status = "FAILED"
    try:
        yield handle
        status = "FINISHED"
    finally:
        try:
            run = handle.wait()
        except Exception:
            if status == "FINISHED":
                raise
            run = None  # the job failed anyway: its own error is the one to see
        if run is not None:
            _end_run(settings, run.info.run_id, status,
                     lambda: configure(settings).MlflowClient().set_terminated(run.info.run_id, status))


#: Registry tag of a version raydund registered: ``pending`` (its job has not committed),
#: ``committed`` or ``failed``. Versions without it (registered by hand) count as committed.
STATUS_TAG = "raydund.status"


def latest_valid_version(client, name: str):
    """The newest version of a registered model whose job committed (never a ``pending`` or ``failed`` one).

    Raises
    ------
    UserError
        When the model has no such version.
    """
    versions = [v for v in client.search_model_versions(f"name='{name}'")
                if v.tags.get(STATUS_TAG, "committed") == "committed"]
    if not versions:
        raise UserError(f"registered model {name!r} has no committed version")
    return max(versions, key=lambda v: int(v.version))


def ui_command(settings: Settings) -> str:
    """The command that opens the MLflow UI on this installation's store."""
    return f"mlflow ui --backend-store-uri {settings.tracking_uri} --host 127.0.0.1 --port 5000"


# what is logged after a commit (it uses configure and scrub above)
from raydund.tracking.spool import Tracker, _spool, log_metrics, read_spool, replay_spool, set_tags  # noqa: E402

__all__ = ["REDACTED", "STATUS_TAG", "Tracker", "check_reachable", "configure", "ensure_experiment",
           "experiment_name", "job_run", "job_run_beside", "latest_valid_version", "log_metrics", "read_spool",
           "redact", "replay_spool", "scrub", "set_tags", "ui_command"]
