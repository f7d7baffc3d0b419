"""LengthGroupedBatches: every row once per epoch, similar lengths per batch, seeded, split across workers."""

import numpy as np
import pytest

from raydund.finetune.data import LengthGroupedBatches


def lengths(n=1000, seed=0):
    return np.random.default_rng(seed).integers(3, 60, n)


@pytest.mark.parametrize("n,batch,window", [(1000, 32, 5), (1000, 32, 50), (7, 3, 2), (64, 32, 1)])
def test_one_epoch_takes_every_row_once(n, batch, window):
    sampler = LengthGroupedBatches(lengths(n), batch, seed=0, window=window)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sum(-(-len(w) // batch) for w in np.array_split(
        np.arange(n), range(batch * window, n, batch * window)))
    assert all(1 <= len(b) <= batch for b in batches)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))


def test_batches_pad_like_sorted_windows():
    lens = lengths(4000)
    sampler = LengthGroupedBatches(lens, 32, seed=3, window=50)
    sampler.set_epoch(2)
    padded = sum(lens[b].max() * len(b) for b in map(np.asarray, sampler))
    # reference: the same seeded permutation, each window sorted by length (numpy's own sort), cut in 32s
    order = np.random.default_rng([3, 2]).permutation(len(lens))
    ref = 0
    for start in range(0, len(lens), 1600):
        w = np.sort(lens[order[start:start + 1600]])[::-1]
        ref += sum(w[i:i + 32].max() * len(w[i:i + 32]) for i in range(0, len(w), 32))
    assert padded == ref
    shuffled = sum(lens[order[i:i + 32]].max() * len(order[i:i + 32]) for i in range(0, len(lens), 32))
    assert padded < 0.6 * shuffled


def test_seeded_per_epoch():
    a, b = LengthGroupedBatches(lengths(), 16, seed=1), LengthGroupedBatches(lengths(), 16, seed=1)
    first = [tuple(x) for x in a]
    assert first == [tuple(x) for x in b]
    a.set_epoch(1)
    assert [tuple(x) for x in a] != first
    assert [tuple(x) for x in LengthGroupedBatches(lengths(), 16, seed=2)] != first


@pytest.mark.parametrize("n,world", [(1000, 2), (1000, 3), (50, 4)])
def test_workers_share_the_batches(n, world):
    whole = [tuple(b) for b in LengthGroupedBatches(lengths(n), 16, seed=0)]
    parts = [[tuple(b) for b in LengthGroupedBatches(lengths(n), 16, seed=0, rank=r, world=world)]
             for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == -(-len(whole) // world)
    taken = [b for p in parts for b in p]
    assert set(taken) == set(whole)  # all of them; the last ones repeat a few to even the count
    assert len(taken) - len(whole) < world
