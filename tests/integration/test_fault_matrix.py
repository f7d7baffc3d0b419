"""The fault matrix (issue 15): every stage x every commit point, crashed, checked, re-run.

Two lakes are built from the same tiny world (a tiny BERT, a CoNLL-style corpus with two
label columns, a GLUE-style sentence corpus):

* the *reference* lake runs every stage once, uninterrupted; its tables are the expected rows;
* the *fault* lake runs the cells in pipeline order. A cell sets ``RAYDUND_CRASH_AT`` to
  one point (:mod:`raydund.faults`), runs its stage in this process and expects
  :class:`~raydund.faults.InjectedCrash`; then checks what a reader sees (the previous
  complete result, or none; for a point after the commit, the new complete result: never
  a half one); then re-runs the stage plainly and compares every table it writes, row by
  row, with the reference; then checks the model registry (no version of a run that
  never completed looks valid).

The first cell of a stage crashes that stage's first run in the fault lake (readers must
see nothing), the others crash a re-run over a complete result. The last test vacuums the
fault lake (retention 0) and checks that every file left is referenced and that the
tables read the same. A concurrency test runs two probe jobs on different labels and a
transfer job at once against one lake: every row of all three lands.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from raydund import faults
from raydund.config import Settings
from raydund.lake import Lake, corpus_table_name, runs, table_identifier

#: The whole matrix takes ~2 minutes on 2 cores: in `make test`, not in `make test-fast`.
pytestmark = pytest.mark.slow

MODEL = "bert"  # the lake name of tiny_model_dir("bert")
CORPUS = "toy"
SENTENCES = "ssttoy"
SPLITS = ("train", "train", "train")  # one extracted split: dev carved from train, test = train
WORDS = {"the": ("DT", "B-NP"), "a": ("DT", "B-NP"), "fox": ("NN", "I-NP"), "dog": ("NN", "I-NP"),
         "stocks": ("NN", "I-NP"), "jumped": ("VB", "B-VP"), "fell": ("VB", "B-VP"), "quick": ("JJ", "I-NP"),
         "lazy": ("JJ", "I-NP"), "heavy": ("JJ", "I-NP")}

#: Stage -> its crash points, in the order they are passed; stages in pipeline order.
MATRIX = {
    "ingest": ["ingest.before_commit", "ingest.after_commit"],
    "extract": ["extract.before_commit", "extract.after_commit"],
    "similarity": ["similarity.before_layer_similarity", "similarity.before_neuron_correlation",
                   "similarity.before_complete", "similarity.after_complete"],
    "cluster": ["cluster.before_clusters", "cluster.before_complete", "cluster.after_complete"],
    "probes": ["probes.before_probe_results", "probes.before_neuron_rankings", "probes.before_complete",
               "probes.after_complete"],
    "transfer": ["transfer.during_registration", "transfer.before_transfer_results", "transfer.before_complete",
                 "transfer.after_complete"],
    "browser": ["browser.before_write", "browser.between_files", "browser.after_write"],
    "finetune": ["finetune.before_register", "finetune.during_registration"],
}
#: Points passed once the stage's result is whole: a reader may already see the new result.
AFTER_COMMIT = re.compile(r"\.(after_commit|after_complete|after_write)$")
#: Tables each stage writes (``runs`` stages read through their latest completed run).
TABLES = {"ingest": [corpus_table_name(CORPUS)], "extract": ["activations"],
          "similarity": ["layer_similarity", "neuron_correlation"], "cluster": ["clusters"],
          "probes": ["probe_results", "neuron_rankings"], "transfer": ["transfer_results"]}
RUN_STAGES = ("similarity", "cluster", "probes", "transfer")
#: Stages a stage reads (run first, uninterrupted, when a cell needs them).
NEEDS = {"ingest": [], "extract": ["ingest"], "similarity": ["extract"], "cluster": ["similarity"],
         "probes": ["cluster"], "transfer": ["similarity"], "browser": ["probes"], "finetune": []}
#: Columns that name a run or a time rather than a result.
VOLATILE = {"run_id", "mlflow_run_id", "snapshot_id", "finished_ms", "created_ms", "timestamp"}


# -- the tiny world ---------------------------------------------------------------------------
def write_conll(folder: Path, sentences: int = 60) -> Path:
    """A CoNLL-2000-style corpus (``word POS chunk``) of the tiny tokenizer's words; its YAML entry."""
    rng = np.random.default_rng(0)
    words = list(WORDS)
    lines = []
    for _ in range(sentences):
        for j in rng.integers(0, len(words), int(rng.integers(3, 8))):
            lines.append(f"{words[j]} {WORDS[words[j]][0]} {WORDS[words[j]][1]}")
        lines.append("")
    (folder / CORPUS).mkdir(parents=True, exist_ok=True)
    (folder / CORPUS / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    yaml = folder / f"{CORPUS}.yaml"
    yaml.write_text("format: conll2000\nlevel: token\nlabels: [pos, chunk]\n"
                    f"splits:\n  train: {{path: {CORPUS}/train.txt}}\n", encoding="utf-8")
    return yaml


def write_sentences(folder: Path, n_train: int = 24, n_dev: int = 8) -> Path:
    """A GLUE-style sentence corpus: the label says whether "fox" is in the sentence."""
    rng = np.random.default_rng(1)
    vocab = list(WORDS)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for _ in range(n):
            words = [vocab[j] for j in rng.integers(0, len(vocab), int(rng.integers(2, 5)))]
            rows.append(f"{' '.join(words)}\t{int('fox' in words)}")
        (folder / SENTENCES).mkdir(parents=True, exist_ok=True)
        (folder / SENTENCES / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n",
                                                         encoding="utf-8")
    yaml = folder / f"{SENTENCES}.yaml"
    yaml.write_text("format: glue\nlevel: sentence\ntask: classification\nlabels: [label]\n"
                    "options: {text_a: sentence, label: label, label_set: ['0', '1']}\n"
                    f"splits: {{train: {{path: {SENTENCES}/train.tsv}}, dev: {{path: {SENTENCES}/dev.tsv}}}}\n",
                    encoding="utf-8")
    return yaml


class World:
    """One lake (its own RAYDUND_HOME) and the stages run on it, uninterrupted unless a cell says so."""

    def __init__(self, home: Path, data: Path, model_dir: str):
        self.settings = Settings.from_env({"RAYDUND_HOME": str(home), "RAYDUND_DATA_MIRROR": str(data)}).prepare()
        self.data, self.model_dir = data, model_dir
        self.done: set[str] = set()
        self.last: dict = {}

    @property
    def lake(self) -> Lake:
        return Lake(self.settings)

    def ensure(self, stage: str) -> None:
        """Run, uninterrupted, every stage ``stage`` reads that this lake has not run yet."""
        for need in NEEDS[stage]:
            if need not in self.done:
                self.ensure(need)
                self.run(need)

    def run(self, stage: str, **overrides):
        """Run one stage in this process; record it as done when it returns."""
        out = getattr(self, f"_{stage}")(**overrides)
        self.done.add(stage)
        self.last[stage] = out
        return out

    def _ingest(self):
        from raydund.corpora.job import ingest

        return ingest(str(self.data / f"{CORPUS}.yaml"), self.settings)

    def _extract(self):
        from raydund.extract.job import ExtractConfig, run_extraction

        return run_extraction(ExtractConfig(model=self.model_dir, corpus=CORPUS, split="train", threads=1),
                              self.settings, progress=False)

    def _similarity(self):
        from raydund.general.job import run_similarity
        from raydund.general.stream import SimilarityConfig

        return run_similarity(SimilarityConfig(model=MODEL, corpus=CORPUS, split="train"), self.settings,
                              progress=False)

    def _cluster(self):
        from raydund.general.job import ClusterConfig, run_clustering

        return run_clustering(ClusterConfig(model=MODEL, corpus=CORPUS, split="train", thresholds=(0.0, 0.3, 0.6)),
                              self.settings)

    def _probes(self, label: str = "pos"):
        from raydund.probes.job import ProbeConfig, run_probes

        return run_probes(ProbeConfig(model=MODEL, corpus=CORPUS, label=label, splits=SPLITS, epochs=3, lr=1e-2,
                                      control=False, cluster_split="train", precision="float32", workers=1),
                          self.settings)

    def _transfer(self):
        from raydund.transfer.job import TransferConfig, run_transfer

        return run_transfer(TransferConfig(model=MODEL, corpus=CORPUS, labels=("pos",), splits=SPLITS,
                                           stats_split="train", epochs=3, lr=2e-2, batch_size=32, timing=False,
                                           precision="float32", workers=1, cluster_thresholds=(0.0, 0.3, 0.6)),
                            self.settings)

    def _browser(self):
        from raydund.explore import BrowserConfig, build_browser

        return build_browser(self.settings, MODEL, CORPUS, "train", cfg=BrowserConfig(min_count=2, sentences=2))

    def _finetune(self, fresh: bool = False):
        from raydund.finetune import FinetuneConfig, run_finetune

        return run_finetune(FinetuneConfig(model=self.model_dir, corpus=SENTENCES, epochs=1, batch_size=8, lr=5e-3,
                                           max_length=32, threads=1, seed=0, fresh=fresh), self.settings)

    def ingest_sentences(self) -> None:
        """(Re-)ingest the sentence corpus: a new corpus snapshot, so a new fine-tuning job key."""
        from raydund.corpora.job import ingest

        ingest(str(self.data / f"{SENTENCES}.yaml"), self.settings)

    # -- what the lake holds ----------------------------------------------------------------
    def rows(self, table: str, snapshot_id: int | None = None) -> pl.DataFrame:
        """Every row of a table (at a snapshot), result columns only, in a canonical order."""
        tbl = self.lake.table(table)
        return canonical(pl.from_arrow(tbl.scan(snapshot_id=snapshot_id).to_arrow()))

    def readers_see(self, stage: str) -> dict | None:
        """What a reader of ``stage`` sees: ``{"run": id or snapshot, table: rows}``, or None."""
        if stage in RUN_STAGES:
            done = runs.completed(self.lake, stage)
            if not done:
                return None
            run = done[-1]
            return {"run": run.run_id, **{t: canonical(pl.from_arrow(runs.read(self.lake, run, t).to_arrow()))
                                          for t in TABLES[stage]}}
        if stage in ("ingest", "extract"):
            table = TABLES[stage][0]
            if table_identifier(table) not in self.lake.table_names():
                return None
            snap = self.lake.table(table).current_snapshot()
            return None if snap is None else {"run": snap.snapshot_id, table: self.rows(table)}
        if stage == "browser":
            return page(self.settings)
        return registry(self.settings)

    def snapshots(self, stage: str) -> dict[str, int | None]:
        """The current snapshot id of every table ``stage`` writes (None: no table or no snapshot yet)."""
        names = self.lake.table_names()
        out = {}
        for table in TABLES.get(stage, []):
            snap = self.lake.table(table).current_snapshot() if table_identifier(table) in names else None
            out[table] = None if snap is None else snap.snapshot_id
        return out

    def page_files(self) -> dict[str, tuple[int, int]]:
        """(inode, mtime) of each file of the browser page: an in-place write changes them."""
        folder = self.settings.report_dir(MODEL, CORPUS) / "browser"
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*")} if folder.exists() else {}

    def result(self, stage: str) -> dict:
        """The rows a stage's tables hold now (the lake's content, not only what readers see)."""
        if stage in TABLES:
            return {t: self.rows(t) for t in TABLES[stage]}
        if stage == "browser":
            return page(self.settings)
        return finetune_result(self.last["finetune"])


def canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """Result columns only, columns by name, rows sorted by every scalar column."""
    frame = frame.select(sorted(c for c in frame.columns if c not in VOLATILE))
    keys = [c for c, t in frame.schema.items() if not isinstance(t, (pl.List, pl.Array, pl.Struct, pl.Binary))]
    return frame.sort(keys, nulls_last=True) if frame.height else frame


def page(settings: Settings) -> dict | None:
    """The neuron browser as a reader finds it: None, or both files, which must agree (never half a page)."""
    folder = settings.report_dir(MODEL, CORPUS) / "browser"
    if not folder.exists():
        return None
    html = (folder / "index.html").read_text(encoding="utf-8")
    data = json.loads((folder / "data.json").read_text(encoding="utf-8"))
    embedded = re.search(r'<script type="application/json" id="raydund-data">(.*?)</script>', html, re.S).group(1)
    unescaped = embedded.replace("<\\/", "</").replace("<\\!--", "<!--")
    assert json.loads(unescaped) == data, "index.html and data.json are of two different writes"
    return {k: v for k, v in data.items() if k != "sources"}  # sources name this lake's run ids


def registry(settings: Settings) -> dict[tuple[str, str], dict]:
    """(name, version) -> tags of every registered model version of this lake's MLflow store."""
    from raydund import tracking

    client = tracking.configure(settings).MlflowClient()
    return {(m.name, str(v.version)): dict(v.tags)
            for m in client.search_registered_models() for v in client.search_model_versions(f"name='{m.name}'")}


def finetune_result(result) -> dict:
    return {"test": result.test, "dev": result.dev, "history": result.history, "task": result.task}


def assert_same(got: dict | None, want: dict | None, what: str) -> None:
    """Equal results: tables compared row by row (numbers to float32 precision), the rest exactly."""
    assert (got is None) == (want is None), f"{what}: {got is None=} {want is None=}"
    if got is None:
        return
    assert got.keys() == want.keys(), what
    for key, value in want.items():
        if key == "run":
            continue
        if isinstance(value, pl.DataFrame):
            assert_frame_equal(got[key], value, check_exact=False, rel_tol=1e-6, abs_tol=1e-7)
        else:
            assert got[key] == value, f"{what}: {key} differs"


def assert_registry_consistent(world: World) -> None:
    """No registered version of a run that never completed looks valid.

    Transfer: a ``committed`` version (and the ``current`` alias) belongs to a completed
    transfer run, and no ``pending`` version outlives its crashed run. Fine-tuning: a
    re-run leaves no version ``pending``; an interrupted one is ``failed``.
    """
    from raydund import tracking
    from raydund.transfer.job import CURRENT_ALIAS, STATUS_TAG

    completed = {r.run_id for r in runs.completed(world.lake, "transfer")}
    client = tracking.configure(world.settings).MlflowClient()
    for (name, version), tags in registry(world.settings).items():
        status = tags.get(STATUS_TAG)
        if name.startswith("raydund-transfer-"):
            if status in ("committed", "pending"):
                assert tags["raydund.run_id"] in completed, f"{name} v{version} is {status}; its run never completed"
        else:
            assert status in ("committed", "failed"), f"{name} v{version} is {status}"
    for model in client.search_registered_models():
        if CURRENT_ALIAS in (model.aliases or {}):
            current = client.get_model_version_by_alias(model.name, CURRENT_ALIAS)
            assert current.tags.get(STATUS_TAG) == "committed" and current.tags["raydund.run_id"] in completed


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worlds(tmp_path_factory, tiny_model_dir, ray_local):
    """The reference lake (every stage run once, uninterrupted, and its results) and the fault lake."""
    root = tmp_path_factory.mktemp("fault_matrix")
    data = root / "data"
    write_conll(data)
    write_sentences(data)
    model_dir = tiny_model_dir("bert")
    reference = World(root / "reference", data, model_dir)
    expected = {}
    for stage in MATRIX:
        reference.ensure(stage)
        if stage == "finetune":
            reference.ingest_sentences()
        reference.run(stage)
        expected[stage] = reference.result(stage)
        for table, rows in expected[stage].items():  # a comparison of empty tables would prove nothing
            assert not isinstance(rows, pl.DataFrame) or (rows.height > 0 and rows.width > 3), (stage, table)
    reference.run("probes", label="chunk")  # the second label, for the concurrency test
    return {"reference": reference, "expected": expected, "fault": World(root / "fault", data, model_dir)}


# -- the matrix -------------------------------------------------------------------------------
@pytest.mark.parametrize("stage,point", [(s, p) for s, points in MATRIX.items() for p in points])
def test_crash_then_rerun_equals_an_uninterrupted_run(worlds, stage, point, monkeypatch):
    world, expected = worlds["fault"], worlds["expected"][stage]
    world.ensure(stage)
    if stage == "finetune":
        world.ingest_sentences()  # a new corpus snapshot: a new job key, trained afresh
    before, snaps, files = world.readers_see(stage), world.snapshots(stage), world.page_files()

    monkeypatch.setenv(faults.CRASH_ENV, point)
    with pytest.raises(faults.InjectedCrash, match=re.escape(point)):
        world.run(stage)
    monkeypatch.delenv(faults.CRASH_ENV)

    crashed = world.readers_see(stage)
    if stage == "finetune":
        check_finetune_crash(world, point, before, crashed)
    elif stage == "browser":  # the page is whole: the previous one, or after the rename the new one
        assert_same(crashed, expected if AFTER_COMMIT.search(point) else before, f"{point}: crashed")
    elif AFTER_COMMIT.search(point):  # the stage's result is whole: readers see all of it
        assert crashed is not None and (before is None or crashed["run"] != before["run"])
        assert_same(crashed, {"run": None, **expected}, f"{point}: crashed")
    else:  # readers still see the previous complete result, or none
        assert_same(crashed, before, f"{point}: crashed")
        if before is not None:
            assert crashed["run"] == before["run"], f"{point}: readers moved to an incomplete run"
        # not vacuous: the tables before the point were written (a half result exists), the rest not
        written = {t for t, snap in world.snapshots(stage).items() if snap != snaps[t]}
        assert written == written_before(stage, point), f"{point}: tables written before the crash"
    if stage == "browser" and not AFTER_COMMIT.search(point):
        assert world.page_files() == files, f"{point}: the page's files were touched before the rename"

    world.run(stage)  # the plain re-run
    assert_same(world.result(stage), expected, f"{point}: re-run")
    if stage in RUN_STAGES:  # readers see the re-run, whole
        assert_same(world.readers_see(stage), {"run": None, **expected}, f"{point}: readers after the re-run")
    if stage == "browser":
        leftovers = [p.name for p in world.settings.report_dir(MODEL, CORPUS).iterdir() if p.name.startswith(".")]
        assert leftovers == []
    assert_registry_consistent(world)


def written_before(stage: str, point: str) -> set[str]:
    """The tables a run of ``stage`` has committed when it reaches ``point`` (pipeline order)."""
    tables = TABLES.get(stage, [])
    name = point.partition(".")[2]
    if name in ("before_commit", "during_registration"):
        return set()
    if name == "before_complete":
        return set(tables)
    first = tables.index(name.removeprefix("before_"))
    return set(tables[:first])


def check_finetune_crash(world: World, point: str, before: dict, crashed: dict) -> None:
    """A crash before or during registration leaves no version that looks valid."""
    from raydund.finetune import STATUS_TAG

    new = {k: v for k, v in crashed.items() if k not in before}
    assert {k: v for k, v in crashed.items() if k in before} == before  # earlier versions untouched
    if point == "finetune.before_register":
        assert new == {}
    else:  # created, then the crash: pending, never committed, and no re-run returns it
        assert len(new) == 1 and next(iter(new.values())).get(STATUS_TAG) == "pending"


def test_vacuum_after_the_matrix_leaves_only_referenced_files(worlds):
    """``raydund vacuum`` (retention 0) on the crashed-and-re-run lake: every file left is referenced."""
    from raydund.lake.vacuum import STAGING, fs_path, referenced_files, vacuum

    world, expected = worlds["fault"], worlds["expected"]
    for stage in TABLES:  # the cells leave every stage run; a -k selection may not have
        if stage not in world.done:
            world.ensure(stage)
            world.run(stage)
    seen_before = {stage: world.readers_see(stage) for stage in TABLES}
    vacuum(world.settings, retention=timedelta(0), keep_last=1, dry_run=False)

    lake = world.lake
    referenced = set()
    for ident in lake.table_names():
        referenced |= referenced_files(lake.catalog.load_table(ident))
    warehouse = Path(fs_path(world.settings.warehouse))
    files = {str(p) for p in warehouse.rglob("*") if p.is_file()}
    staging = Path(fs_path(lake.activations().location())) / STAGING
    generations = {p for p in staging.iterdir()} if staging.exists() else set()
    kept_generations = {g for g in generations if any(str(f).startswith(f"{g}/") for f in referenced)}
    unreferenced = {f for f in files - referenced if not any(f.startswith(f"{g}/") for g in kept_generations)}
    assert unreferenced == set()
    assert not generations - kept_generations, "an unreferenced staging generation survived"
    for stage in TABLES:
        assert_same(world.readers_see(stage), seen_before[stage], f"{stage} after vacuum")
        assert_same(world.result(stage), expected[stage], f"{stage} after vacuum")


# -- concurrency ------------------------------------------------------------------------------
def test_two_probe_jobs_and_a_transfer_at_once_all_land(worlds):
    """probe(pos), probe(chunk) and transfer(pos) write probe_results/neuron_rankings/transfer_results at once.

    Their scopes are emptied first, so every row must come from the concurrent jobs; the
    tables then equal those the sequential runs of the reference lake wrote (rows compared).
    """
    world = worlds["reference"]
    sequential = {t: world.rows(t) for t in ("probe_results", "neuron_rankings", "transfer_results")}
    lake = world.lake
    for table, partitions in (("probe_results", ("model", "corpus")), ("neuron_rankings", ("model", "corpus")),
                              ("transfer_results", ("model", "corpus"))):
        empty = pa.Table.from_batches([], schema=lake.table(table).schema().as_arrow())
        lake.replace(table, empty, partitions, {"model": MODEL, "corpus": CORPUS})
        assert world.rows(table).height == 0

    barrier, errors, outs = threading.Barrier(3), [], {}

    def job(name, fn):
        try:
            barrier.wait()
            outs[name] = fn()
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            errors.append((name, exc))

    threads = [threading.Thread(target=job, args=("pos", lambda: world._probes("pos"))),
               threading.Thread(target=job, args=("chunk", lambda: world._probes("chunk"))),
               threading.Thread(target=job, args=("transfer", world._transfer))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for table, rows in sequential.items():
        assert_same({"rows": world.rows(table)}, {"rows": rows}, f"{table} after concurrent jobs")
    # each job's own run is what readers of its scope see, whole
    for label in ("pos", "chunk"):
        run = runs.latest(lake, "probes", MODEL, CORPUS, "probe_results", task=label)
        assert run.run_id == outs[label]["raydund_run_id"]
        got = canonical(pl.from_arrow(runs.read(lake, run, "probe_results").to_arrow()))
        assert_same({"rows": got}, {"rows": sequential["probe_results"].filter(pl.col("task") == label)}, label)
    run = runs.latest(lake, "transfer", MODEL, CORPUS, "transfer_results", task="pos")
    assert run.run_id == outs["transfer"]["raydund_run_id"]
    assert_registry_consistent(world)


def test_the_matrix_is_what_reliability_md_reports():
    """RELIABILITY.md lists every cell this module runs."""
    text = (Path(__file__).resolve().parents[2] / "RELIABILITY.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(\w+\.\w+)`", text))
    assert {p for points in MATRIX.values() for p in points} <= listed

