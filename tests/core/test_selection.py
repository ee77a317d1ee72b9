"""Ranking by selection: the masks are exactly those of a stable sort (ties by position), and a
global move over a ResNet-50's worth of scores is ranked without sorting them."""

import time

import pytest
import torch

from prunelab import Pruner
from prunelab.core.masks import Ranking, kth_smallest


def sorted_keep(flat: torch.Tensor, k: int) -> torch.Tensor:
    """What the previous Ranking gave: drop the first k entries of a stable ascending sort."""
    keep = torch.ones(len(flat), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    return keep


@pytest.mark.parametrize("n", [10, 5_000, 400_000])  # below and above the sampling threshold
def test_masks_equal_a_stable_sort_with_ties_broken_by_position(n):
    gen = torch.Generator().manual_seed(n)
    flat = torch.randint(0, 7, (n,), generator=gen).float()  # heavy ties
    flat[: n // 10] = float("inf")  # as structured rankings pin each layer's best unit
    ranking = Ranking([flat])
    for k in sorted({0, 1, 2, n // 3, n // 2, n - n // 10, n - 1, n}):
        assert torch.equal(torch.cat([m.clone() for m in ranking.keep_all_but(k)]), sorted_keep(flat, k)), f"k={k}"


def test_several_layers_are_ranked_together_as_one_sorted_order():
    gen = torch.Generator().manual_seed(1)
    parts = [torch.rand(300, 700, generator=gen), torch.rand(5, 3, 3, 3, generator=gen).round(decimals=1),
             torch.rand(200_000, generator=gen)]
    ranking = Ranking(parts)
    flat = torch.cat([p.reshape(-1) for p in parts])
    for amount in (0.0, 0.001, 0.3, 0.5, 0.97, 1.0):
        k = int(round(amount * len(flat)))
        masks = ranking.masks(amount)
        assert [m.shape for m in masks] == [p.shape for p in parts]
        assert torch.equal(torch.cat([m.reshape(-1) for m in masks]), sorted_keep(flat, k)), amount
        assert int(sum((~m).sum() for m in masks)) == k


def test_kth_smallest_is_exact_even_when_the_sample_misses():
    flat = torch.cat([torch.zeros(300_000), torch.arange(10.0)])  # the sample sees zeros only
    v, below, equal = kth_smallest(flat, 300_005)
    assert (float(v), below, equal) == (4.0, 300_004, 1)
    v, below, equal = kth_smallest(flat, 7)
    assert (float(v), below, equal) == (0.0, 0, 300_001)


def test_threshold_masks_remove_exactly_the_scores_below():
    flat = torch.tensor([0.1, 0.3, 0.3, 0.05, 0.5])
    (keep,) = Ranking([flat]).masks_below(0.3)
    assert keep.tolist() == [False, True, True, False, True]


def test_a_global_move_costs_a_fraction_of_a_sort():
    # 4M scores over 16 layers (bench/scale.py times ResNet-50's 23.7M against its one second).
    # Compared with a stable argsort of the same scores on the same machine, so load cancels out.
    gen = torch.Generator().manual_seed(0)
    scores = [torch.rand(250_000, generator=gen) for _ in range(16)]
    began = time.perf_counter()
    ranking = Ranking(scores)
    masks = ranking.masks(0.5)
    selecting = time.perf_counter() - began
    began = time.perf_counter()
    torch.argsort(torch.cat(scores), stable=True)
    sorting = time.perf_counter() - began
    assert int(sum((~m).sum() for m in masks)) == round(0.5 * ranking.total)
    assert selecting < 0.6 * sorting, f"selection {selecting:.3f} s vs a sort {sorting:.3f} s"


def test_global_pruning_through_the_pruner_matches_a_sorted_reference(mlp, mlp_data):
    pruner = Pruner(mlp, mlp_data)
    scores = pruner.scores("magnitude")
    flat = torch.cat([scores[n].reshape(-1).float() for n in pruner.layer_names])
    keep = sorted_keep(flat, int(round(0.6 * len(flat))))
    pruner.prune(0.6)
    got = torch.cat([pruner.mask(n).reshape(-1) for n in pruner.layer_names])
    assert torch.equal(got, keep)


@pytest.mark.parametrize("decimals", [1, 3, 5])  # ties in bulk (counted), a few (gathered), almost none
def test_parts_ranked_together_equal_a_stable_sort_whatever_the_ties(decimals):
    gen = torch.Generator().manual_seed(decimals)
    parts = [torch.rand(n, generator=gen).round(decimals=decimals) for n in (150_000, 7, 200_000, 90_001)]
    ranking = Ranking(parts)
    flat = torch.cat(parts)
    for k in (1, 777, len(flat) // 3, len(flat) // 2, len(flat) - 5):
        assert torch.equal(torch.cat([m.clone() for m in ranking.keep_all_but(k)]), sorted_keep(flat, k)), k
