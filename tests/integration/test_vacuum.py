"""Re-extraction writes a new generation and deletes nothing; `raydund vacuum` reclaims what nothing references."""

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from raydund.errors import UserError
from raydund.extract import job as job_module
from raydund.extract.job import ExtractConfig, run_extraction
from raydund.lake import Lake, runs
from raydund.lake.vacuum import fs_path, referenced_files, vacuum

VOCAB = ["the", "quick", "brown", "fox", "jumped", "over", "lazy", "dog", ",", "."]


@pytest.fixture
def lake(settings):
    lake = Lake(settings)
    rng = np.random.default_rng(0)
    sentences = [[VOCAB[j] for j in rng.integers(0, len(VOCAB), int(rng.integers(2, 8)))] for _ in range(8)]
    lake.write_corpus("toy", {"train": pa.table({"sentence_id": pa.array(range(8), pa.int64()), "words": sentences})})
    return lake


def extract(settings, model_dir, **kwargs):
    cfg = ExtractConfig(model=model_dir, corpus="toy", split="train", shard_words=20, **kwargs)
    return run_extraction(cfg, settings, progress=False)


def rows(lake):
    return lake.scan("activations").sort("layer", "sentence_id", "word_id").collect()


def staging(lake) -> Path:
    return Path(fs_path(lake.activations().location())) / "data" / "staging"


def files_under(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.is_file()}


def referenced_by_current(lake) -> set[str]:
    tbl = lake.activations()
    current = tbl.current_snapshot().snapshot_id
    return referenced_files(tbl, exclude={s.snapshot_id for s in tbl.snapshots()} - {current})


def age(paths, days: float) -> None:
    stamp = time.time() - days * 86400
    for path in paths:
        os.utime(path, (stamp, stamp))


# -- extraction generations ----------------------------------------------------------------
@pytest.mark.usefixtures("ray_local")
def test_failed_fresh_rerun_leaves_the_table_whole(settings, lake, tiny_model_dir, monkeypatch):
    model_dir = tiny_model_dir("bert")
    extract(settings, model_dir)
    before = rows(lake)
    gens = sorted(p.name for p in staging(lake).iterdir())

    # a plain re-run of a finished job writes nothing new: same generation, same files committed again
    again = extract(settings, model_dir)
    assert sorted(p.name for p in staging(lake).iterdir()) == gens and len(gens) == 1
    assert again.snapshot_id == lake.activations().current_snapshot().snapshot_id
    assert rows(lake).equals(before)

    def pool_dies(*args, **kwargs):
        raise KeyboardInterrupt  # the fresh re-run is killed before it wrote a single shard

    monkeypatch.setattr(job_module, "run_shards", pool_dies)  # in process or on a pool alike
    with pytest.raises(KeyboardInterrupt):
        extract(settings, model_dir, fresh=True)
    monkeypatch.undo()
    assert all(Path(p).is_file() for p in referenced_by_current(lake)), "no file the table references is gone"
    assert rows(lake).equals(before)

    def commit_fails(*args, **kwargs):
        raise RuntimeError("catalog went away")

    monkeypatch.setattr(Lake, "commit_activation_files", commit_fails)
    with pytest.raises(RuntimeError, match="catalog went away"):
        extract(settings, model_dir, fresh=True)
    monkeypatch.undo()
    assert all(Path(p).is_file() for p in referenced_by_current(lake))
    assert rows(lake).equals(before)
    assert len(list(staging(lake).iterdir())) == 3, "each fresh run wrote a new generation beside the live one"


# -- vacuum ----------------------------------------------------------------------------
@pytest.mark.slow  # ~10 s: two extractions
@pytest.mark.usefixtures("ray_local")
def test_vacuum_reclaims_the_old_generation_only(settings, lake, tiny_model_dir):
    model_dir = tiny_model_dir("bert")
    extract(settings, model_dir, limit=6)
    old_gen = files_under(next(staging(lake).iterdir()))
    extract(settings, model_dir, limit=8)  # another job key: a second generation
    current = rows(lake)
    live = referenced_by_current(lake)
    assert not old_gen & live

    dry = vacuum(settings, retention=timedelta(0), keep_last=1)
    assert dry.dry_run and dry.expired["raydund.activations"]
    assert all(Path(p).is_file() for p in dry.files), "a dry run deletes nothing"
    sizes = {p: Path(p).stat().st_size for p in dry.files}

    done = vacuum(settings, retention=timedelta(0), keep_last=1, dry_run=False)
    assert done.files == dry.files and done.bytes == dry.bytes == sum(sizes.values())
    assert done.expired == dry.expired
    assert not any(Path(p).exists() for p in done.files)
    staged = {p for p in done.files if p.startswith(str(staging(lake)))}
    assert staged == old_gen, "exactly the old generation, markers included"
    assert all(Path(p).is_file() for p in live)
    assert rows(lake).equals(current)
    tbl = lake.activations()
    assert [s.snapshot_id for s in tbl.snapshots()] == [tbl.current_snapshot().snapshot_id]
    assert vacuum(settings, retention=timedelta(0), keep_last=1).files == [], "nothing left to reclaim"


def test_recent_unreferenced_files_are_kept(settings, lake):
    table_dir = Path(fs_path(lake.activations().location()))
    stale = table_dir / "data" / "staging" / "aaaa-g1"
    running = table_dir / "data" / "staging" / "bbbb-g1"
    for gen in (stale, running):
        (gen / "shard-000000").mkdir(parents=True)
        (gen / "shard-000000" / "layer-000.parquet").write_bytes(b"x" * 100)
        (gen / "_lease").write_text("t")
    age(files_under(stale), days=10)
    age([running / "shard-000000" / "layer-000.parquet"], days=10)  # an old shard of a job resumed just now
    stray = table_dir / "data" / "stray.parquet"
    stray.write_bytes(b"y" * 7)

    expected = files_under(stale)
    report = vacuum(settings, dry_run=False)  # 7 days
    assert set(report.files) == expected and report.bytes == 101
    assert not stale.joinpath("_lease").exists()
    assert files_under(running) == {str(running / "shard-000000" / "layer-000.parquet"), str(running / "_lease")}
    assert stray.is_file() and report.kept_recent == 2


def test_protected_snapshot_is_kept(settings, lake, monkeypatch):
    def write(value):
        return lake.replace("probe_results", pa.table({"model": ["m"], "corpus": ["c"], "value": [value]}),
                            ("model", "corpus"), {"model": "m", "corpus": "c"})

    first = write(1.0)
    tbl = lake.table("probe_results")
    first_files = referenced_files(tbl)
    write(2.0)
    monkeypatch.setattr(runs, "protected_snapshots", lambda _lake: {"raydund.probe_results": {first}})
    report = vacuum(settings, retention=timedelta(0), keep_last=1, dry_run=False)
    assert first not in report.expired.get("raydund.probe_results", [])  # the overwrite's own delete snapshot may go
    assert first in {s.snapshot_id for s in lake.table("probe_results").snapshots()}
    assert all(Path(p).is_file() for p in first_files)
    assert lake.scan("probe_results", snapshot_id=first).select("value").collect().item() == 1.0

    monkeypatch.setattr(runs, "protected_snapshots", lambda _lake: {})
    report = vacuum(settings, retention=timedelta(0), keep_last=1, dry_run=False)
    assert report.expired["raydund.probe_results"] == [first]
    data = {p for p in first_files if p.endswith(".parquet") and "/data/" in p}
    assert data and data <= set(report.files) and not any(Path(p).exists() for p in data)


def test_snapshots_within_retention_or_keep_last_stay(settings, lake):
    for value in (1.0, 2.0, 3.0):
        lake.replace("probe_results", pa.table({"model": ["m"], "value": [value]}), ("model",), {"model": "m"})
    ids = [s.snapshot_id for s in lake.table("probe_results").snapshots()]
    assert vacuum(settings, dry_run=False).expired == {}, "younger than 7 days"
    later = datetime.now(UTC) + timedelta(days=30)
    report = vacuum(settings, keep_last=2, dry_run=False, now=later)
    assert report.expired["raydund.probe_results"] == ids[:-2]  # an overwrite is a delete + an append snapshot
    assert [s.snapshot_id for s in lake.table("probe_results").snapshots()] == ids[-2:]


@pytest.mark.parametrize("kwargs,message", [
    ({"retention": timedelta(days=-1)}, "retention must not be negative"),
    ({"keep_last": 0}, "keep_last must be at least 1"),
])
def test_bad_options_are_user_errors(settings, kwargs, message):
    with pytest.raises(UserError, match=message):
        vacuum(settings, **kwargs)


def test_cli_on_a_missing_lake_creates_nothing(tmp_path, monkeypatch, capsys):
    from raydund.cli import main

    home = tmp_path / "nohome"
    monkeypatch.setenv("RAYDUND_HOME", str(home))
    for name in ("RAYDUND_CATALOG_URI", "RAYDUND_WAREHOUSE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["vacuum"]) == 0
    out = capsys.readouterr().out
    assert "the lake is empty" in out and str(home / "catalog.db") in out
    assert not home.exists()
    assert main(["vacuum", "--keep-last", "0"]) == 2 and not home.exists()


def test_cli_dry_run_then_yes(settings, lake, monkeypatch, capsys):
    from raydund.cli import main

    for value in (1.0, 2.0):
        lake.replace("probe_results", pa.table({"model": ["m"], "value": [value]}), ("model",), {"model": "m"})
    monkeypatch.setenv("RAYDUND_HOME", str(settings.home))
    monkeypatch.setenv("RAYDUND_CATALOG_URI", settings.catalog_uri)
    monkeypatch.setenv("RAYDUND_WAREHOUSE", settings.warehouse)
    assert main(["vacuum", "--retention-days", "0", "--keep-last", "1"]) == 0
    out = capsys.readouterr().out
    assert "would expire 2 snapshots" in out and "dry run: re-run with --yes to delete" in out
    assert "bytes to reclaim" in out
    assert len(lake.table("probe_results").snapshots()) == 3  # append, then the overwrite's delete + append
    assert main(["vacuum", "--retention-days", "0", "--keep-last", "1", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "expired 2 snapshots" in out and "bytes reclaimed" in out and "dry run" not in out
    assert len(lake.table("probe_results").snapshots()) == 1
    assert pl.DataFrame(lake.table("probe_results").scan().to_arrow())["value"].to_list() == [2.0]
