"""The report and the neuron browser take only the rows of exact completed runs (issue 15, defect 6).

One lake holds two splits of the same (model, corpus) with different correlations and
clusters: on "dev", (0, 7), (1, 9), (2, 11) carry one signal; on "test", (1, 9) is noise
and (0, 2), (1, 4), (2, 6) share another. Every page must show the values of the run it names
(compared with the rows of that run alone) and survive a crashed re-run (tables written
through :class:`raydund.lake.runs.StageRun` without ``complete()``).
"""

from __future__ import annotations

import html
import json
import re
import types

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from test_explore import TAGS, planted_layers, toy_sentences, write_planted

from raydund import explore as ex
from raydund.config import Settings
from raydund.errors import UserError
from raydund.explore import browser
from raydund.lake import Lake, runs
from raydund.report import html as report_html

THRESHOLDS = (0.0, 0.3, 0.6)
TEST_GROUP = [(0, 2), (1, 4), (2, 6)]


def split_layers(words):
    """The "test" split: a different seed, (1, 9) out of the planted cluster, a second cluster of three."""
    layers = planted_layers(words, seed=1)
    rng = np.random.default_rng(7)
    layers[1][:, 9] = rng.standard_normal(len(words)).astype(np.float32)
    signal = 2.0 * rng.standard_normal(len(words))
    for layer, neuron in TEST_GROUP:
        layers[layer][:, neuron] = (signal + 0.2 * rng.standard_normal(len(words))).astype(np.float32)
    return layers



def rankings_rows(ranks: list[int], task: str = "pos") -> pa.Table:
    """A ``neuron_rankings`` table of one ``probeless`` ranking: positions in rank order (3 x 16 neurons)."""
    from raydund.probes.job import rankings_table

    cfg = types.SimpleNamespace(model="m", corpus="toy", label=task, unit="word")
    return rankings_table(cfg, {"probeless": np.asarray(ranks)}, (16, 16, 16))


def probe_rows(accuracy: float, task: str = "pos") -> pa.Table:
    """A minimal ``probe_results`` table: layer-wise and oracle accuracies on dev and test."""
    rows = [(f"layer {layer}", layer, split, accuracy - 0.1 * (2 - layer)) for layer in range(3)
            for split in ("dev", "test")]
    rows += [("oracle", None, split, accuracy) for split in ("dev", "test")]
    n = len(rows)
    return pa.table({
        "model": ["m"] * n, "corpus": ["toy"] * n, "task": [task] * n, "unit": ["word"] * n,
        "analysis": ["layerwise"] * n, "probe": [r[0] for r in rows],
        "layer": pa.array([r[1] for r in rows], pa.int32()),
        "k": pa.array([None] * n, pa.int32()), "threshold": pa.array([None] * n, pa.float64()),
        "split": [r[2] for r in rows], "metric": ["accuracy"] * n,
        "value": pa.array([r[3] for r in rows], pa.float64()),
    })


def transfer_rows(test_accuracy: float) -> pa.Table:
    """A ``transfer_results`` table of one task and one threshold pair."""
    stages = [("oracle", None, 48), ("ls", 2, 32), ("cc", 2, 20), ("ccfs", 2, 12)]
    out = [(s, layers, neurons, split, test_accuracy if split == "test" else 0.9)
           for s, layers, neurons in stages for split in ("dev", "test")]
    n = len(out)
    return pa.table({
        "model": ["m"] * n, "corpus": ["toy"] * n, "unit": ["word"] * n, "task": ["pos"] * n,
        "splits": ["train,dev,test"] * n,
        "ls_threshold": pa.array([0.01] * n, pa.float64()), "ccfs_threshold": pa.array([0.01] * n, pa.float64()),
        "stage": [r[0] for r in out], "layers": pa.array([r[1] for r in out], pa.int32()),
        "neurons": pa.array([r[2] for r in out], pa.int32()), "split": [r[3] for r in out],
        "metric": ["accuracy"] * n, "value": pa.array([r[4] for r in out], pa.float64()),
    })


TRANSFER_SCOPE = {"unit": "word", "task": ["pos"], "ls_threshold": [0.01], "ccfs_threshold": [0.01],
                  "splits": "train,dev,test"}


@pytest.fixture(scope="module")
def two_splits(tmp_path_factory, ray_local):
    """Similarity + clustering on "dev" and "test"; a probe run; a transfer run that read the test correlations."""
    from raydund import tracking
    from raydund.general.job import ClusterConfig, run_clustering, run_similarity
    from raydund.general.stream import SimilarityConfig

    settings = Settings.from_env({"RAYDUND_HOME": str(tmp_path_factory.mktemp("report-runs") / "home")}).prepare()
    lake = Lake(settings)
    sentences = toy_sentences()
    words = [w for s in sentences for w in s]
    table = pa.table({"sentence_id": pa.array(range(len(sentences)), pa.int64()), "words": sentences,
                      "pos": [[TAGS[w] for w in s] for s in sentences]})
    lake.write_corpus("toy", {"dev": table, "test": table})
    write_planted(lake, sentences, planted_layers(words), split="dev")
    write_planted(lake, sentences, split_layers(words), split="test")
    out = {"settings": settings, "lake": lake}
    for split in ("dev", "test"):
        sim = run_similarity(SimilarityConfig(model="m", corpus="toy", split=split), settings, progress=False)
        run_clustering(ClusterConfig(model="m", corpus="toy", split=split, thresholds=THRESHOLDS), settings)
        out[f"sim_{split}"] = runs.by_id(lake, sim["raydund_run_id"])
        out[f"cluster_{split}"] = runs.latest(lake, "cluster", "m", "toy", "clusters", split=split)
    probes = runs.StageRun(lake, "probes", "m", "toy", {"task": "pos", "unit": "word"})
    probes.replace("probe_results", probe_rows(0.8), ("model", "corpus"))
    probes.replace("neuron_rankings", rankings_rows(list(range(48))), ("model", "corpus"))
    probes.complete()
    out["probes"] = runs.by_id(lake, probes.run_id)
    with tracking.job_run(settings, tracking.experiment_name("m", "toy"), "transfer pos",
                          {"model": "m", "corpus": "toy", "labels": "pos", "stats_split": "test"},
                          tags={"raydund.stage": "transfer"}) as run:
        transfer = runs.StageRun(lake, "transfer", "m", "toy", TRANSFER_SCOPE,
                                 inputs={"similarity_run": out["sim_test"].run_id})
        transfer.replace("transfer_results", transfer_rows(0.75), ("model", "corpus"))
        transfer.complete(run.info.run_id)
    out["transfer"] = runs.by_id(lake, transfer.run_id)
    return out


def crash_rerun(lake, stage: str, scope: dict, table: str, data: pa.Table) -> str:
    """A re-run that writes a table and dies before its run row; returns the snapshot it left current."""
    stage_run = runs.StageRun(lake, stage, "m", "toy", scope)
    return str(stage_run.replace(table, data, ("model", "corpus")))


def of_run(lake, run, table) -> pl.DataFrame:
    return pl.from_arrow(runs.read(lake, run, table).to_arrow())


def expected_clusters(lake, run, N: int) -> list[list[int]]:
    rows = of_run(lake, run, "clusters")
    out = []
    for t in sorted(rows["threshold"].unique().to_list()):
        ids = np.zeros(N, dtype=int)
        part = rows.filter(pl.col("threshold") == t)
        ids[part["position"].to_numpy()] = part["cluster_id"].to_numpy()
        out.append(ids.tolist())
    return out


def expected_neighbours(lake, run, k: int) -> list[list]:
    frame = of_run(lake, run, "neuron_correlation").sort("position")
    out = []
    for p, row in zip(frame["position"].to_list(), frame["r"].to_list()):
        r = np.nan_to_num(np.asarray(row, dtype=np.float64))
        r[p] = 0.0
        best = np.argsort(-np.abs(r), kind="stable")[:k]
        out.append([[int(b), round(float(r[b]), 3)] for b in best if r[b] != 0])
    return out


def source_of(data: dict, stage: str) -> dict:
    return next(s for s in data["sources"] if s["stage"] == stage)


# -- the browser ----------------------------------------------------------------------
def test_browser_shows_only_its_split_and_names_its_runs(two_splits):
    lake = two_splits["lake"]
    cfg = ex.BrowserConfig(top_k=3, min_count=3, sentences=1)
    pages = {split: ex.browser_data(lake, "m", "toy", split, cfg=cfg) for split in ("dev", "test")}
    assert pages["dev"]["clusters"] != pages["test"]["clusters"]  # the two splits really differ
    for split, data in pages.items():
        cluster, sim = two_splits[f"cluster_{split}"], two_splits[f"sim_{split}"]
        assert data["clusters"] == expected_clusters(lake, cluster, 48)
        assert data["correlated"] == expected_neighbours(lake, sim, cfg.correlated)
        assert source_of(data, "cluster") == {
            "stage": "cluster", "run_id": cluster.run_id, "mlflow_run_id": cluster.mlflow_run_id,
            "snapshots": {"clusters": cluster.snapshot("clusters")},
            "scope": {"split": split, "unit": "word", "variant": "all", "representative": "random", "seed": 0}}
        assert source_of(data, "similarity")["run_id"] == sim.run_id
        assert source_of(data, "similarity")["snapshots"] == {"neuron_correlation": sim.snapshot("neuron_correlation")}
        page = browser.render(data)
        built_from = page[page.index("Built from"):page.index('<script type="application/json"')]
        for run in (cluster, sim, two_splits["probes"]):
            assert run.run_id in built_from
        assert str(cluster.snapshot("clusters")) in built_from
        other = two_splits["cluster_test" if split == "dev" else "cluster_dev"]
        assert other.run_id not in page
    t = THRESHOLDS.index(0.3)
    dev, test = pages["dev"]["clusters"][t], pages["test"]["clusters"][t]
    pos = {(0, 7): 7, (1, 9): 16 + 9, (2, 11): 32 + 11, (0, 2): 2, (1, 4): 16 + 4, (2, 6): 32 + 6}
    assert dev[pos[(0, 7)]] == dev[pos[(1, 9)]] == dev[pos[(2, 11)]]
    assert test[pos[(1, 9)]] != test[pos[(0, 7)]] == test[pos[(2, 11)]]
    assert test[pos[(0, 2)]] == test[pos[(1, 4)]] == test[pos[(2, 6)]]


def test_cluster_view_reads_one_run_of_the_asked_split(two_splits):
    lake = two_splits["lake"]
    dev = ex.cluster_of(lake, "m", "toy", 1, 9, threshold=0.3, split="dev")
    test = ex.cluster_of(lake, "m", "toy", 1, 9, threshold=0.3, split="test")
    assert dev.members.height == 3 and test.members.height == 1
    r = np.array(of_run(lake, two_splits["sim_dev"], "neuron_correlation").sort("position")["r"].to_list())
    positions = dev.members["position"].to_list()
    np.testing.assert_allclose(dev.r, r[np.ix_(positions, positions)])
    assert [s["run_id"] for s in dev.sources[:2]] == [two_splits["cluster_dev"].run_id, two_splits["sim_dev"].run_id]
    with pytest.raises(UserError, match="seed 5"):
        ex.cluster_of(lake, "m", "toy", 1, 9, threshold=0.3, split="dev", seed=5)


def test_crashed_reruns_leave_the_browser_on_the_completed_runs(two_splits):
    lake = two_splits["lake"]
    cfg = ex.BrowserConfig(top_k=3, min_count=3, sentences=1)
    before = ex.browser_data(lake, "m", "toy", "test", cfg=cfg)
    cluster = two_splits["cluster_test"]
    garbage = of_run(lake, cluster, "clusters").with_columns(pl.lit(1, pl.Int32).alias("cluster_id")).to_arrow()
    crash_rerun(lake, "cluster", {k: v for k, v in cluster.scope.items() if k not in ("model", "corpus")},
                "clusters", garbage)
    crash_rerun(lake, "probes", {"task": "pos", "unit": "word"}, "neuron_rankings",
                rankings_rows(list(range(47, -1, -1))))
    current = pl.from_arrow(lake.table("clusters").scan().to_arrow()).filter(pl.col("split") == "test")
    assert set(current["cluster_id"].to_list()) == {1}  # the half-written re-run is the table's current state
    after = ex.browser_data(lake, "m", "toy", "test", cfg=cfg)
    assert after["clusters"] == before["clusters"] == expected_clusters(lake, cluster, 48)
    assert after["rankings"] == before["rankings"]
    assert after["rankings"][0]["rank"][:3] == [1, 2, 3]  # the completed ranking (positions in order)
    assert after["sources"] == before["sources"]


# -- the report -----------------------------------------------------------------------
def report_table(page: str, header: str) -> list[list[str]]:
    """Rows of the page's table whose first header cell is ``header``."""
    for table in re.findall(r"<table>(.*?)</table>", page, flags=re.S):
        cells = [[html.unescape(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]
                 for row in re.findall(r"<tr>(.*?)</tr>", table)]
        if cells and cells[0][0] == header:
            return cells[1:]
    raise AssertionError(f"no table headed {header!r}")


def expected_sweep(lake, run) -> list[list[str]]:
    """The report's clustering table computed from one run's rows alone."""
    rows = of_run(lake, run, "clusters").group_by("threshold").agg(pl.col("kept").sum(), pl.len()).sort("threshold")
    return [[f"{t:.2f}", str(kept), str(n), f"{100 * (1 - kept / n):.2f}"] for t, kept, n in rows.iter_rows()]


def test_report_reads_the_runs_of_the_transfer_run(two_splits):
    settings, lake, transfer = two_splits["settings"], two_splits["lake"], two_splits["transfer"]
    path = report_html.build_report(settings, transfer.mlflow_run_id)
    page = path.read_text(encoding="utf-8")
    assert report_table(page, "threshold") == expected_sweep(lake, two_splits["cluster_test"])
    assert expected_sweep(lake, two_splits["cluster_test"]) != expected_sweep(lake, two_splits["cluster_dev"])
    built = {row[0]: row for row in report_table(page, "stage")}
    assert set(built) == {"similarity", "cluster", "probes", "transfer"}
    for stage, run, table in (("similarity", two_splits["sim_test"], "layer_similarity"),
                              ("cluster", two_splits["cluster_test"], "clusters"),
                              ("probes", two_splits["probes"], "probe_results"),
                              ("transfer", transfer, "transfer_results")):
        assert built[stage][1] == run.run_id and built[stage][2] == (run.mlflow_run_id or "")
        assert built[stage][3] == f"{table} -> {run.snapshot(table)}"
    assert json.loads(built["cluster"][4])["split"] == "test"
    assert two_splits["sim_dev"].run_id not in page and two_splits["cluster_dev"].run_id not in page
    stages = report_table(page, "task")
    assert [r[2] for r in stages] == ["oracle", "ls", "cc", "ccfs"] and stages[0][-1] == "75.00"
    sources = json.loads((path.parent / "sources.json").read_text(encoding="utf-8"))
    assert [s["run_id"] for s in sources] == [built[s][1] for s in ("similarity", "cluster", "probes", "transfer")]
    # the raydund run id names the same run
    again = report_html.build_report(settings, transfer.run_id).read_text(encoding="utf-8")
    assert report_table(again, "stage") == report_table(page, "stage")


def test_crashed_reruns_leave_the_report_on_the_completed_runs(two_splits):
    settings, lake, transfer = two_splits["settings"], two_splits["lake"], two_splits["transfer"]
    before = report_html.build_report(settings, transfer.run_id).read_text(encoding="utf-8")
    crash_rerun(lake, "transfer", TRANSFER_SCOPE, "transfer_results", transfer_rows(0.10))
    crash_rerun(lake, "probes", {"task": "pos", "unit": "word"}, "probe_results", probe_rows(0.2))
    cluster = two_splits["cluster_test"]
    garbage = of_run(lake, cluster, "clusters").with_columns(pl.lit(True).alias("kept")).to_arrow()
    crash_rerun(lake, "cluster", {k: v for k, v in cluster.scope.items() if k not in ("model", "corpus")},
                "clusters", garbage)
    after = report_html.build_report(settings, transfer.run_id).read_text(encoding="utf-8")
    for header in ("stage", "threshold", "task", "probe"):
        assert report_table(after, header) == report_table(before, header)
    assert report_table(after, "task")[0][-1] == "75.00"


def test_report_refuses_what_is_not_a_completed_transfer_run(two_splits):
    settings = two_splits["settings"]
    with pytest.raises(UserError, match="not a transfer run"):
        report_html.build_report(settings, two_splits["cluster_dev"].run_id)
    with pytest.raises(UserError, match="no MLflow run and no completed raydund run"):
        report_html.build_report(settings, "0123456789abcdef")
    from raydund import tracking

    with tracking.job_run(settings, "raydund/m/toy", "transfer that died", {"model": "m"},
                          tags={"raydund.stage": "transfer"}) as died:
        runs.StageRun(two_splits["lake"], "transfer", "m", "toy", TRANSFER_SCOPE).replace(
            "transfer_results", transfer_rows(0.1), ("model", "corpus"))  # no complete(): it crashed
    with pytest.raises(UserError, match="no completed run in the lake"):
        report_html.build_report(settings, died.info.run_id)
