"""The evaluator's cut cache: each kept value in one slab for all samples, the bytes held the rows
written, stale rows written again in place by the next pass, the budget never passed."""

import torch
from torch import nn

from prunelab.core.blocking import join
from prunelab.core.cutcache import CutCache

COUNTS = [2, 2, 4, 4]  # samples per block, as a progressive run plans them
ROW = 3 * 5 * 4  # bytes of one sample's value below (3x5 float32)


def batch(n, fill=None):
    return torch.randn(n, 3, 5) if fill is None else torch.full((n, 3, 5), float(fill))


def test_blocks_of_separate_batches_land_in_one_slab_and_join_without_a_copy():
    cache = CutCache(COUNTS, inplace=False)
    first, rest = batch(4), batch(8)  # two batches: blocks 0-1, then 2-3
    assert cache.store([0, 1], 7, ["h"], [first], budget=2**20)
    assert cache.store([2, 3], 7, ["h"], [rest], budget=2**20)
    parts = [cache.cuts[b][7][0] for b in range(4)]
    joined = join(parts, clone=False)
    assert torch.equal(joined, torch.cat([first, rest]))
    assert joined.data_ptr() == parts[0].data_ptr()  # one slab: the four blocks read as one batch, no copy
    assert cache.held == 12 * ROW


def test_a_value_two_cuts_share_is_held_once_and_its_rows_are_named_until_the_last_cut_goes():
    cache = CutCache(COUNTS, inplace=False)
    h, w = batch(12), nn.Parameter(torch.ones(3))
    assert cache.store([0, 1, 2, 3], 3, ["h"], [h], budget=2**20)
    assert cache.store([0, 1, 2, 3], 5, ["h", "w"], [h, w], budget=2**20)
    assert cache.held == 12 * ROW  # the shared value once; the parameter not copied at all
    assert cache.cuts[2][5][1] is w and cache.cuts[2][5][0] is cache.cuts[2][3][0]
    cache.drop_after(4)  # cut 5 stale, cut 3 kept: the value stays named
    assert cache.held == 12 * ROW and set(cache.cuts[0]) == {3}
    cache.drop_after(0)
    assert cache.cuts == [{}, {}, {}, {}] and cache.held == 12 * ROW  # the memory stays for the next pass
    cache.clear()
    assert cache.held == 0


def test_a_store_that_would_pass_the_budget_keeps_nothing():
    cache = CutCache(COUNTS, inplace=False)
    assert cache.store([0, 1], 3, ["h"], [batch(4)], budget=4 * ROW)
    assert not cache.store([2, 3], 3, ["h"], [batch(8)], budget=4 * ROW + 7 * ROW)  # one row short
    assert cache.held == 4 * ROW and cache.cuts[2] == {} and cache.cuts[3] == {}


def test_stale_rows_are_written_again_in_place_counted_once_and_hold_the_new_values():
    cache = CutCache(COUNTS, inplace=False)
    assert cache.store([0, 1, 2, 3], 3, ["a"], [batch(12, 1)], budget=2**20)
    assert cache.store([0, 1], 5, ["b"], [batch(4, 2)], budget=2**20)
    assert cache.store([2, 3], 5, ["b"], [batch(8, 2)], budget=2**20)
    where = cache.cuts[2][5][0].data_ptr()
    cache.drop_after(4)  # b's values stale
    assert cache.cuts[2] == {3: cache.cuts[2][3]} and cache.held == 24 * ROW
    for group, value in (([0, 1], batch(4, 3)), ([2, 3], batch(8, 3))):  # the next state's values: no new bytes
        assert cache.store(group, 5, ["b"], [value], budget=24 * ROW)
    assert cache.held == 24 * ROW and torch.equal(cache.cuts[3][5][0], batch(4, 3))
    assert cache.cuts[2][5][0].data_ptr() == where  # the same memory


def test_a_batch_of_every_sample_is_kept_as_it_is_without_a_copy():
    cache = CutCache(COUNTS, inplace=False)
    h = batch(12)
    assert cache.store([0, 1, 2, 3], 3, ["h"], [h], budget=12 * ROW)
    assert cache.cuts[0][3][0].data_ptr() == h.data_ptr() and cache.held == 12 * ROW
    cache.drop_after(0)
    g = batch(12)
    assert cache.store([0, 1, 2, 3], 3, ["h"], [g], budget=12 * ROW)  # the next state's: taken in its place
    assert cache.cuts[3][3][0].data_ptr() == g[8:].data_ptr() and cache.held == 12 * ROW


def test_a_graph_that_writes_in_place_keeps_a_copy_per_cut():
    cache = CutCache(COUNTS, inplace=True)
    h = batch(12, 1)
    assert cache.store([0, 1, 2, 3], 3, ["h"], [h], budget=2**20)
    h.add_(1)  # the run writes the value in place between the two cuts
    assert cache.store([0, 1, 2, 3], 5, ["h"], [h], budget=2**20)
    assert torch.equal(cache.cuts[0][3][0], batch(2, 1)) and torch.equal(cache.cuts[0][5][0], batch(2, 2))
    assert cache.held == 24 * ROW


def test_values_without_a_dense_row_per_sample_are_not_kept():
    cache = CutCache(COUNTS, inplace=False)
    assert not cache.store([0, 1], 3, ["h"], [torch.randn(4, 6)[:, :3]], budget=2**20)  # samples with gaps
    assert not cache.store([0, 1], 3, ["h"], [torch.randn(3, 5)], budget=2**20)  # not a row per sample
    assert cache.held == 0 and cache.cuts[0] == {}
    transposed = torch.randn(4, 5, 3).transpose(1, 2)  # dense rows in another order: kept with its strides
    assert cache.store([0, 1], 3, ["h"], [transposed], budget=2**20)
    assert cache.cuts[1][3][0].stride() == transposed.stride() and torch.equal(cache.cuts[1][3][0], transposed[2:])
