"""infra/: production shapes checked for validity, the local Ray cluster scripts run for real, `raydund submit`."""

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest
import ray
import yaml
from processes import base_env, free_port

from raydund.config import Settings
from raydund.errors import UserError

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
BIN = Path(sys.executable).parent
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", re.IGNORECASE)




def test_cluster_launcher_yaml_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "launcher" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert set(config["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}
    assert config["head_node_type"] == "head"
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    # a broken config is rejected by the same check
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "max_workers": "many"}, schema)


def _env_entries(doc):
    """Every container env entry of a KubeRay manifest."""
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            yield group, container, container.get("env", [])


@pytest.mark.parametrize("name,kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifests(name, kind):
    from raydund.cli import build_parser

    doc = yaml.safe_load((INFRA / "k8s" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu and all(c["resources"]["limits"]["nvidia.com/gpu"] == 1
                       for c in gpu[0]["template"]["spec"]["containers"])
    for _, _, env in _env_entries(doc):
        names = {e["name"] for e in env}
        assert {"RAYDUND_CATALOG_URI", "RAYDUND_WAREHOUSE", "MLFLOW_TRACKING_URI"} <= names
        for entry in env:
            if SECRETISH.search(entry["name"]):
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], entry
        values = {e["name"]: e["value"] for e in env if "value" in e}
        settings = Settings.from_env({k: v for k, v in values.items()})  # absolute, valid locations
        assert ":" not in settings.catalog_uri.split("://", 1)[1].split("@")[0]  # no password in the URI
    if kind == "RayJob":
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[:2] == ["python", "jobs/extract.py"] and (REPO / argv[1]).is_file()
        args = build_parser().parse_args(["extract", *argv[2:]])  # the entrypoint's options exist
        assert args.num_gpus == 1 and args.pool_size == 16
        assert doc["spec"]["shutdownAfterJobFinishes"] is True


def test_compose_services_are_loopback_bound_without_literal_secrets():
    doc = yaml.safe_load((INFRA / "compose" / "compose.yaml").read_text())
    services = doc["services"]
    assert {"minio", "postgres", "mlflow"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        for key, value in (service.get("environment") or {}).items():
            if SECRETISH.search(key) or key in ("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID"):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), (name, key, value)
    assert "MINIO_ROOT_PASSWORD" in str(services["minio"]["environment"])
    mlflow_cmd = services["mlflow"]["command"]
    assert "--backend-store-uri postgresql+psycopg2://raydund@postgres" in mlflow_cmd  # no password inline
    assert (INFRA / "compose" / "mlflow.Dockerfile").is_file() and (INFRA / "compose" / "postgres-init.sql").is_file()
    # the environment the header documents is one raydund accepts
    header = (INFRA / "compose" / "compose.yaml").read_text()
    assert "RAYDUND_CATALOG_URI=postgresql+psycopg2://raydund@127.0.0.1:5432/iceberg" in header


def test_no_literal_credentials_in_infra():
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), path
            assert not re.search(r"://[^/\s:@]+:[^/\s@$]+@", text), path  # user:password@ in a URI


@pytest.mark.parametrize("script,args", [("ray-head.sh", ["start"]), ("ray-cluster.sh", ["up"])])
def test_scripts_refuse_an_exposed_ray_without_token_auth(script, args):
    env = {**base_env(), "RAY_HOST": "0.0.0.0", "RAY_AUTH_MODE": "disabled", "RAYDUND_HOME": tempfile.mkdtemp()}
    out = subprocess.run(["bash", str(INFRA / "local" / script), *args], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "without token auth" in out.stderr


@pytest.mark.parametrize("variable", ["RAYDUND_RAY_CLUSTER_DIR", "RAYDUND_CLUSTER_DIR", None])
def test_ray_cluster_state_folder_keeps_the_old_names(tmp_path, variable):
    """ray-cluster.sh finds its state by the new variable, the old one, or an old running cluster's folder."""
    home, state = tmp_path / "home", tmp_path / "state"
    (state if variable else home / "cluster").mkdir(parents=True)
    ((state if variable else home / "cluster") / "head.pid").write_text("999999999")
    env = {**base_env(), "RAYDUND_HOME": str(home), **({variable: str(state)} if variable else {})}
    out = subprocess.run(["bash", str(INFRA / "local" / "ray-cluster.sh"), "status"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "head: gone", out.stderr


def test_submit_runtime_env_and_refusals(settings, tmp_path):
    from raydund.workflows import submit

    env = submit.runtime_env(settings, str(REPO), forward=("HF_HUB_OFFLINE",), env={"HF_HUB_OFFLINE": "1"})
    assert env["working_dir"] == str(REPO) and ".venv" in env["excludes"]
    assert env["env_vars"]["RAYDUND_WAREHOUSE"] == settings.warehouse
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == settings.tracking_uri
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(UserError, match="credentials never travel"):
        submit.runtime_env(settings, str(REPO), forward=("AWS_SECRET_ACCESS_KEY",), env={})
    leaky = Settings.from_env({"RAYDUND_HOME": str(tmp_path),
                               "RAYDUND_CATALOG_URI": "postgresql+psycopg2://u:hunter2@db/iceberg"})
    with pytest.raises(UserError, match=r"carries a password \(postgresql\+psycopg2://u:\*\*\*@db"):
        submit.runtime_env(leaky, str(REPO))
    with pytest.raises(UserError, match="without token authentication"):
        submit.check_auth("http://10.0.0.5:8265", env={"RAY_AUTH_MODE": "disabled"})
    submit.check_auth("http://10.0.0.5:8265", env={"RAY_AUTH_MODE": "token"})
    submit.check_auth("http://127.0.0.1:8265", env={})
    assert submit.entrypoint("extract", ["--corpus", "a b"], str(REPO)) == "python jobs/extract.py --corpus 'a b'"
    with pytest.raises(UserError, match="no job script"):
        submit.entrypoint("../../etc/passwd.py", [], str(REPO))
    assert submit.job_address(env={"RAY_ADDRESS": "127.0.0.1:6379"}) == submit.DEFAULT_ADDRESS
    assert submit.job_address(env={"RAY_ADDRESS": "http://head:8265/"}) == "http://head:8265"


def test_names_cannot_escape_the_warehouse(settings):
    from raydund import tracking
    from raydund.lake import Lake, check_name, corpus_table_name, table_identifier

    lake = Lake(settings)
    for bad in ("../../etc", "a/b", "..", "", "x" * 200, "a\\b"):
        with pytest.raises(UserError, match="invalid"):
            check_name("corpus", bad)
    with pytest.raises(UserError, match="invalid corpus name"):
        lake.write_corpus("../evil", {"train": pa.table({"sentence_id": [0], "words": [["a"]]})})
    with pytest.raises(UserError, match="invalid table name"):
        lake.table("raydund.../x")
    with pytest.raises(UserError, match="invalid table name"):
        table_identifier("other_ns.t")
    with pytest.raises(UserError, match="invalid model name"):
        tracking.experiment_name("../m", "c")
    assert corpus_table_name("ud_english_ewt") == "raydund.corpus_ud_english_ewt"
    assert not any(p.name.startswith("..") for p in Path(settings.home).rglob("*"))


def test_params_and_tags_are_scrubbed(settings):
    import mlflow

    from raydund import tracking

    with tracking.job_run(settings, "raydund/m/c", "scrub", {
        "catalog": "postgresql://user:hunter2@db/iceberg", "aws_secret_access_key": "abc", "job_key": "k1",
        "max_tokens": 64, "note": "key AKIAABCDEFGHIJKLMNOP here", "limit": None,
    }, tags={"RAY_AUTH_TOKEN": "t0k"}) as run:
        pass
    mlflow.set_tracking_uri(settings.tracking_uri)
    got = mlflow.get_run(run.info.run_id).data
    assert got.params == {"catalog": "postgresql://user:***@db/iceberg", "aws_secret_access_key": "***",
                          "job_key": "k1", "max_tokens": "64", "note": "key *** here", "limit": ""}
    assert got.tags["RAY_AUTH_TOKEN"] == "***"
    assert "hunter2" not in json.dumps(mlflow.get_run(run.info.run_id).to_dictionary())


def _node_ports() -> list[str]:
    """Every per-node port its own (as ray-cluster.sh does), so the node shares the machine with other Rays."""
    flags = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port")
    return [part for flag in flags for part in (flag, str(free_port()))]


def _wait_port(port: int, up: bool, timeout: float = 120) -> bool:
    """Whether 127.0.0.1:port accepts connections (``up``) or refuses them, within ``timeout`` seconds."""
    import socket
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as sock:
            sock.settimeout(1)
            if (sock.connect_ex(("127.0.0.1", port)) == 0) == up:
                return True
        time.sleep(1)
    return False


@pytest.mark.ray_cluster
def test_ray_head_stop_ends_only_what_it_started(tmp_path):
    """ray-head.sh stop never runs `ray stop`: an unrelated Ray of the same user keeps running."""
    import psutil

    other_port, gcs = free_port(), free_port()
    other = subprocess.Popen(
        [str(BIN / "ray"), "start", "--block", "--head", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
         "--port", str(other_port), "--include-dashboard=false", "--num-cpus", "1",
         "--temp-dir", tempfile.mkdtemp(prefix="rdo", dir="/tmp"), "--ray-client-server-port", str(free_port()),
         *_node_ports()], env={**base_env(), "RAY_AUTH_MODE": "disabled"}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = Path(tempfile.mkdtemp(prefix="rdh", dir="/tmp"))
    env = {**base_env(), "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "RAYDUND_HOME": str(tmp_path / "home"), "RAYDUND_HEAD_DIR": str(state), "RAY_GCS_PORT": str(gcs),
           "RAY_DASHBOARD_PORT": str(free_port()), "RAY_AUTH_MODE": "disabled"}
    script = ["bash", str(INFRA / "local" / "ray-head.sh")]
    try:
        assert _wait_port(other_port, up=True)
        start = subprocess.run([*script, "start", "--num-cpus", "1", "--include-dashboard=false",
                                "--ray-client-server-port", str(free_port()), *_node_ports()],
                               env=env, capture_output=True, text=True, timeout=300)
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        head = int((state / "head.pid").read_text())
        head_tree = [psutil.Process(head), *psutil.Process(head).children(recursive=True)]
        assert len(head_tree) > 2 and _wait_port(gcs, up=True, timeout=5)
        stop = subprocess.run([*script, "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert "ray stop" not in (INFRA / "local" / "ray-head.sh").read_text().split("case")[-1]
        gone, alive = psutil.wait_procs(head_tree, timeout=20)
        assert not alive and not (state / "head.pid").exists() and _wait_port(gcs, up=False, timeout=10)
        other_core = [p for p in psutil.Process(other.pid).children(recursive=True)
                      if p.name() in ("gcs_server", "raylet")]
        assert other.poll() is None and len(other_core) == 2  # the other Ray lives on: its GCS and raylet
        assert _wait_port(other_port, up=True, timeout=5)
    finally:
        subprocess.run([*script, "stop"], env=env, capture_output=True, timeout=120)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(other.pid, signal.SIGTERM)
        try:
            other.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(other.pid, signal.SIGKILL)


@pytest.mark.ray_cluster
def test_local_ray_cluster_scripts_and_submit(settings, tiny_model_dir, tmp_path):
    """ray-cluster.sh up (head + 1 worker node + MLflow server) -> raydund submit -> lake + MLflow -> down."""
    import mlflow
    import polars as pl

    from raydund.lake import Lake

    mlflow_port, dash = free_port(), free_port()
    env = {**base_env(), "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "RAYDUND_HOME": str(settings.home), "RAYDUND_RAY_CLUSTER_DIR": tempfile.mkdtemp(prefix="rdc", dir="/tmp"),
           "RAY_GCS_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(dash), "MLFLOW_PORT": str(mlflow_port),
           "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    script = str(INFRA / "local" / "ray-cluster.sh")
    try:
        up = subprocess.run(["bash", script, "up", "--workers", "1", "--cpus", "1"], env=env, capture_output=True,
                            text=True, timeout=300)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        assert "2 Ray nodes alive" in up.stdout
        status = subprocess.run(["bash", script, "status"], env=env, capture_output=True, text=True)
        assert sorted(status.stdout.split("\n"))[1:] == ["head: running", "worker-1: running"]

        lake = Lake(settings)
        words = [["the", "quick", "fox"], ["stocks", "fell", "sharply", "."], ["dog"]]
        lake.write_corpus("toy", {"dev": pa.table({"sentence_id": pa.array([0, 1, 2], pa.int64()), "words": words})})
        tracking_uri = f"http://127.0.0.1:{mlflow_port}"
        job_env = {**env, "MLFLOW_TRACKING_URI": tracking_uri}
        done = subprocess.run(
            [str(BIN / "raydund"), "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO),
             "--env", "HF_HUB_OFFLINE", "extract", "--model", tiny_model_dir("bert"), "--corpus", "toy",
             "--split", "dev"], env=job_env, capture_output=True, text=True, timeout=400, cwd=tempfile.gettempdir())
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "submitted job" in done.stdout and "SUCCEEDED" in done.stdout
        assert "8 vectors x 3 layers" in done.stdout  # the job's own output, streamed back
        counts = lake.scan("activations").group_by("layer").agg(pl.len()).sort("layer").collect()
        assert counts["len"].to_list() == [8, 8, 8]
        mlflow.set_tracking_uri(tracking_uri)  # the run went through the server, not a local file
        runs = mlflow.search_runs(experiment_names=["raydund/bert/toy"])
        assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
        assert runs.iloc[0]["params.corpus"] == "toy"
    finally:
        down = subprocess.run(["bash", script, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and not list(Path(env["RAYDUND_RAY_CLUSTER_DIR"]).glob("*.pid"))
