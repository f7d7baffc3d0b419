"""Memory plans against the arrays they describe, the refusal before a stage starts, the
memory-lean paths (packed transfer, in-place r, blockwise condensed distances) against
NumPy references, and the products' device selection."""

import numpy as np
import pytest
from scipy.spatial.distance import squareform

from raydund import memory
from raydund.errors import UserError
from raydund.general import stream as stats_job
from raydund.general.clustering import condensed_distance
from raydund.general.moments import Moments, add_block_rows, add_packed_lower, pack_upper, symmetrize
from raydund.general.similarity import similarity

WIDTHS = (16, 16, 16, 16)


def data(T=500, seed=0):
    rng = np.random.default_rng(seed)
    N = sum(WIDTHS)
    Z = rng.standard_normal((T, N)) @ (np.eye(N) + 0.2 * rng.standard_normal((N, N))) + rng.uniform(-5, 50, N)
    Z[:, 3] = 1.5  # constant
    return Z


# -- the plan's numbers are the arrays' sizes ------------------------------------------------------
def test_plan_sizes_match_the_arrays_they_describe():
    N, L, T = sum(WIDTHS), len(WIDTHS), 500
    Z = data(T)
    m = Moments.empty(WIDTHS, Z[:64].mean(0))
    acc = {}
    D = np.asfortranarray(Z - m.shift)
    add_block_rows(acc, D, m.offsets, list(range(L)), L)
    packed = pack_upper(acc["all"])
    plan = memory.similarity_plan(N, L, T, workers=1)
    # a dsyrk target takes only its upper triangle's pages (at most one more page per column)
    assert packed.nbytes <= plan.phases["accumulate"]["accumulators"] <= packed.nbytes + N * 4096
    assert plan.phases["accumulate"]["chunk buffers (float64)"] == np.empty((min(T, 4096), N)).nbytes
    assert plan.phases["transfer"]["driver G"] == m.G.nbytes
    assert plan.phases["transfer"]["accumulators not yet shipped"] == 0  # one worker drains into G
    assert plan.phases["statistics"]["G -> r (N x N float64)"] == m.G.nbytes
    sim = similarity(m.update(Z))
    r = sim.r.astype(np.float32)
    cplan = memory.clustering_plan(N)
    assert cplan.phases["distances"]["r float32"] == r.nbytes
    assert cplan.phases["distances"]["condensed distances float64"] == condensed_distance(
        np.nan_to_num(sim.r, nan=0.0)).nbytes
    X = Z.astype(np.float32)
    pplan = memory.probe_plan(N, L, tokens=400, eval_tokens=100, classes=5, object_store=True)
    assert pplan.phases["train"]["X train/dev/test float32"] == X.nbytes
    assert pplan.phases["put"]["X on the driver"] == pplan.phases["put"]["X in the object store"] == X.nbytes
    # block rows split over groups: the largest group's accumulator, as balance_blocks assigns them
    for groups in (2, 3):
        off = m.offsets
        held = [sum(WIDTHS[l] * (N - off[l]) * 8 for l in g) for g in stats_job.balance_blocks(L, groups)]
        assert memory.block_row_bytes(N, L, groups) == max(held)


def test_bert_large_fits_one_worker_not_two_in_20_gb():
    N, L = 25 * 1024, 25
    limit = int(20e9)
    one = memory.similarity_plan(N, L, 20_000, workers=1)
    two = memory.similarity_plan(N, L, 20_000, workers=2)
    # one accumulator of block rows (the upper block triangle, ~half of N x N), shipped row by row
    acc = sum(1024 * (N - 1024 * l) * 8 for l in range(L))
    assert one.phases["accumulate"]["accumulators"] == acc
    assert two.phases["transfer"]["accumulators not yet shipped"] == acc
    assert one.peak < 10e9 and two.peak >= one.peak + acc
    assert memory.fit_workers(N, L, 20_000, wanted=2, limit=limit) == 1
    assert memory.fit_workers(9984, 13, 150_000, wanted=2, limit=limit) == 2  # paper scale keeps both
    assert memory.clustering_plan(N, L).peak < 8e9  # r float32 + condensed float64 + blocks
    assert abs(memory.condensed_bytes(N) / 1e9 - 2.62) < 0.01


def test_over_the_limit_is_refused_with_the_numbers(monkeypatch):
    monkeypatch.setenv("RAYDUND_MEMORY_LIMIT_GB", "0.5")
    with pytest.raises(UserError) as err:
        memory.check(memory.similarity_plan(25_600, 25, 20_000))
    line = str(err.value)
    assert line.startswith("stage similarity needs ~")
    assert "limit 0.5 GB (RAYDUND_MEMORY_LIMIT_GB or detected RAM - headroom)" in line
    assert "neurons=25600" in line and "G -> r (N x N float64) 5.24" in line
    monkeypatch.setenv("RAYDUND_MEMORY_LIMIT_GB", "abc")
    with pytest.raises(UserError, match="not a number"):
        memory.memory_limit()
    monkeypatch.delenv("RAYDUND_MEMORY_LIMIT_GB")
    ram = memory.total_ram()
    assert 0 < memory.memory_limit() <= ram - memory.HEADROOM_MIN


# -- the memory-lean paths equal the references ---------------------------------------------------
def test_packed_transfer_and_symmetrize_rebuild_the_matrix():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((37, 37))
    G = np.zeros((37, 37))
    add_packed_lower(G, pack_upper(np.asfortranarray(A)))
    add_packed_lower(G, pack_upper(A))  # two parts add
    symmetrize(G, "lower", block=8)
    upper = np.triu(2 * A) + np.triu(2 * A, 1).T
    np.testing.assert_array_equal(G, upper)
    B = A.copy()
    symmetrize(B, "upper", block=5)
    np.testing.assert_array_equal(B, np.triu(A) + np.triu(A, 1).T)


def test_pieces_of_the_upper_triangle_fold_into_g_and_leave_the_worker():
    from raydund.general.moments import add_lower_piece, fortran_zeros, upper_pieces

    rng = np.random.default_rng(3)
    N = 1024  # a column is 8 KiB: two whole pages, released once the column is packed
    A = fortran_zeros((N, N))
    assert A.flags.f_contiguous and A.flags.writeable and not A.any()
    ref = rng.standard_normal((N, N))
    A[...] = ref
    G = np.zeros((N, N))
    spans = []
    for a, b, packed in upper_pieces(A, piece_bytes=256 * 1024):
        assert packed.nbytes <= 256 * 1024 and not A[:, a:b].any()  # the piece's columns are given back
        add_lower_piece(G, a, packed)
        spans.append((a, b))
    assert spans[0][0] == 0 and spans[-1][1] == N and all(p[1] == q[0] for p, q in zip(spans, spans[1:]))
    symmetrize(G, "lower", block=100)
    np.testing.assert_array_equal(G, np.triu(ref) + np.triu(ref, 1).T)
    small = np.asfortranarray(ref[:37, :37])  # any array: packed the same way, nothing released
    G = np.zeros((37, 37))
    for a, _, packed in upper_pieces(small, piece_bytes=100):
        add_lower_piece(G, a, packed)
    add_packed_lower(G, pack_upper(small))
    np.testing.assert_array_equal(symmetrize(G, "lower"), 2 * (np.triu(small) + np.triu(small, 1).T))


def test_chunk_buffer_fills_across_batches_and_compacts_the_last_chunk():
    from raydund.general.stream import ChunkBuffer

    rng = np.random.default_rng(4)
    Z = [rng.standard_normal((n, sum(WIDTHS))).astype(np.float32) + 30 for n in (5, 13, 1, 9, 20)]
    off = np.concatenate([[0], np.cumsum(WIDTHS)])
    shift = rng.uniform(25, 35, off[-1])
    seen = []

    def flush(D):
        assert D.flags.f_contiguous and D.dtype == np.float64
        seen.append((len(D), D.T @ D, D.sum(axis=0)))

    buffer = ChunkBuffer(8, shift, off, flush)
    for batch in Z:
        buffer.add([batch[:, off[l] : off[l + 1]] for l in range(len(WIDTHS))])
    buffer.finish()
    D = np.vstack(Z).astype(np.float64) - shift
    assert [k for k, _, _ in seen] == [8] * 6  # 48 rows: six full chunks, whatever the batches
    np.testing.assert_allclose(sum(p for _, p, _ in seen), D.T @ D, rtol=1e-12)
    np.testing.assert_allclose(sum(s for _, _, s in seen), D.sum(axis=0), rtol=1e-12, atol=1e-9)
    buffer.add([Z[0][:3, off[l] : off[l + 1]] for l in range(len(WIDTHS))])
    buffer.finish()  # a partial chunk: compacted in place to [3 x N]
    assert seen[-1][0] == 3
    np.testing.assert_allclose(seen[-1][1], D[:3].T @ D[:3], rtol=1e-12)


def test_augmented_chunk_sums_n_s_q_u_in_the_same_dsyrk():
    from raydund.general.moments import augment_extras, split_augmented

    Z = data()
    ref = Moments.empty(WIDTHS, Z[:50].mean(0))
    ref.update(Z)  # extras the plain way: einsum, column sums, q^T D
    N, L, off = sum(WIDTHS), len(WIDTHS), ref.offsets
    acc = {}
    for s in range(0, len(Z), 128):
        D = np.empty((len(Z[s : s + 128]), N + L + 1), order="F")
        D[:, :N] = Z[s : s + 128] - ref.shift
        augment_extras(D, off)
        add_block_rows(acc, D, off, list(range(L)), L)
    got = split_augmented(acc["all"], N, L)
    assert got["n"] == ref.n == len(Z)
    for name in ("s", "Q", "U"):
        np.testing.assert_allclose(got[name], getattr(ref, name), rtol=1e-12, atol=1e-8)
    np.testing.assert_allclose(np.triu(acc["all"][:N, :N]), np.triu(ref.G), rtol=1e-12, atol=1e-8)


@pytest.mark.parametrize("device", ["cpu", "torch:cpu"])
def test_worker_task_streams_shards_and_ships_pieces_that_fold_into_the_moments(tmp_path, device):
    """The Ray task's body, run in process: two shards in the extraction layout, chunks that
    straddle them, a state in many pieces; the GPU code path (torch) run on the CPU too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raydund.extract.actor import vectors_column

    Z = data(T=300)
    L, off = len(WIDTHS), np.concatenate([[0], np.cumsum(WIDTHS)])
    slices = []
    for shard, (a, b) in enumerate(((0, 170), (170, 300))):
        paths = {}
        for layer in range(L):
            vec, _ = vectors_column(Z[a:b, off[layer] : off[layer + 1]].astype(np.float32), "float32")
            path = tmp_path / f"shard-{shard}" / f"layer-{layer}.parquet"
            path.parent.mkdir(exist_ok=True)
            pq.write_table(pa.table({"sentence_id": np.arange(a, b) // 5, "word_id": np.arange(a, b) % 5,
                                     "dtype": ["float32"] * (b - a), "vector": vec,
                                     "vector_bits": pa.nulls(b - a, pa.binary())}), path)
            paths[layer] = f"file://{path}"
        slices.append(paths)
    Z32 = Z.astype(np.float32).astype(np.float64)
    shift = stats_job.first_mean(slices[0], 64)
    np.testing.assert_allclose(shift, Z32[:64].mean(0), rtol=1e-12)
    ref = Moments.empty(WIDTHS, shift).update(Z32)
    got = Moments.empty(WIDTHS, shift)
    parts = list(stats_job.worker_task(slices, shift, list(range(L)), True, False, 64, device, 1, piece_bytes=512))
    assert len(parts) > 3 and all(p["packed"].nbytes <= 512 for p in parts[1:])
    for part in parts:
        stats_job._fold(got, part, got.offsets)
    symmetrize(got.G, "lower")
    assert got.n == ref.n == 300
    np.testing.assert_allclose(got.G, ref.full_G(), rtol=1e-12, atol=1e-8)
    for name in ("s", "Q", "U"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-12, atol=1e-8)


def test_inplace_similarity_equals_numpy_and_the_copying_path():
    Z = data()
    m = Moments.empty(WIDTHS, Z[:50].mean(0))
    for s in range(0, len(Z), 128):
        m.update(Z[s : s + 128])
    ref = similarity(m)
    G_before = m.G.copy()
    np.testing.assert_array_equal(m.G, G_before)  # the default path leaves the moments alone
    sim = similarity(m, inplace=True, block=7)
    assert sim.r is m.G  # consumed: G became r
    np.testing.assert_array_equal(sim.r, ref.r)
    np.testing.assert_array_equal(sim.cka, ref.cka)
    np.testing.assert_array_equal(sim.cka_debiased, ref.cka_debiased)
    R = np.corrcoef(Z.T)
    keep = ~sim.constant
    assert sim.constant[3] and sim.constant.sum() == 1
    np.testing.assert_allclose(sim.r[np.ix_(keep, keep)], R[np.ix_(keep, keep)], atol=1e-9)


def test_condensed_distance_blockwise_equals_squareform():
    rng = np.random.default_rng(2)
    r = np.corrcoef(rng.standard_normal((40, 200)) + rng.standard_normal((1, 200)))
    r[5, 9] += 1e-7  # not exactly symmetric, as float arithmetic leaves it
    index = np.array([0, 2, 3, 5, 9, 11, 30, 39])
    for rr, idx in ((r, None), (r, index), (r.astype(np.float32), index)):
        sub = rr if idx is None else rr[np.ix_(idx, idx)]
        d = 1.0 - np.abs(sub.astype(np.float64))
        d = np.clip((d + d.T) / 2, 0, 1)
        np.fill_diagonal(d, 0)
        np.testing.assert_array_equal(condensed_distance(rr, idx, block=3), squareform(d, checks=False))
    bad = r.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        condensed_distance(bad)


# -- where the products run ------------------------------------------------------------------------
def test_products_device_selection(monkeypatch):
    import torch

    monkeypatch.delenv("RAYDUND_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert stats_job.products_device() == "cuda"
    assert stats_job.products_device("cpu") == "cpu"  # forced
    monkeypatch.setenv("RAYDUND_DEVICE", "cpu")
    assert stats_job.products_device() == "cpu"
    monkeypatch.delenv("RAYDUND_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert stats_job.products_device() == "cpu"


@pytest.mark.parametrize("rows", [None, [0, 2]])
def test_torch_products_path_equals_blas_and_numpy(rows):
    """The GPU code path (torch float64), run on the CPU, against BLAS and a NumPy reference."""
    Z = data(T=300)
    L = len(WIDTHS)
    off = np.concatenate([[0], np.cumsum(WIDTHS)])
    D = np.asfortranarray(Z - Z[:40].mean(0))
    rows = list(range(L)) if rows is None else rows
    blas, tch = {}, {}
    for s in range(0, len(D), 100):
        add_block_rows(blas, np.asfortranarray(D[s : s + 100]), off, rows, L, "cpu")
        add_block_rows(tch, np.asfortranarray(D[s : s + 100]), off, rows, L, "torch:cpu")
    from raydund.general.moments import to_numpy

    tch = to_numpy(tch)
    full = D.T @ D
    if "all" in blas:
        np.testing.assert_allclose(np.triu(tch["all"]), np.triu(blas["all"]), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(np.triu(blas["all"]), np.triu(full), rtol=1e-12, atol=1e-9)
    else:
        for l in rows:
            np.testing.assert_allclose(tch[l], full[off[l] : off[l + 1], off[l] :], rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(blas[l], tch[l], rtol=1e-12, atol=1e-9)


def test_block_rows_above_the_syrk_limit_equal_the_dsyrk_path(monkeypatch):
    """Above SYRK_MAX_NEURONS one task keeps per-block-row accumulators (half the memory)."""
    from raydund.general import moments as moments_mod

    Z = data(T=300)
    ref = Moments.empty(WIDTHS, Z[:40].mean(0))
    ref.update(Z)
    monkeypatch.setattr(moments_mod, "SYRK_MAX_NEURONS", 10)
    acc = {}
    D = np.asfortranarray(Z - ref.shift)
    add_block_rows(acc, D, ref.offsets, list(range(len(WIDTHS))), len(WIDTHS))
    assert sorted(acc) == list(range(len(WIDTHS)))  # no "all"
    m = Moments.empty(WIDTHS, ref.shift)
    m.update(Z)
    np.testing.assert_allclose(m.full_G(), ref.full_G(), rtol=1e-12, atol=1e-9)
    a, b = similarity(m), similarity(ref)
    np.testing.assert_allclose(a.r, b.r, atol=1e-9)
    np.testing.assert_allclose(a.cka_debiased, b.cka_debiased, atol=1e-9)


def test_tiled_plan_stays_small_where_the_in_memory_pass_does_not_fit():
    """SmolLM2 MLP (46,080 neurons): N x N does not fit 12 GB, a tile block does, and it grows with the limit."""
    from raydund import memory as m

    limit = int(12e9)
    N, L, T = 46_080, 30, 100_000
    assert not m.similarity_fits(N, L, T, limit)
    block = m.choose_tile_block(N, L, T, tasks=2, widest=1536, limit=limit)
    plan = m.tiled_similarity_plan(N, L, T, block, 2, 1536)
    assert plan.peak <= limit // 2 and block % 256 == 0 and block >= 2048
    assert m.choose_tile_block(N, L, T, tasks=2, widest=1536, limit=limit // 8) < block
    assert m.similarity_fits(2_688, 7, 200_000, limit)
    k = m.exact_component_limit(limit)
    assert 8 * k * k <= 0.25 * limit < 8 * (k + 1) ** 2
    assert not m.clustering_fits(N, L, 10, limit) and m.clustering_fits(9_984, 13, 10, limit)
