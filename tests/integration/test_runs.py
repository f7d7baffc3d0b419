"""A stage's tables are seen whole or not at all; tracking failures after the commit lose nothing.

Real Iceberg tables (SQLite catalog) and a real MLflow store; the crash is the
production crash point (``RAYDUND_CRASH_AT``), the MLflow failure a store that refuses.
"""

import numpy as np
import pyarrow as pa
import pytest

from raydund import faults, tracking
from raydund.lake import Lake, runs


def rows(value: float, tasks=("pos",)) -> pa.Table:
    n = 3 * len(tasks)
    return pa.table({"model": ["m"] * n, "corpus": ["c"] * n, "task": [t for t in tasks for _ in range(3)],
                     "probe": [f"layer {i}" for _ in tasks for i in range(3)],
                     "value": np.full(n, value, dtype=np.float64)})


def write_run(lake: Lake, value: float, task="pos", crash_at: str | None = None, monkeypatch=None) -> runs.StageRun:
    """One two-table stage run (results + rankings) on ``task``; optionally crashing at a point."""
    if crash_at:
        monkeypatch.setenv(faults.CRASH_ENV, crash_at)
    stage = runs.StageRun(lake, "probes", "m", "c", {"task": task})
    try:
        stage.replace("results", rows(value, (task,)), ("model", "corpus"))
        stage.replace("rankings", rows(-value, (task,)), ("model", "corpus"))
        stage.complete("mlflow-run")
    finally:
        if crash_at:
            monkeypatch.delenv(faults.CRASH_ENV)
    return stage


def seen(lake: Lake, table: str, task="pos") -> set:
    run = runs.latest(lake, "probes", "m", "c", table, task=task)
    return set(runs.read(lake, run, table).to_arrow().column("value").to_pylist()) if run else set()


@pytest.mark.parametrize("point", ["probes.before_rankings", "probes.before_complete"])
def test_a_crash_between_two_tables_leaves_readers_on_the_last_complete_run(settings, monkeypatch, point):
    lake = Lake(settings)
    first = write_run(lake, 1.0)
    with pytest.raises(faults.InjectedCrash):
        write_run(lake, 2.0, crash_at=point, monkeypatch=monkeypatch)
    # the crashed run replaced the current rows of `results`, but readers never see them
    current = set(lake.scan("results").collect()["value"].to_list())
    assert current == {2.0}
    assert seen(lake, "results") == {1.0} and seen(lake, "rankings") == {-1.0}
    assert runs.latest(lake, "probes", "m", "c", task="pos").run_id == first.run_id
    # a plain re-run makes the new result visible, both tables at once
    second = write_run(lake, 3.0)
    assert seen(lake, "results") == {3.0} and seen(lake, "rankings") == {-3.0}
    assert runs.latest(lake, "probes", "m", "c", task="pos").run_id == second.run_id


def test_a_run_replaces_its_scope_only_and_vacuum_keeps_what_current_runs_read(settings):
    lake = Lake(settings)
    pos = write_run(lake, 1.0, task="pos")
    write_run(lake, 5.0, task="chunk")
    table = lake.scan("results").collect()
    assert sorted(set(table["task"])) == ["chunk", "pos"]  # chunk did not delete pos
    assert seen(lake, "results", "pos") == {1.0} and seen(lake, "results", "chunk") == {5.0}
    protected = runs.protected_snapshots(lake)
    assert pos.outputs["raydund.results"] in protected["raydund.results"]
    # superseded runs are not protected: only the newest run per (stage, scope)
    newer = write_run(lake, 7.0, task="pos")
    protected = runs.protected_snapshots(lake)
    assert pos.outputs["raydund.results"] not in protected["raydund.results"]
    assert newer.outputs["raydund.results"] in protected["raydund.results"]


def test_run_lookup_by_id_and_scope(settings):
    lake = Lake(settings)
    stage = write_run(lake, 1.0)
    assert runs.by_id(lake, stage.run_id).outputs == {k: str(v) for k, v in stage.outputs.items()}
    assert runs.by_id(lake, "mlflow-run").run_id == stage.run_id
    assert runs.latest(lake, "probes", "m", "c", task="chunk") is None
    with pytest.raises(Exception, match="no completed raydund run"):
        runs.by_id(lake, "nope")


def test_tracking_failures_after_the_commit_are_spooled_then_flushed(settings, monkeypatch):
    """MLflow refuses every call once the lake holds the result: nothing raises, `flush` sends it all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mlflow = tracking.configure(settings)
    exp = tracking.ensure_experiment(settings, "raydund/m/c")
    run_id = mlflow.MlflowClient().create_run(exp).info.run_id

    from raydund.tracking import spool

    real_apply = spool._apply

    def refuse(*args, **kwargs):
        raise ConnectionError("tracking server gone")

    monkeypatch.setattr(spool, "_apply", refuse)
    track = tracking.Tracker(settings, run_id)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert not track.metrics({"accuracy": 0.9})
    assert not track.figure(fig, "figures/curve.png")
    assert not track.json({"a": [1, 2]}, "tables/a.json")
    assert not track.child("threshold=0.10", {"threshold": 0.1}, {"kept": 12})
    assert not track.tags({"raydund.run_id": "abc"})
    kinds = [r["kind"] for r in tracking.read_spool(settings, run_id)]
    assert kinds == ["metrics", "artifact", "artifact", "child", "tags"]

    monkeypatch.setattr(spool, "_apply", real_apply)
    assert tracking.replay_spool(settings) == 1
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.data.metrics["accuracy"] == 0.9 and run.data.tags["raydund.run_id"] == "abc"
    artifacts = {a.path for a in client.list_artifacts(run_id, "figures")} | \
        {a.path for a in client.list_artifacts(run_id, "tables")}
    assert artifacts == {"figures/curve.png", "tables/a.json"}
    children = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert [c.data.metrics["kept"] for c in children] == [12.0]
    assert tracking.read_spool(settings, run_id) == []


def test_latest_skips_failed_versions_and_settle_decides_pending_ones(settings, tmp_path):
    """`models:/NAME/latest` is the newest committed version; a pending version is settled by its run."""
    from raydund.transfer.job import settle_versions

    mlflow = tracking.configure(settings)
    client = mlflow.MlflowClient()
    lake = Lake(settings)
    done = runs.StageRun(lake, "transfer", "m", "c", {"task": ["pos"]})
    done.replace("results", rows(1.0), ("model", "corpus"))
    done.complete()
    client.create_registered_model("r")
    statuses = [("committed", done.run_id), ("pending", done.run_id), ("pending", "crashed"), ("failed", "x")]
    for status, run_id in statuses:
        v = client.create_model_version("r", str(tmp_path), tags={"raydund.status": status, "raydund.run_id": run_id})
    assert str(v.version) == "4"
    assert str(tracking.latest_valid_version(client, "r").version) == "1"  # 3 and 4 would be wrong
    settled = settle_versions(mlflow, lake, ["r"])
    assert settled == {"committed": [("r", "2")], "failed": [("r", "3")]}
    assert [client.get_model_version("r", str(i)).tags["raydund.status"] for i in range(1, 5)] == \
        ["committed", "committed", "failed", "failed"]
    assert str(tracking.latest_valid_version(client, "r").version) == "2"
