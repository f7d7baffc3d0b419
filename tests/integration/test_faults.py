"""Faults and concurrency against real Ray, real Iceberg tables and real MLflow stores.

* an extraction actor killed mid-job (SIGKILL from inside, via the fault-injection file):
  the job finishes with exactly one row per (sentence, word, layer), equal to a clean run;
* the whole job killed (SIGKILL of the driver) and re-run: it resumes and ends equal to a clean run;
* concurrent writers to one table: every commit lands (optimistic concurrency, retried);
* MLflow unreachable at start: one line, exit 2, nothing computed; a logging failure
  after the work does not lose the results;
* bad configuration: one clear line, exit code 2.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from processes import base_env, free_port

from raydund.config import Settings
from raydund.errors import UserError
from raydund.lake import Lake, commit_with_retry

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VOCAB = ["the", "quick", "brown", "fox", "jumped", "over", "lazy", "dog", "stocks", "fell", "sharply", ","]




def corpus(n=40, seed=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    words = [[VOCAB[j] for j in rng.integers(0, len(VOCAB), int(rng.integers(1, 9)))] for _ in range(n)]
    return pa.table({"sentence_id": pa.array(range(n), pa.int64()), "words": words,
                     "pos": [["X"] * len(w) for w in words]})


def home_with_corpus(root: Path) -> Settings:
    settings = Settings.from_env({"RAYDUND_HOME": str(root)}).prepare()
    Lake(settings).write_corpus("toy", {"train": corpus()})
    return settings


def content(settings: Settings) -> pl.DataFrame:
    return (Lake(settings).scan("activations")
            .select("layer", "sentence_id", "word_id", "word", "vector").collect()
            .sort("layer", "sentence_id", "word_id"))


def assert_same_content(got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert got.height == want.height
    assert got.select("layer", "sentence_id", "word_id", "word").equals(
        want.select("layer", "sentence_id", "word_id", "word"))
    np.testing.assert_allclose(np.stack(got["vector"].to_numpy()), np.stack(want["vector"].to_numpy()), atol=1e-6)


def n_words() -> int:
    return sum(len(w) for w in corpus().column("words").to_pylist())


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray head (infra/local/ray-cluster.sh, own ports and temp dir) whose workers see a fault file."""
    state = tempfile.mkdtemp(prefix="rdf", dir="/tmp")
    fault = Path(state) / "fault.json"
    gcs = free_port()
    env = {**base_env(), "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHON": sys.executable, "NO_MLFLOW": "1",
           "RAYDUND_RAY_CLUSTER_DIR": state, "RAY_GCS_PORT": str(gcs), "RAY_DASHBOARD_PORT": str(free_port()),
           "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RAYDUND_FAULT_FILE": str(fault)}
    env.pop("RAY_ADDRESS", None)
    script = str(REPO / "infra" / "local" / "ray-cluster.sh")
    up = subprocess.run(["bash", script, "up", "--workers", "0", "--cpus", "2"], env=env, capture_output=True,
                        text=True, timeout=300)
    if up.returncode != 0:
        subprocess.run(["bash", script, "down"], env=env, capture_output=True, timeout=120)
        pytest.fail(up.stdout[-2000:] + up.stderr[-2000:])
    driver_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}
    driver_env.pop("RAYDUND_FAULT_FILE")
    yield driver_env, fault
    subprocess.run(["bash", script, "down"], env=env, capture_output=True, timeout=120)


def extract_cmd(model_dir: str) -> list[str]:
    return [str(BIN / "raydund"), "extract", "--model", model_dir, "--corpus", "toy", "--split", "train",
            "--shard-words", "30", "--batch-size", "4", "--no-progress"]


def run_cli(cmd, env, home, timeout=300):
    return subprocess.run(cmd, env={**env, "RAYDUND_HOME": str(home)}, capture_output=True, text=True,
                          timeout=timeout, cwd=tempfile.gettempdir())


@pytest.fixture(scope="module")
def reference(ray_cluster, tiny_model_dir, tmp_path_factory):
    """The table an uninterrupted run leaves."""
    env, _ = ray_cluster
    settings = home_with_corpus(tmp_path_factory.mktemp("ref") / "home")
    out = run_cli(extract_cmd(tiny_model_dir("bert")), env, settings.home)
    assert out.returncode == 0, out.stderr[-3000:]
    table = content(settings)
    assert table.height == 3 * n_words()
    return table


@pytest.mark.ray_cluster
def test_killed_actor_job_finishes_without_loss_or_duplicates(ray_cluster, reference, tiny_model_dir, tmp_path):
    import mlflow

    env, fault = ray_cluster
    settings = home_with_corpus(tmp_path / "home")
    fault.write_text(json.dumps({"kill_in_shard": 2}))
    try:
        out = run_cli(extract_cmd(tiny_model_dir("bert")), env, settings.home)
    finally:
        fired = Path(f"{fault}.fired")
        was_fired = fired.exists()
        fault.unlink(missing_ok=True)
        fired.unlink(missing_ok=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert was_fired, "the actor writing shard 2 killed itself"
    got = content(settings)
    assert got.select("layer", "sentence_id", "word_id").n_unique() == got.height == 3 * n_words()
    assert_same_content(got, reference)
    mlflow.set_tracking_uri(settings.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["raydund/bert/toy"])
    assert list(runs["status"]) == ["FINISHED"]


@pytest.mark.ray_cluster
def test_killed_job_resumes_to_the_same_table(ray_cluster, reference, tiny_model_dir, tmp_path):
    import mlflow

    env, fault = ray_cluster
    settings = home_with_corpus(tmp_path / "home")
    warehouse = Path(settings.warehouse.removeprefix("file://"))
    fault.write_text(json.dumps({"sleep_per_shard": 1.0}))
    try:
        proc = subprocess.Popen(extract_cmd(tiny_model_dir("bert")), env={**env, "RAYDUND_HOME": str(settings.home)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                cwd=tempfile.gettempdir())
        deadline = time.time() + 180
        while len(list(warehouse.rglob("_done/*.json"))) < 2:
            assert proc.poll() is None and time.time() < deadline, "the job ended before it could be killed"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job, mid-way
        proc.wait(timeout=60)
    finally:
        fault.unlink(missing_ok=True)
    finished_before = len(list(warehouse.rglob("_done/*.json")))
    assert Lake(settings).activations().current_snapshot() is None, "a killed job commits nothing"
    time.sleep(3)  # Ray reaps the dead driver's actors
    out = run_cli(extract_cmd(tiny_model_dir("bert")), env, settings.home)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_content(content(settings), reference)
    mlflow.set_tracking_uri(settings.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["raydund/bert/toy"], filter_string="attributes.status = 'FINISHED'")
    assert len(runs) == 1 and runs.iloc[0]["metrics.resumed_shards"] >= min(finished_before, 2)


def test_commit_retry_redoes_the_whole_commit_and_gives_up_on_real_errors():
    from pyiceberg.exceptions import CommitFailedException

    calls, retries = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise CommitFailedException("branch main has changed")
        return 42

    assert commit_with_retry(flaky, "test", on_retry=retries.append) == 42
    assert len(calls) == 3 and len(retries) == 2
    with pytest.raises(ValueError):
        commit_with_retry(lambda: (_ for _ in ()).throw(ValueError("bad data")), "test")
    with pytest.raises(CommitFailedException):
        commit_with_retry(lambda: (_ for _ in ()).throw(CommitFailedException("x")), "test", attempts=2)


WRITER = textwrap.dedent("""
    import sys, time
    import pyarrow as pa
    from raydund.config import Settings
    from raydund.lake import Lake
    writer, rounds, start_at = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    lake = Lake(Settings.from_env())
    lake.catalog
    time.sleep(max(0.0, start_at - time.time()))  # both processes start committing together
    for r in range(rounds):
        rows = pa.table({"writer": pa.array([writer] * 10, pa.int32()), "round": pa.array([r] * 10, pa.int32()),
                         "value": pa.array(range(10), pa.int64())})
        lake.replace("concurrent", rows, ("writer",), {"writer": writer, "round": r})
    print(lake.commit_retries)
""")


@pytest.mark.slow  # ~13 s: two processes, each with its own interpreter start
def test_two_processes_writing_one_table_both_commit(settings):
    env = {**base_env(), "RAYDUND_HOME": str(settings.home)}
    Lake(settings).replace("concurrent", pa.table({"writer": pa.array([-1], pa.int32()),
                                                   "round": pa.array([-1], pa.int32()),
                                                   "value": pa.array([0], pa.int64())}), ("writer",), {"writer": -1})
    start_at = str(time.time() + 12)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(w), "6", start_at], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for w in (0, 1)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    got = Lake(settings).scan("concurrent").filter(pl.col("writer") >= 0).collect()
    pairs = got.group_by("writer", "round").agg(pl.len()).sort("writer", "round")
    assert pairs.height == 12 and pairs["len"].to_list() == [10] * 12  # nothing lost, nothing doubled
    tbl = Lake(settings).table("concurrent")
    assert sum(1 for _ in tbl.snapshots()) >= 13


def test_two_threads_committing_activation_files_conflict_and_both_land(settings, caplog):
    from benchmarks.synthetic import write_activations

    lake = Lake(settings)
    # files of two splits, written the way extraction workers write them (then committed here)
    for split in ("a", "b"):
        rng = np.random.default_rng(0)
        write_activations(lake, [rng.standard_normal((64, 4)).astype(np.float32) for _ in range(2)],
                          model="m", corpus="c", split=split)
    files = {s: [uri for _, uri in lake.activation_files("m", "c", s)] for s in ("a", "b")}
    barrier, errors = threading.Barrier(2), []

    def commit(split):
        try:
            for _ in range(4):
                barrier.wait()
                lake.commit_activation_files(files[split], "m", "c", split, "word")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(s,)) for s in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors
    counts = lake.scan("activations").group_by("split").agg(pl.len()).sort("split").collect()
    assert counts["len"].to_list() == [2 * 64, 2 * 64]  # each split once, re-commits replaced
    # the barrier makes the writers race: pyiceberg re-applies a lost commit on the new base itself
    # (commit.retry.num-retries), and Lake redoes the whole commit when those run out
    pyiceberg_retries = sum("concurrent update" in r.getMessage() for r in caplog.records)
    assert pyiceberg_retries + lake.commit_retries >= 1


def test_unreachable_mlflow_is_one_line_before_any_compute(settings, tiny_model_dir):
    Lake(settings).write_corpus("toy", {"train": corpus()})
    env = {**base_env(), "RAYDUND_HOME": str(settings.home), "HF_HUB_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    start = time.time()
    out = subprocess.run([str(BIN / "raydund"), "extract", "--model", tiny_model_dir("bert"), "--corpus", "toy",
                          "--split", "train"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "MLflow tracking server http://127.0.0.1:" in out.stderr and "not reachable" in out.stderr
    assert time.time() - start < 60
    assert "raydund.activations" not in Lake(settings).table_names()  # no worker, no file, no table


def test_logging_failure_after_the_work_keeps_the_results(settings, tiny_model_dir, ray_local, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.client import MlflowClient

    from raydund import tracking
    from raydund.extract.job import ExtractConfig, run_extraction

    lake = Lake(settings)
    lake.write_corpus("toy", {"train": corpus()})

    real = MlflowClient.log_batch

    def broken(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        if params:  # the parameters at the start went through; the server dies during the work
            return real(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)
        raise MlflowException("tracking server went away")

    monkeypatch.setattr(MlflowClient, "log_batch", broken)
    result = run_extraction(ExtractConfig(model=tiny_model_dir("bert"), corpus="toy", split="train"), settings,
                            progress=False)
    monkeypatch.undo()
    assert lake.scan("activations").select(pl.len()).collect().item() == 3 * n_words()
    assert lake.activations().current_snapshot().snapshot_id == result.snapshot_id
    spooled = tracking.read_spool(settings, result.run_id)
    metrics = next(r["metrics"] for r in spooled if "metrics" in r)
    assert metrics["words"] == n_words()
    assert next(r["tags"] for r in spooled if "tags" in r)["iceberg.snapshot_id"] == str(result.snapshot_id)
    mlflow.set_tracking_uri(settings.tracking_uri)
    assert mlflow.get_run(result.run_id).info.status == "FINISHED"
    assert tracking.replay_spool(settings) == 1  # once the server is back, nothing is lost
    assert mlflow.get_run(result.run_id).data.metrics["words"] == n_words()

    # a Ray worker logging to a server that is gone: its computed value still comes back
    dead = Settings.from_env({"RAYDUND_HOME": str(settings.home),
                              "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})

    @ray_local.remote(runtime_env={"env_vars": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}})
    def work(s):
        value = float(np.arange(10).sum())
        logged = tracking.log_metrics(s, "0" * 32, {"value": value})
        return value, logged

    value, logged = ray_local.get(work.remote(dead))
    assert value == 45.0 and logged is False
    assert tracking.read_spool(dead, "0" * 32)[0]["metrics"] == {"value": 45.0}

    # a layer that does not exist: one clear error naming the ones that do
    with pytest.raises(UserError, match=r"layer 7 does not exist .* \(layers 0\.\.2\)"):
        lake.layer_matrix("bert", "toy", "train", 7)


@pytest.mark.parametrize("args,message", [
    (["extract", "--model", "no_such_model", "--corpus", "toy", "--split", "train"], "unknown model 'no_such_model'"),
    (["extract", "--model", "no-such-org/no-such-model", "--corpus", "toy", "--split", "train"],
     "cannot load model 'no-such-org/no-such-model'"),
    (["extract", "--corpus", "nope", "--split", "train"], "no table 'raydund.corpus_nope'"),
    (["extract", "--corpus", "../../etc", "--split", "train"], "invalid corpus name '../../etc'"),
    (["cluster", "--corpus", "toy", "--split", "train", "--thresholds", "0.5", "1.5"],
     "--thresholds must lie in [0, 1], got 1.5"),
    (["probe", "--corpus", "toy", "--label", "pos", "--keep-share", "2"], "--keep-share must lie in [0, 1]"),
])
def test_bad_configuration_is_one_line_exit_2(settings, args, message):
    Lake(settings).write_corpus("toy", {"train": corpus()})
    env = {**base_env(), "RAYDUND_HOME": str(settings.home), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([str(BIN / "raydund"), *args], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
