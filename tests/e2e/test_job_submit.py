"""`ray job submit ... -- python jobs/extract.py` against a head started with `ray start --head`.

The job runs in Ray's temporary copy of the working dir: it only works because every
location it uses is absolute and travels in the runtime environment.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from raydund.lake import Lake

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.ray_cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A real Ray head on 127.0.0.1 (own temp dir and ports), stopped afterwards."""
    temp = tempfile.mkdtemp(prefix="rdh", dir="/tmp")
    gcs, dash = free_port(), free_port()
    # every port its own: the session's local Ray (other tests) holds the default agent ports
    own_ports = []
    for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                 "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port",
                 "--ray-client-server-port"):
        own_ports += [flag, str(free_port())]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
         "--temp-dir", temp, "--disable-usage-stats", *own_ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        ok = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                            capture_output=True).returncode == 0
        if ok:
            break
        if proc.poll() is not None:
            pytest.fail("ray start --head exited")
        time.sleep(2)
    else:
        pytest.fail("Ray head did not come up in 120 s")
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_submitted_extract_job_writes_the_lake_and_mlflow(ray_head, settings, tiny_model_dir):
    import mlflow

    address, env = ray_head
    lake = Lake(settings)
    words = [["the", "quick", "fox"], ["stocks", "fell", "sharply", "."], ["dog"]]
    lake.write_corpus("toy", {"dev": pa.table({"sentence_id": pa.array([0, 1, 2], pa.int64()), "words": words})})
    runtime_env = {"env_vars": {**settings.env_vars(), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}}
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--",
           "python", "jobs/extract.py", "--model", tiny_model_dir("bert"), "--corpus", "toy", "--split", "dev"]
    for _ in range(30):  # the head answers before its job agent is up: "No available agent", retry
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tempfile.gettempdir())
        if done.returncode == 0 or "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout

    counts = lake.scan("activations").group_by("layer").agg(pl.len()).sort("layer").collect()
    assert counts["len"].to_list() == [8, 8, 8]
    mlflow.set_tracking_uri(settings.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["raydund/bert/toy"])
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert runs.iloc[0]["tags.iceberg.snapshot_id"] == str(lake.activations().current_snapshot().snapshot_id)
    # nothing landed in the job's temporary working dir copy: every path was absolute
    assert not (REPO / "mlruns").exists() and not (REPO / "mlflow.db").exists()
