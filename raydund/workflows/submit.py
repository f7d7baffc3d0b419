"""``raydund submit``: run a ``jobs/*.py`` entrypoint on a Ray cluster and stream its logs.

The same as ``ray job submit --working-dir . -- python jobs/<name>.py ...`` with the
runtime environment raydund needs: every location of :class:`~raydund.config.Settings`
(catalog, warehouse, tracking URI, artifact root, home, data mirror) travels as an
environment variable, so the job sees the same lakehouse and MLflow store as the user.

Safety rules, checked before anything is sent:

* no credentials in the runtime env (it is shown by the dashboard and stored by the
  cluster): a URI with an inline password and ``--env`` names that look like secrets are
  refused; cluster nodes get S3/Postgres credentials from their own environment
  (IAM role, Kubernetes secret, ``PGPASSWORD``);
* a job server that is not on the loopback interface is only used with Ray's token
  authentication (``RAY_AUTH_MODE=token``; the token comes from ``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, and Ray's client sends it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from raydund.config import Settings, redact_uri, uri_has_password
from raydund.errors import UserError

log = logging.getLogger(__name__)

#: Default job server (dashboard) address of infra/local/ray-head.sh.
DEFAULT_ADDRESS = "http://127.0.0.1:8265"

#: Never uploaded with the working dir (Ray also honours .gitignore).
EXCLUDES = [".venv", ".git", "**/__pycache__", "*.db", "mlruns", "mlartifacts", ".pytest_cache"]

#: Seconds to keep retrying while a just-started head has no job agent yet.
AGENT_WAIT_S = 90


def job_address(address: str | None = None, env: dict | None = None) -> str:
    """The job server's HTTP address: ``address``, else ``RAY_API_SERVER_ADDRESS``, else an
    ``http(s)://`` ``RAY_ADDRESS``, else :data:`DEFAULT_ADDRESS`."""
    env = os.environ if env is None else env
    candidates = [address, env.get("RAY_API_SERVER_ADDRESS"), env.get("RAY_ADDRESS")]
    for value in candidates:
        if value and value.startswith(("http://", "https://")):
            return value.rstrip("/")
    if address:
        raise UserError(f"--address must be the job server's http(s):// URL (dashboard port), got {address!r}")
    return DEFAULT_ADDRESS


def is_loopback(address: str) -> bool:
    """Whether an http(s) address points at this machine's loopback interface."""
    host = urlparse(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_auth(address: str, env: dict | None = None) -> None:
    """Refuse a non-loopback job server unless Ray's token authentication is on."""
    env = os.environ if env is None else env
    if not is_loopback(address) and env.get("RAY_AUTH_MODE", "").lower() != "token":
        raise UserError(f"refusing to submit to {address} without token authentication: set RAY_AUTH_MODE=token "
                        "and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH), as the cluster does")


def runtime_env(settings: Settings, working_dir: str, forward: tuple[str, ...] = (),
                env: dict | None = None) -> dict:
    """The runtime environment of a raydund job: working dir, excludes, locations.

    Parameters
    ----------
    settings : Settings
        Locations the job must see (sent as ``RAYDUND_*`` / ``MLFLOW_*`` variables).
    working_dir : str
        Folder uploaded as the job's working directory (absolute).
    forward : tuple of str
        Names of further variables copied from ``env`` (e.g. ``HF_HUB_OFFLINE``).
    env : dict, optional
        Where forwarded values come from (default ``os.environ``).

    Raises
    ------
    UserError
        A location with an inline password, or a forwarded name that looks like a secret.
    """
    from raydund.tracking import SECRET_NAME

    env = os.environ if env is None else env
    variables = settings.env_vars()
    for name, value in variables.items():
        if uri_has_password(value):
            raise UserError(f"{name} carries a password ({redact_uri(value)}): credentials never travel in a "
                            "job's runtime env; give the cluster's nodes PGPASSWORD / AWS credentials instead")
    for name in forward:
        if SECRET_NAME.search(name) or name.upper().startswith(("AWS_SECRET", "AWS_SESSION")):
            raise UserError(f"--env {name}: credentials never travel in a job's runtime env (the dashboard shows "
                            "it); give the cluster's nodes their own (IAM role, Kubernetes secret)")
        if name in env:
            variables[name] = env[name]
    return {"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": variables}


def entrypoint(script: str, args: list[str], working_dir: str) -> str:
    """``python jobs/<name>.py args...``; ``script`` may be ``extract`` or ``jobs/extract.py``."""
    rel = script if script.endswith(".py") else f"jobs/{script}.py"
    path = Path(working_dir, rel).resolve()
    if not path.is_relative_to(Path(working_dir).resolve()) or not path.is_file():
        known = sorted(p.stem for p in Path(working_dir, "jobs").glob("*.py"))
        raise UserError(f"no job script {rel!r} in {working_dir} (jobs: {', '.join(known) or 'none'})")
    return " ".join(["python", shlex.quote(rel), *(shlex.quote(a) for a in args)])


def submit(settings: Settings, script: str, args: list[str], address: str | None = None,
           working_dir: str | None = None, forward: tuple[str, ...] = (), wait: bool = True,
           write=None) -> tuple[str, str]:
    """Submit a job script, stream its logs until it ends, and return ``(job_id, status)``.

    Parameters
    ----------
    settings : Settings
        The locations the job gets in its runtime env.
    script : str
        ``extract`` / ``jobs/extract.py`` (any file under ``jobs/``).
    args : list of str
        Its arguments.
    address : str, optional
        Job server URL (see :func:`job_address`).
    working_dir : str, optional
        Uploaded as the job's working dir (default: the current directory), made absolute.
    forward : tuple of str
        Extra environment variables to pass on (never credentials).
    wait : bool
        Stream logs and wait for the end; ``False`` returns right after submission.
    write : callable, optional
        Where log text goes (default ``sys.stdout.write``).
    """
    from ray.job_submission import JobSubmissionClient

    write = write or sys.stdout.write
    address = job_address(address)
    check_auth(address)
    working_dir = str(Path(working_dir or os.getcwd()).resolve())
    command = entrypoint(script, args, working_dir)
    env = runtime_env(settings, working_dir, forward)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot reach the Ray job server at {address}: {str(exc).splitlines()[0]}") from None
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=command, runtime_env=env,
                                       metadata={"raydund.script": Path(command.split()[1]).stem})
            break
        except RuntimeError as exc:  # a head that just started has no job agent for a few seconds
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise UserError(f"job server {address} refused the job: {str(exc).splitlines()[0]}") from None
            time.sleep(2)
    log.info("submitted %s as %s to %s", command, job_id, address)
    write(f"raydund: submitted job {job_id} to {address}: {command}\n")
    if not wait:
        return job_id, str(client.get_job_status(job_id))

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        write(f"\nraydund: stopped following; job {job_id} keeps running (ray job stop {job_id})\n")
        raise
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can end a moment before the status does
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    return job_id, str(status.value if hasattr(status, "value") else status)
