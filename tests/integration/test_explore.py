"""Looking at neurons: planted neurons come back out of the lake queries, the pictures and the browser.

One small lake (3 layers x 16 neurons, ~1,000 tokens of a toy language) is built per module
through the extraction file layout, with the real similarity, clustering and probe jobs:

- layer 1 neuron 5 fires on the word "bank";
- layer 2 neuron 3 is higher on every noun (label pos = NN);
- (0, 7), (1, 9), (2, 11) carry one shared signal: a correlation cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raydund import explore as ex
from raydund.config import Settings
from raydund.errors import UserError
from raydund.explore import heatmap
from raydund.extract.actor import PARQUET_OPTIONS, vectors_column
from raydund.lake import ACTIVATION_SCHEMA, Lake

WIDTH, LAYERS = 16, 3
TAGS = {"the": "DT", "a": "DT", "dog": "NN", "cat": "NN", "bank": "NN", "river": "NN", "runs": "VBZ",
        "sleeps": "VBZ", "fast": "RB", "quietly": "RB", "near": "IN", ".": "."}
BANK, NOUN, CLUSTER = (1, 5), (2, 3), [(0, 7), (1, 9), (2, 11)]


def toy_sentences(n=120, seed=0):
    rng = np.random.default_rng(seed)
    vocab = list(TAGS)
    return [[vocab[i] for i in rng.integers(0, len(vocab), rng.integers(6, 13))] for _ in range(n)]


def planted_layers(words, seed=0):
    """``[tokens x WIDTH]`` per layer: noise plus the planted neurons."""
    rng = np.random.default_rng(seed)
    T = len(words)
    layers = [rng.standard_normal((T, WIDTH)) + rng.uniform(-2, 2, WIDTH) for _ in range(LAYERS)]
    is_bank = np.array([w == "bank" for w in words])
    is_noun = np.array([TAGS[w] == "NN" for w in words])
    layers[BANK[0]][:, BANK[1]] += 6.0 * is_bank
    layers[NOUN[0]][:, NOUN[1]] += 3.0 * is_noun
    signal = 2.0 * rng.standard_normal(T)
    for layer, neuron in CLUSTER:
        layers[layer][:, neuron] = signal + 0.2 * rng.standard_normal(T)
    return [m.astype(np.float32) for m in layers]


def write_planted(lake, sentences, layers, model="m", corpus="toy", split="dev"):
    """Activation files with words, in the extraction layout, registered in one commit."""
    sid = np.concatenate([np.full(len(s), i) for i, s in enumerate(sentences)]).astype(np.int64)
    wid = np.concatenate([np.arange(len(s)) for s in sentences]).astype(np.int32)
    words = [w for s in sentences for w in s]
    table = lake.activations()
    scheme = table.location().split("://", 1)[0]
    fs, root = pafs.FileSystem.from_uri(f"{table.location()}/data/explore-test/{model}-{corpus}-{split}")
    fs.create_dir(root, recursive=True)
    files, n = [], len(words)
    for layer, X in enumerate(layers):
        vec, bits = vectors_column(np.ascontiguousarray(X), "float32")
        data = pa.Table.from_pydict({
            "model": [model] * n, "corpus": [corpus] * n, "split": [split] * n, "unit": ["word"] * n,
            "layer": pa.array(np.full(n, layer, np.int32)), "sentence_id": sid, "word_id": wid, "word": words,
            "dtype": ["float32"] * n, "vector": vec, "vector_bits": bits}, schema=ACTIVATION_SCHEMA)
        path = f"{root}/layer-{layer:03d}.parquet"
        pq.write_table(data, path, filesystem=fs, **PARQUET_OPTIONS)
        files.append(f"{scheme}://{path}")
    lake.commit_activation_files(files, model, corpus, split, "word")


@pytest.fixture(scope="module")
def planted(tmp_path_factory, ray_local):
    """A lake with the planted activations, its correlations, clusters and task rankings."""
    from raydund.general.job import ClusterConfig, run_clustering, run_similarity
    from raydund.general.stream import SimilarityConfig
    from raydund.probes.job import ProbeConfig, run_probes

    settings = Settings.from_env({"RAYDUND_HOME": str(tmp_path_factory.mktemp("explore") / "home")}).prepare()
    lake = Lake(settings)
    sentences = toy_sentences()
    words = [w for s in sentences for w in s]
    layers = planted_layers(words)
    lake.write_corpus("toy", {"dev": pa.table({"sentence_id": pa.array(range(len(sentences)), pa.int64()),
                                               "words": sentences, "pos": [[TAGS[w] for w in s] for s in sentences]})})
    write_planted(lake, sentences, layers)
    run_similarity(SimilarityConfig(model="m", corpus="toy", split="dev"), settings, progress=False)
    run_clustering(ClusterConfig(model="m", corpus="toy", split="dev", thresholds=(0.0, 0.3, 0.6)), settings)
    run_probes(ProbeConfig(model="m", corpus="toy", label="pos", splits=("dev", "dev", "dev"), epochs=2,
                           control=False), settings)
    return {"settings": settings, "lake": lake, "sentences": sentences, "words": np.array(words), "layers": layers}


# -- top words against NeuroX ---------------------------------------------------------
def neurox_case(seed=3):
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(15)]
    sentences = [[vocab[i] for i in rng.integers(0, 15, rng.integers(3, 9))] for _ in range(40)]
    acts = [rng.standard_normal((len(s), 4)) * 2 + 1 for s in sentences]
    for s, a in zip(sentences, acts):  # neuron 2 prefers w3 and dislikes w7
        a[:, 2] += np.array([4.0 if w == "w3" else -3.0 if w == "w7" else 0.0 for w in s])
    return sentences, acts


@pytest.mark.parametrize("neuron", [0, 2])
def test_top_words_reproduce_neurox(neuron):
    from neurox.analysis.corpus import get_top_words

    sentences, acts = neurox_case()
    ref = get_top_words({"source": sentences}, acts, neuron)
    words = [w for s in sentences for w in s]
    X = np.vstack(acts)
    frame = pl.DataFrame({"word": words, "act": X[:, neuron]})
    ours = ex.select_top(ex.word_scores(frame), top_k=0)
    assert ours["word"].to_list() == [w for w, _ in ref]
    np.testing.assert_allclose(ours["score"].to_numpy(), [s for _, s in ref], rtol=1e-9)
    types, counts, means, scores = ex.type_statistics(X, words)  # the all-neurons path of the browser
    best = ex.top_types(scores, counts, top_k=len(types))[neuron]
    assert [types[t] for t in best] == [w for w, _ in ref]
    np.testing.assert_allclose(scores[best, neuron], [s for _, s in ref], rtol=1e-9)
    by_word = defaultdict(list)
    for w, v in zip(words, X[:, neuron]):
        by_word[w].append(v)
    np.testing.assert_allclose(ours.sort("word")["mean"].to_numpy(),
                               [np.mean(by_word[w]) for w in sorted(ours["word"].to_list())], rtol=1e-9)
    if neuron == 2:
        assert ours["word"][:2].to_list() == ["w3", "w7"]
        assert ex.select_top(ex.word_scores(frame), top_k=1, sort="low")["word"].to_list() == ["w7"]


def test_thresholds_and_top_k():
    frame = pl.DataFrame({"word": ["a", "a", "b", "c", "c", "c", "c"], "act": [4.0, 4.0, -8.0, 0.0, 0.0, 0.0, 0.0]})
    scores = ex.word_scores(frame)  # mean 0: b scores 1, a 0.5, c 0
    np.testing.assert_allclose(scores.sort("word")["score"].to_numpy(), [0.5, 1.0, 0.0])
    assert ex.select_top(scores, top_k=1)["word"].to_list() == ["b"]
    assert ex.select_top(scores)["word"].to_list() == ["b", "a"]  # c is at most 0.1
    assert ex.select_top(scores, min_count=2)["word"].to_list() == ["a"]  # b is seen once
    assert ex.select_top(scores, min_score=-1, sort="high")["word"].to_list() == ["a", "c", "b"]
    with pytest.raises(UserError):
        ex.select_top(scores, sort="sideways")


# -- the lake queries -----------------------------------------------------------------
def test_planted_word_neuron_has_its_word_on_top(planted):
    top = ex.top_words(planted["lake"], "m", "toy", *BANK, min_count=3)
    assert top["word"][0] == "bank"
    bank = planted["layers"][BANK[0]][planted["words"] == "bank", BANK[1]]
    assert top["count"][0] == len(bank)
    np.testing.assert_allclose(top["mean"][0], bank.mean(), rtol=1e-5)
    other = ex.top_words(planted["lake"], "m", "toy", *NOUN, top_k=4)
    assert other["word"][0] != "bank" or other["word"].to_list() != top["word"].to_list()


def test_label_association_recovers_the_noun_neuron(planted):
    lake = planted["lake"]
    best = ex.label_neurons(lake, "m", "toy", "pos", "NN", top_k=3)
    assert (best["layer"][0], best["neuron"][0]) == NOUN
    assert best["score"][0] > 1.0 > best["score"][2]
    only = ex.label_neurons(lake, "m", "toy", "pos", "NN", layers=[0], top_k=0)
    assert set(only["layer"]) == {0} and only.height == WIDTH
    labels = ex.neuron_labels(lake, "m", "toy", "pos", *NOUN)
    assert labels["pos"][0] == "NN"
    x = planted["layers"][NOUN[0]][:, NOUN[1]].astype(np.float64)
    noun = np.array([TAGS[w] == "NN" for w in planted["words"]])
    np.testing.assert_allclose(labels["score"][0], (x[noun].mean() - x[~noun].mean()) / x.std(), rtol=1e-5)
    assert labels["count"][0] == noun.sum()


def test_cluster_view_lists_the_planted_members_and_their_ranks(planted):
    view = ex.cluster_of(planted["lake"], "m", "toy", 1, 9, threshold=0.3)
    members = list(zip(view.members["layer"].to_list(), view.members["neuron"].to_list()))
    assert members == CLUSTER
    assert view.r.shape == (3, 3) and (np.abs(view.r) > 0.95).all()
    assert view.members["kept"].sum() == 1
    np.testing.assert_allclose(view.members["r"].to_numpy(), view.r[1])
    ranks = view.ranks
    assert set(ranks["task"]) == {"pos"} and set(ranks["ranker"]) == {"lca", "probeless"}
    assert set(zip(ranks["layer"].to_list(), ranks["neuron"].to_list())) <= set(CLUSTER)
    alone = ex.cluster_of(planted["lake"], "m", "toy", 1, 9, threshold=0.0)
    assert alone.members.height == 1


def test_rankings_are_stored_by_the_probe_job(planted):
    lake = planted["lake"]
    ranks = ex.rankings(lake, "m", "toy").collect()
    probeless = ranks.filter(pl.col("ranker") == "probeless").sort("rank")
    assert probeless.height == LAYERS * WIDTH and probeless["rank"].to_list() == list(range(1, LAYERS * WIDTH + 1))
    assert (probeless["layer"][0], probeless["neuron"][0]) == NOUN  # the noun neuron separates the classes most
    assert ex.task_top_neurons(lake, "m", "toy", "pos", "probeless", k=1) == [NOUN]
    mine = ex.neuron_ranks(lake, "m", "toy", pl.DataFrame({"layer": [NOUN[0]], "neuron": [NOUN[1]]}))
    assert mine.filter(pl.col("ranker") == "probeless")["rank"].to_list() == [1]


@pytest.mark.parametrize("call,message", [
    (lambda lake: ex.top_words(lake, "m", "toy", 7, 0), "layer 7 is out of range"),
    (lambda lake: ex.top_words(lake, "m", "toy", 1, WIDTH), f"neuron {WIDTH} is out of range"),
    (lambda lake: ex.top_words(lake, "nope", "toy", 1, 0), "unknown model 'nope'"),
    (lambda lake: ex.top_words(lake, "m", "toy", 1, 0, split="test"), "unknown split 'test'"),
    (lambda lake: ex.label_neurons(lake, "m", "toy", "pos", "XYZ"), "no value 'XYZ'"),
    (lambda lake: ex.neuron_labels(lake, "m", "toy", "chunk", 1, 0), "no label 'chunk'"),
    (lambda lake: ex.cluster_of(lake, "m", "toy", 1, 9, threshold=0.45), "thresholds: 0, 0.3, 0.6"),
    (lambda lake: ex.task_top_neurons(lake, "m", "toy", "chunk"), "rankings: pos/lca, pos/probeless"),
])
def test_user_mistakes(planted, call, message):
    with pytest.raises(UserError, match=message):
        call(planted["lake"])


# -- heatmaps -------------------------------------------------------------------------
def test_sentence_activations_are_the_stored_values(planted):
    lake, where = planted["lake"], ex.Slice("m", "toy")
    sentences = ex.sample_sentences(lake, where, count=2, min_words=8, max_words=12)
    assert len(sentences) == 2 and sentences == ex.sample_sentences(lake, where, count=2, min_words=8, max_words=12)
    words, values = ex.sentence_activations(lake, where, sentences, [BANK, NOUN])
    starts = np.cumsum([0] + [len(s) for s in planted["sentences"]])
    for sid, w, v in zip(sentences, words, values):
        assert w == planted["sentences"][sid] and 8 <= len(w) <= 12
        rows = slice(starts[sid], starts[sid + 1])
        np.testing.assert_array_equal(v[0], planted["layers"][BANK[0]][rows, BANK[1]])
        np.testing.assert_array_equal(v[1], planted["layers"][NOUN[0]][rows, NOUN[1]])


def test_heatmap_wraps_long_sentences_and_writes_svg_and_png(tmp_path):
    words = [f"word{i}" for i in range(40)]
    lines = heatmap.wrap(words, line_chars=50)
    assert len(lines) > 1 and lines[0][0] == 0 and lines[-1][1] == 40
    assert all(heatmap.cell_widths(words[a:b]).sum() <= 50 for a, b in lines)
    values = np.vstack([np.linspace(-2, 2, 40), np.linspace(3, -1, 40)])
    original = values.copy()
    short = heatmap.activation_heatmap([words[:5]], [values[:, :5]], ["L0 n1", "L2 n3"])
    long = heatmap.activation_heatmap([words], [values], ["L0 n1", "L2 n3"], line_chars=50, title="t")
    assert long.get_figheight() > short.get_figheight() + (len(lines) - 1) * 2 * heatmap.ROW_INCH
    np.testing.assert_array_equal(values, original)  # inputs untouched
    scaled, _ = heatmap.scaled([values])
    assert np.abs(scaled[0]).max(axis=1).tolist() == [1.0, 1.0] and scaled[0][0, 0] == -1.0
    paths = heatmap.save(long, tmp_path / "h")
    assert [p.suffix for p in paths] == [".svg", ".png"]
    assert paths[0].read_text().lstrip().startswith("<?xml") and paths[1].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="do not match"):
        heatmap.activation_heatmap([words[:3]], [values], ["a", "b"])


# -- CLI ------------------------------------------------------------------------------
def cli(args, settings):
    env = {**os.environ, **settings.env_vars()}
    return subprocess.run([str(Path(sys.executable).parent / "raydund"), "explore", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_top_words_heatmap_and_mistakes(planted, tmp_path):
    settings = planted["settings"]
    out = cli(["top-words", "--model", "m", "--corpus", "toy", "--layer", "1", "--neuron", "5", "--min-count", "3"],
              settings)
    assert out.returncode == 0, out.stderr
    first_row = next(line for line in out.stdout.splitlines() if "bank" in line or "dog" in line)
    assert "bank" in first_row
    out = cli(["heatmap", "--model", "m", "--corpus", "toy", "--cluster", "1:9", "--out", str(tmp_path / "c")],
              settings)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c.svg").is_file() and (tmp_path / "c.png").is_file()
    bad = cli(["cluster", "--model", "m", "--corpus", "toy", "--layer", "1", "--neuron", "99"], settings)
    assert bad.returncode == 2 and "neuron 99 is out of range" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stderr.strip().count("\n") == 0


def test_explore_help_lists_every_view(tmp_path):
    out = subprocess.run([str(Path(sys.executable).parent / "raydund"), "explore", "--help"], capture_output=True,
                         text=True, env={**os.environ, "RAYDUND_HOME": str(tmp_path)}, timeout=60)
    assert out.returncode == 0
    for what in ("top-words", "label-neurons", "neuron-labels", "cluster", "heatmap", "browser"):
        assert what in out.stdout


# -- the browser ----------------------------------------------------------------------
def shown_words(page):
    return page.locator("#top-words tbody td.word").all_inner_texts()


def test_browser_page_follows_the_picked_neuron(planted):
    import mlflow
    from browser import page_of

    settings, lake = planted["settings"], planted["lake"]
    cfg = ex.BrowserConfig(top_k=5, min_count=3, sentences=2)
    page_path = ex.build_browser(settings, "m", "toy", cfg=cfg)
    assert page_path == settings.report_dir("m", "toy") / "browser" / "index.html"
    assert page_path.stat().st_size < 500_000
    runs = mlflow.search_runs(experiment_names=["raydund/m/toy"], filter_string="tags.`raydund.stage` = 'browser'")
    assert len(runs) == 1
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(runs.run_id[0], "browser")]
    assert "browser/index.html" in artifacts and "browser/data.json" in artifacts

    def expected(layer, neuron):
        return ex.top_words(lake, "m", "toy", layer, neuron, top_k=5, min_count=3)["word"].to_list()

    with page_of(page_path) as (page, problems):
        assert page.inner_text("#current") == "L0 n0"
        assert shown_words(page) == expected(0, 0)
        page.select_option("#layer", str(BANK[0]))
        page.fill("#neuron", str(BANK[1]))
        page.dispatch_event("#neuron", "change")
        assert page.inner_text("#current") == f"L{BANK[0]} n{BANK[1]}"
        assert shown_words(page) == expected(*BANK) and shown_words(page)[0] == "bank"
        cells = page.locator("#heatmap .heat span")  # the heatmap shows this neuron: "bank" is the hottest word
        values = [float(v) for v in cells.evaluate_all("els => els.map(e => e.dataset.value)")]
        texts = cells.all_inner_texts()
        if "bank" in texts:
            assert texts[int(np.argmax(values))] == "bank"
        page.select_option("#layer", "1")
        page.fill("#neuron", "9")
        page.dispatch_event("#neuron", "change")
        page.select_option("#threshold", "1")  # 0.3
        members = page.locator("#members li").all_inner_texts()
        assert [m.split()[:2] for m in members] == [["L0", "n7"], ["L1", "n9"], ["L2", "n11"]]
        page.locator("#members a.neuron", has_text="L2 n11").click()  # a member link moves the view there
        assert page.inner_text("#current") == "L2 n11" and shown_words(page) == expected(2, 11)
        page.select_option("#layer", str(NOUN[0]))
        page.fill("#neuron", str(NOUN[1]))
        page.dispatch_event("#neuron", "change")
        ranks = page.locator("#rankings tbody tr").all_inner_texts()
        assert any(r.split("\t")[:3] == ["pos", "probeless", "1"] for r in ranks)
        assert problems == []
