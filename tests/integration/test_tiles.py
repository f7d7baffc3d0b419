"""The out-of-core (tiled) similarity pass on real Ray and Iceberg, against the in-memory pass and NumPy.

Planted activations go into the lake in the extraction layout; tiles of 5 neurons cut
across the layers' boundaries (layers are 6 wide), so every tile code path is used.
"""

import dataclasses

import numpy as np
import polars as pl
import pytest

from raydund.general import tile_reads
from raydund.general import tiles as T
from raydund.general.job import correlation_run, run_similarity
from raydund.general.stream import SimilarityConfig
from raydund.general.tiles_job import compute_tiles
from raydund.lake import Lake
from tests.integration.test_general_redundancy import LAYERS, WIDTH, planted_activations, write_into_lake

pytestmark = pytest.mark.usefixtures("ray_local")


def _cfg(**kw):
    return SimilarityConfig(model="m", corpus="c", split="dev", chunk_rows=64, **kw)


@pytest.mark.slow
def test_tiled_pass_equals_in_memory_pass_and_numpy(settings):
    lake = Lake(settings)
    Z = write_into_lake(lake, planted_activations())
    full = run_similarity(_cfg(tiles="off"), settings, progress=False)["similarity"]
    out = run_similarity(_cfg(tiles="on", tile_neurons=5), settings, progress=False)
    tiled = out["similarity"]
    assert tiled.r is None and out["tiles"] == 15 and out["tiles_computed"] == 15  # 5 blocks: 15 tiles
    # time per stage and per tile task (MLflow metrics), the products a part of each task
    assert out["seconds"] >= out["seconds_tiles"] > out["tile_seconds_mean"] > out["tile_product_seconds_mean"] > 0
    np.testing.assert_allclose(tiled.cka, full.cka, atol=1e-10)
    np.testing.assert_allclose(tiled.cka_debiased, full.cka_debiased, atol=1e-10)
    assert tiled.constant.tolist() == full.constant.tolist()
    run = correlation_run(lake, "m", "c", "dev")
    assert tile_reads.is_tiled(run)
    index = tile_reads.tile_index(lake, run)
    r = tile_reads.assemble(index)
    live = ~full.constant
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.corrcoef(Z.T)
    np.testing.assert_allclose(r[np.ix_(live, live)], ref[np.ix_(live, live)], atol=1e-6)
    np.testing.assert_allclose(r[np.ix_(live, live)], full.r[np.ix_(live, live)], atol=1e-6)
    assert np.isnan(r[~live]).all()
    from raydund.general.job import load_correlations

    np.testing.assert_array_equal(load_correlations(lake, "m", "c", "dev", dtype=np.float32)[0], r)  # the old reader
    # reads by neuron and by layer block open only the tiles they need, and agree with r
    np.testing.assert_array_equal(tile_reads.neuron_row(index, 7), r[7])
    stats = tile_reads.neuron_statistics(lake, run)
    np.testing.assert_array_equal(tile_reads.layer_block(index, stats, 2, 1),
                                  r[2 * WIDTH : 3 * WIDTH, WIDTH : 2 * WIDTH])
    np.testing.assert_allclose(stats["mean"].to_numpy(), Z.mean(0), rtol=1e-9)


def test_threshold_query_returns_exactly_the_numpy_pairs(settings):
    lake = Lake(settings)
    write_into_lake(lake, planted_activations())
    run_similarity(_cfg(tiles="on", tile_neurons=4), settings, progress=False)
    index = tile_reads.tile_index(lake, correlation_run(lake, "m", "c", "dev"))
    r = tile_reads.assemble(index)
    for c in (0.05, 0.5, 0.9):
        got = tile_reads.pairs_above(index, c)
        i, j = np.nonzero(np.triu(np.abs(np.nan_to_num(r)) >= c, 1))
        assert got.select("i", "j").rows() == list(zip(i.tolist(), j.tolist()))
        np.testing.assert_array_equal(got["r"].to_numpy(), r[i, j])
    skipped = index.filter(pl.col("max_abs_r") < 0.9).height
    assert skipped > 0  # the strict query never opens those tiles


def test_killed_generation_redoes_only_missing_tiles(settings):
    lake = Lake(settings)
    write_into_lake(lake, planted_activations())
    snap = lake.activations().current_snapshot().snapshot_id
    cfg = _cfg(tiles="on")
    first = compute_tiles(lake, cfg, settings, snap, block=7, progress=False)
    assert first.computed == 10  # 24 neurons in 4 blocks: 10 tiles
    fs, root = T.pafs.FileSystem.from_uri(first.root)
    for i, j in ((0, 2), (3, 3)):  # as if the job died before these tiles finished
        fs.delete_file(f"{root}/{T.DONE}/{T.tile_name(i, j)}.json")
    # the re-run's two tiles take the torch products (the GPU code path, here on the CPU)
    again = compute_tiles(lake, dataclasses.replace(cfg, device="torch:cpu"), settings, snap, block=7,
                          progress=False)
    assert again.computed == 2
    for a, b in zip(first.records, again.records):
        assert (a["row"], a["col"]) == (b["row"], b["col"])
        np.testing.assert_allclose(a["hsic"], b["hsic"], rtol=1e-10)
        np.testing.assert_allclose(a["max_abs_r"], b["max_abs_r"], rtol=1e-6)
    assert LAYERS * WIDTH == 24


@pytest.mark.slow
def test_clustering_from_tiles_in_memory_and_out_of_core(settings):
    """A tiled run clusters exactly like an in-memory run, and out of core (forced) with the same clusters."""
    from sklearn.metrics import adjusted_rand_score

    from raydund.general.job import ClusterConfig, run_clustering

    lake = Lake(settings)
    write_into_lake(lake, planted_activations())
    run_similarity(_cfg(tiles="off"), settings, progress=False)
    ref = run_clustering(ClusterConfig(model="m", corpus="c", split="dev"), settings)
    run_similarity(_cfg(tiles="on", tile_neurons=5), settings, progress=False)
    same = run_clustering(ClusterConfig(model="m", corpus="c", split="dev", out_of_core="off"), settings)
    for a, b in zip(ref.labels_, same.labels_):
        np.testing.assert_array_equal(a, b)
    ooc = run_clustering(ClusterConfig(model="m", corpus="c", split="dev", out_of_core="on", max_exact=3), settings)
    np.testing.assert_array_equal(ooc.neurons_, ref.neurons_)
    for a, b in zip(ref.labels_, ooc.labels_):
        assert adjusted_rand_score(a, b) == 1.0
    rows = lake.scan("clusters").collect()
    assert rows.height == len(ooc.neurons_) * len(ooc.thresholds)
    # the continuation's group sums from the tiles equal those from the assembled r
    from raydund.general.sparse_cluster import DenseSource, TileSource

    index = tile_reads.tile_index(lake, correlation_run(lake, "m", "c", "dev"))
    r = tile_reads.assemble(index)
    dense, tiled = DenseSource(r), TileSource(index, np.isnan(np.diag(r)))
    members = np.flatnonzero(~dense.constant)[::2]
    groups = np.random.default_rng(0).integers(0, 4, len(members))
    np.testing.assert_allclose(tiled.group_sums(members, groups, 4), dense.group_sums(members, groups, 4),
                               rtol=1e-12, atol=1e-9)


def test_vacuum_reclaims_a_tile_generation_once_no_retained_snapshot_names_it(settings):
    from datetime import timedelta
    from pathlib import Path

    from raydund.lake.vacuum import fs_path, vacuum

    lake = Lake(settings)
    write_into_lake(lake, planted_activations())

    def generation():
        paths = lake.scan("neuron_correlation_tiles").select("path").collect()["path"].to_list()
        folders = {Path(fs_path(p)).parent for p in paths}
        assert len(folders) == 1
        return folders.pop()

    run_similarity(_cfg(tiles="on", tile_neurons=5), settings, progress=False)
    old = generation()
    old_files = {p for p in old.rglob("*") if p.is_file()}
    assert any(p.suffix == ".json" for p in old_files)  # the _done markers belong to the generation
    run_similarity(_cfg(tiles="on", tile_neurons=7), settings, progress=False)  # a new generation replaces it
    new = generation()
    new_files = {p for p in new.rglob("*") if p.is_file()}
    assert new != old
    stray = new.parent / "killed-run" / "tile-0-0.parquet"  # a generation no snapshot ever named
    stray.parent.mkdir()
    stray.write_bytes(b"x")

    kept = vacuum(settings, retention=timedelta(0), keep_last=5, dry_run=False)  # the old index is retained
    assert all(p.is_file() for p in old_files | new_files)
    assert kept.files == [str(stray)]
    gone = vacuum(settings, retention=timedelta(0), keep_last=1, dry_run=False)
    assert {str(p) for p in old_files} <= set(gone.files)
    assert not any(p.exists() for p in old_files) and all(p.is_file() for p in new_files)
    index = tile_reads.tile_index(lake, correlation_run(lake, "m", "c", "dev"))
    assert tile_reads.assemble(index).shape == (24, 24)  # the current run still reads every tile
