"""Two models side by side (``raydund compare``), with and without a pruning study and robust-CKA results.

A real lake and MLflow store in a temporary home: planted activations of a 3-layer
"enc" and a 5-layer "dec" (with a massive dimension), real similarity and clustering
runs, probe and pruning rows written through :class:`raydund.lake.runs.StageRun`, a real
``robust-cka`` run. Every figure's series is checked against the values behind it,
computed independently (NumPy CKA, the clustering rows, the rows written).
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from references import ref_cka

from benchmarks.synthetic import write_activations
from raydund import tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.lake import Lake, runs
from raydund.prune.study import DEFAULT_CRITERION, results_table
from raydund.prune.width_study import results_table as width_table
from raydund.report import figures, pruning, sources
from raydund.report.compare import build_comparison

T, WIDTH = 300, 6
DEPTH = {"enc": 3, "dec": 5}
THRESHOLDS = (0.0, 0.3, 0.6)


def planted(model: str) -> list[np.ndarray]:
    """Layers sharing a signal that fades with depth; "dec" has a massive dimension 2 on every 50th token."""
    rng = np.random.default_rng(len(model) + DEPTH[model])
    base = rng.standard_normal((T, WIDTH))
    layers = []
    for layer in range(DEPTH[model]):
        X = (base + 0.3 * layer * rng.standard_normal((T, WIDTH))).astype(np.float32)
        if model == "dec" and layer >= 1:
            X[::50, 2] = 5000.0
        layers.append(X)
    return layers


def accuracy(model: str, layer: int) -> float:
    return 0.5 + 0.1 * layer + (0.05 if model == "dec" else 0.0)


def probe_table(model: str) -> pa.Table:
    """``probe_results`` rows of one layer-wise analysis: layer l has :func:`accuracy`, the oracle 0.95."""
    rows = [(f"layer {layer}", layer, split, accuracy(model, layer)) for layer in range(DEPTH[model])
            for split in ("dev", "test")]
    rows += [("oracle", None, split, 0.95) for split in ("dev", "test")]
    n = len(rows)
    return pa.table({
        "model": [model] * n, "corpus": ["toy"] * n, "task": ["pos"] * n, "unit": ["word"] * n,
        "analysis": ["layerwise"] * n, "probe": [r[0] for r in rows],
        "layer": pa.array([r[1] for r in rows], pa.int32()),
        "k": pa.array([None] * n, pa.int32()), "threshold": pa.array([None] * n, pa.float64()),
        "split": [r[2] for r in rows], "metric": ["accuracy"] * n,
        "value": pa.array([r[3] for r in rows], pa.float64()),
    })


FULL = {"criterion": "none", "n": 0, "blocks": [], "ppl": 10.0, "sst2": 0.8, "pos": 0.9}
STUDY = [FULL,
         {"criterion": "sleb", "n": 1, "blocks": [2], "ppl": 12.0, "sst2": 0.78, "pos": 0.88},
         {"criterion": "sleb", "n": 2, "blocks": [1, 2], "ppl": 15.0, "sst2": 0.7, "pos": 0.85},
         {"criterion": "hybrid", "n": 1, "blocks": [2], "ppl": 12.0, "sst2": 0.78, "pos": 0.88},
         {"criterion": "hybrid", "n": 2, "blocks": [2, 3], "ppl": 14.0, "sst2": 0.72, "pos": 0.86},
         {"criterion": "last", "n": 1, "blocks": [4], "ppl": 50.0, "sst2": 0.6, "pos": 0.7},
         {"criterion": "last", "n": 2, "blocks": [3, 4], "ppl": 400.0, "sst2": 0.5, "pos": 0.5}]


WIDTH_FULL = {"method": "none", "fraction": 0.0, "ppl": 10.0, "parameters": 1e6, "size_mb": 4.0,
              "ms_per_token": 2.0}
WIDTH_STUDY = [WIDTH_FULL,
         {"method": "fold-cost", "fraction": 0.25, "ppl": 11.0, "parameters": 9e5, "size_mb": 3.6,
          "ms_per_token": 1.8},
         {"method": "fold-cost", "fraction": 0.5, "ppl": 13.0, "parameters": 8e5, "size_mb": 3.2,
          "ms_per_token": 1.6},
         {"method": "random", "fraction": 0.25, "ppl": 30.0, "parameters": 9e5, "size_mb": 3.6,
          "ms_per_token": 1.8},
         {"method": "random", "fraction": 0.5, "ppl": 90.0, "parameters": 8e5, "size_mb": 3.2,
          "ms_per_token": 1.6}]


def write_width_study(lake: Lake, rows: list[dict]) -> runs.Run:
    scope = {"method": sorted({r["method"] for r in rows}), "fraction": sorted({r["fraction"] for r in rows})}
    stage = runs.StageRun(lake, "prune-width", "dec", "toy", scope)
    stage.replace("prune_width_results", width_table("dec", "toy", rows), ("model", "corpus"))
    stage.complete()
    return runs.by_id(lake, stage.run_id)


def write_study(lake: Lake, rows: list[dict]) -> runs.Run:
    criteria = sorted({r["criterion"] for r in rows} - {"none"})
    blocks = sorted({r["n"] for r in rows} - {0})
    stage = runs.StageRun(lake, "prune", "dec", "toy", {"criterion": criteria, "n": blocks})
    stage.replace("prune_results", results_table("dec", "toy", rows), ("model", "corpus"))
    stage.complete()
    return runs.by_id(lake, stage.run_id)


@pytest.fixture(scope="module")
def lake_two(tmp_path_factory, ray_local):  # ~60 s on 2 loaded cores: the tests using it are slow
    """Similarity, clustering (real jobs) and probe rows of "enc" and "dec" on corpus "toy", split dev."""
    from raydund.general.job import ClusterConfig, run_clustering, run_similarity
    from raydund.general.stream import SimilarityConfig

    settings = Settings.from_env({"RAYDUND_HOME": str(tmp_path_factory.mktemp("report-llm") / "home")}).prepare()
    lake = Lake(settings)
    for model in DEPTH:
        write_activations(lake, planted(model), model=model, corpus="toy", split="dev", shard_tokens=150,
                          sentence_len=5)
        run_similarity(SimilarityConfig(model=model, corpus="toy", split="dev"), settings, progress=False)
        run_clustering(ClusterConfig(model=model, corpus="toy", split="dev", thresholds=THRESHOLDS), settings)
        probes = runs.StageRun(lake, "probes", model, "toy", {"task": "pos", "unit": "word"})
        probes.replace("probe_results", probe_table(model), ("model", "corpus"))
        probes.complete()
    return settings, lake


@pytest.fixture
def drawn(monkeypatch):
    """What every figure function drew: name -> [(title, [{label: (x, y)} per axes], first axes' image)]."""
    seen: dict[str, list] = {}
    for name in ("cka_heatmap", "threshold_curves", "layerwise_depth", "prune_curves", "width_curves",
                 "adjacent_similarity"):
        original = getattr(figures, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            fig = _original(*args, **kwargs)
            panels = [{line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
                       for line in ax.lines} for ax in fig.axes]
            image = fig.axes[0].images[0].get_array() if fig.axes[0].images else None
            title = fig._suptitle.get_text() if fig._suptitle is not None else fig.axes[0].get_title()
            seen.setdefault(_name, []).append((title, panels, image))
            return fig

        monkeypatch.setattr(figures, name, spy)
    return seen


@pytest.mark.slow
def test_side_by_side_without_prune_or_robust_results(lake_two, drawn):
    settings, lake = lake_two
    page = build_comparison(settings, "toy", ["enc", "dec"])
    text = page.read_text(encoding="utf-8")
    assert "Depth pruning" not in text and "Width pruning" not in text and "massive activations" not in text
    # CKA heatmaps: each model's matrix is NumPy's linear CKA of its planted layers
    heat = {title.split(":")[0]: image for title, _, image in drawn["cka_heatmap"] if "debiased" not in title}
    for model in DEPTH:
        layers = planted(model)
        expect = np.array([[ref_cka(a, b) for b in layers] for a in layers])
        np.testing.assert_allclose(np.asarray(heat[model]), expect, atol=1e-6)
    assert 'alt="cka_enc"' in text and 'alt="cka_dec"' in text and 'alt="cka_debiased_dec"' in text
    # one clustering plot: each model's % kept per threshold, from its clustering run's rows
    (_, panels, _), = drawn["threshold_curves"]
    for model in DEPTH:
        run = runs.latest(lake, "cluster", model, "toy", "clusters", split="dev")
        rows = pl.from_arrow(runs.read(lake, run, "clusters").to_arrow())
        kept = rows.group_by("threshold").agg(pl.col("kept").sum()).sort("threshold")
        x, y = panels[0][f"{model} ({DEPTH[model] * WIDTH} neurons)"]
        assert x.tolist() == list(THRESHOLDS)
        np.testing.assert_allclose(y, 100 * kept["kept"].to_numpy() / (DEPTH[model] * WIDTH))
    # layer-wise probes of both models on relative depth
    (title, panels, _), = drawn["layerwise_depth"]
    for model, L in DEPTH.items():
        x, y = panels[0][f"{model} ({L} layers)"]
        np.testing.assert_allclose(x, np.arange(L) / (L - 1))
        np.testing.assert_allclose(y, [100 * accuracy(model, layer) for layer in range(L)])
    assert "layerwise_pos_enc" in text and "layerwise_pos_dec" in text
    built = json.loads((page.parent / "sources.json").read_text())
    assert {(r["model"], r["stage"]) for r in built} == {(m, s) for m in DEPTH for s in ("similarity", "cluster",
                                                                                          "probes")}
    assert page.parent.name == "enc+dec__toy"
    with pytest.raises(UserError, match="no results"):
        build_comparison(settings, "toy", ["nobody"])



@pytest.mark.slow
def test_compare_command(lake_two, monkeypatch, capsys):
    from raydund.cli import main

    settings, _ = lake_two
    monkeypatch.setenv("RAYDUND_HOME", str(settings.home))
    assert main(["compare", "--corpus", "toy", "--model", "enc", "--model", "dec", "--label", "pos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["report"] == str(settings.report_dir("enc+dec", "toy") / "index.html")
    assert main(["compare", "--corpus", "toy", "--model", "../x"]) == 2
    assert main(["compare", "--corpus", "toy", "--model", "nobody"]) == 2
    assert "no results for nobody on toy" in capsys.readouterr().err


def test_width_rows_narrowed_to_the_run_scope():
    old = width_table("dec", "toy", [WIDTH_FULL, {"method": "magnitude", "fraction": 0.1, "ppl": 12.0}])
    frame = pl.from_arrow(pa.concat_tables([old, width_table("dec", "toy", WIDTH_STUDY)]))
    rows = pruning.width_to_rows(frame, {"method": ["fold-cost", "none", "random"], "fraction": [0.0, 0.25, 0.5]})
    assert [(r["method"], r["fraction"]) for r in rows] == [("none", 0.0), ("fold-cost", 0.25), ("fold-cost", 0.5),
                                                           ("random", 0.25), ("random", 0.5)]
    assert rows == [WIDTH_FULL, *sorted(WIDTH_STUDY[1:], key=lambda r: (r["method"], r["fraction"]))]


def test_prune_rows_from_the_latest_study_only():
    old = results_table("dec", "toy", [FULL, {"criterion": "shortgpt", "n": 1, "blocks": [3], "ppl": 11.0}])
    new = results_table("dec", "toy", STUDY)
    frame = pl.from_arrow(pa.concat_tables([old, new]))
    rows = pruning.to_rows(frame, {"criterion": ["hybrid", "last", "sleb"], "n": [1, 2]})
    assert [(r["criterion"], r["n"]) for r in rows] == [("none", 0), ("hybrid", 1), ("hybrid", 2), ("last", 1),
                                                       ("last", 2), ("sleb", 1), ("sleb", 2)]
    assert rows[2] == {"criterion": "hybrid", "n": 2, "blocks": [2, 3], "ppl": 14.0, "sst2": 0.72, "pos": 0.86}
    assert rows[0] == FULL


@pytest.mark.slow
def test_side_by_side_with_a_pruning_study_and_robust_cka(lake_two, drawn):
    from raydund.general.robust_job import RobustConfig, run_robust_similarity

    settings, lake = lake_two
    write_study(lake, [FULL, {"criterion": "shortgpt", "n": 1, "blocks": [3], "ppl": 11.0, "sst2": 0.7, "pos": 0.8}])
    study = write_study(lake, STUDY)
    write_width_study(lake, [WIDTH_FULL, {**WIDTH_STUDY[1], "ppl": 99.0}])  # an older width study: not shown
    width = write_width_study(lake, WIDTH_STUDY)
    result, robust_id = run_robust_similarity(RobustConfig(model="dec", corpus="toy", split="dev", tokens=200, k=5),
                                              settings)
    page = build_comparison(settings, "toy", ["enc", "dec"], ("pos",))
    text = page.read_text(encoding="utf-8")
    # pruning: one panel per metric, one line per criterion of the latest study, from the full model at n = 0
    (title, panels, _), = drawn["prune_curves"]
    assert title.startswith("dec on toy")
    by_metric = dict(zip(("ppl", "sst2", "pos"), panels))
    for metric, scale in (("ppl", 1.0), ("sst2", 100.0), ("pos", 100.0)):
        assert {label.split(" ")[0] for label in by_metric[metric]} == {"hybrid", "last", "sleb"}  # not shortgpt
        for criterion in ("hybrid", "last", "sleb"):
            label = next(lb for lb in by_metric[metric] if lb.split(" ")[0] == criterion)
            x, y = by_metric[metric][label]
            pts = [FULL] + [r for r in STUDY if r["criterion"] == criterion]
            assert x.tolist() == [r["n"] for r in pts]
            np.testing.assert_allclose(y, [scale * r[metric] for r in pts])
    assert DEFAULT_CRITERION in ("sleb", "hybrid") and f"{DEFAULT_CRITERION} (default)" in by_metric["ppl"]
    assert "<td>2,3</td><td>14.00</td><td>72.00</td><td>86.00</td>" in text
    assert "<td>3,4</td><td>400.00</td>" in text and "shortgpt" not in text
    # width pruning: perplexity and forward time per method of the latest study, from the full model at 0%
    (title, panels, _), = drawn["width_curves"]
    assert title.startswith("dec on toy")
    for metric, panel in zip(("ppl", "ms_per_token"), panels):
        assert set(panel) == {"fold-cost", "random"}
        for method in ("fold-cost", "random"):
            pts = [WIDTH_FULL] + [r for r in WIDTH_STUDY if r["method"] == method]
            np.testing.assert_allclose(panel[method][0], [100 * r["fraction"] for r in pts])
            np.testing.assert_allclose(panel[method][1], [r[metric] for r in pts])
    assert "<td class=\"l\">random</td><td>50.00</td><td>90.00</td><td>0.80</td><td>3.20</td><td>1.60</td>" in text
    assert "99.00" not in text
    # robust CKA: the adjacent-layer curves are the logged matrices' first superdiagonals
    (title, panels, _), = drawn["adjacent_similarity"]
    assert title.startswith("dec")
    np.testing.assert_allclose(panels[0]["linear CKA (paper)"][1], np.diagonal(result.cka, 1))
    np.testing.assert_allclose(panels[0]["mutual k-NN alignment"][1], np.diagonal(result.mknn, 1))
    assert [o.tolist() for o in result.outliers] == [[], [2], [2], [2], [2]]
    assert "<td>4 of 5</td><td>1</td><td>2</td>" in text
    heat = {title: image for title, _, image in drawn["cka_heatmap"] if title.startswith("dec:")}
    np.testing.assert_allclose(np.asarray(heat["dec: linear CKA without massive-activation tokens"]),
                               result.cka_no_outlier_tokens)
    built = json.loads((page.parent / "sources.json").read_text())
    assert {"model": "dec", **pruning_record(study)} in built
    assert {"model": "dec", **sources.describe(width, ["prune_width_results"])} in built
    assert next(r for r in built if r["stage"] == "robust-cka")["mlflow_run_id"] == robust_id
    assert "enc" not in {r["model"] for r in built if r["stage"] in ("prune", "prune-width", "robust-cka")}
    # the page opens in headless Chromium: every figure loads, no console errors, sections in order
    from browser import page_of

    with page_of(page) as (view, problems):
        images = view.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth > 0])")
        headings = view.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
    assert problems == [] and images and all(ok for _, ok in images)
    assert {"cka_enc", "cka_dec", "cc_threshold_curves", "layerwise_pos_depth", "robust_adjacent_dec",
            "prune_dec", "prune_width_dec"} <= {alt for alt, _ in images}
    assert headings == ["Built from", "CKA between layers (dev)", "Correlation clustering (dev)",
                        "Task-specific redundancy: layer-wise probes",
                        "Layer similarity under massive activations (robust CKA)",
                        "Depth pruning: blocks removed vs perplexity / SST-2 / POS",
                        "Width pruning: MLP neurons removed vs perplexity / forward time"]


def pruning_record(run: runs.Run) -> dict:
    return sources.describe(run, ["prune_results"])


@pytest.mark.slow
def test_transfer_report_shows_the_study_of_its_model(lake_two, drawn):
    """``raydund report RUN`` of a transfer run of "dec" gains the pruning and robust sections of "dec"."""
    from raydund.report.html import build_report

    settings, lake = lake_two
    write_study(lake, STUDY)
    write_width_study(lake, WIDTH_STUDY)
    stages = [("oracle", None, 30), ("ls", 2, 18), ("cc", 2, 10), ("ccfs", 2, 6)]
    out = [(s, layers, n, split) for s, layers, n in stages for split in ("dev", "test")]
    rows = pa.table({
        "model": ["dec"] * len(out), "corpus": ["toy"] * len(out), "unit": ["word"] * len(out),
        "task": ["pos"] * len(out), "splits": ["train,dev,test"] * len(out),
        "ls_threshold": pa.array([0.01] * len(out), pa.float64()),
        "ccfs_threshold": pa.array([0.01] * len(out), pa.float64()), "stage": [r[0] for r in out],
        "layers": pa.array([r[1] for r in out], pa.int32()), "neurons": pa.array([r[2] for r in out], pa.int32()),
        "split": [r[3] for r in out], "metric": ["accuracy"] * len(out), "value": pa.array([0.9] * len(out)),
    })
    with tracking.job_run(settings, tracking.experiment_name("dec", "toy"), "transfer pos",
                          {"stats_split": "dev"}, tags={"raydund.stage": "transfer"}) as run:
        transfer = runs.StageRun(lake, "transfer", "dec", "toy", {"unit": "word", "task": ["pos"],
                                                                  "ls_threshold": [0.01], "ccfs_threshold": [0.01],
                                                                  "splits": "train,dev,test"})
        transfer.replace("transfer_results", rows, ("model", "corpus"))
        transfer.complete(run.info.run_id)
    page = build_report(settings, transfer.run_id)
    text = page.read_text(encoding="utf-8")
    assert "Depth pruning" in text and 'alt="prune_dec"' in text
    assert "Width pruning" in text and 'alt="prune_width_dec"' in text
    stages_read = {r["stage"] for r in json.loads((page.parent / "sources.json").read_text())}
    assert {"transfer", "similarity", "cluster", "probes", "prune", "prune-width"} <= stages_read
