"""Rankings (sorted once, any sparsity an index lookup) and N:M masks."""

import pytest
import torch

from prunelab.core.masks import Ranking, n_of_m_mask, pruned_count


def test_pruned_count_rounds_to_nearest():
    assert pruned_count(0.5, 10) == 5
    assert pruned_count(0.34, 10) == 3
    assert pruned_count(0.36, 10) == 4
    assert pruned_count(0.0, 7) == 0
    assert pruned_count(1.0, 7) == 7


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.25, 0.5, 0.77, 0.99, 1.0])
def test_ranking_removes_exactly_the_lowest_entries(amount):
    scores = torch.randn(13, 7, generator=torch.Generator().manual_seed(0))
    (keep,) = Ranking([scores]).masks(amount)
    k = round(amount * scores.numel())
    assert keep.shape == scores.shape and keep.dtype == torch.bool
    assert int((~keep).sum()) == k
    if 0 < k < scores.numel():
        assert scores[~keep].max() <= scores[keep].min()


def test_global_ranking_spans_tensors_and_keeps_their_shapes():
    a = torch.tensor([[0.1, 5.0], [0.2, 6.0]])
    b = torch.tensor([0.3, 7.0, 0.05])
    ka, kb = Ranking([a, b]).masks(3 / 7)
    assert ka.shape == a.shape and kb.shape == b.shape
    assert ka.tolist() == [[False, True], [False, True]]
    assert kb.tolist() == [True, True, False]


def test_ties_are_broken_by_position():
    (keep,) = Ranking([torch.zeros(6)]).masks(0.5)
    assert keep.tolist() == [False, False, False, True, True, True]


def test_masks_below_removes_every_entry_under_the_threshold():
    scores = torch.tensor([0.5, 0.1, 0.3, 0.3, 0.9])
    (keep,) = Ranking([scores]).masks_below(0.3)
    assert keep.tolist() == [True, False, True, True, True]  # 0.3 itself is not below 0.3
    (keep,) = Ranking([scores]).masks_below(0.0)
    assert bool(keep.all())
    (keep,) = Ranking([scores]).masks_below(10.0)
    assert not bool(keep.any())


def test_one_ranking_serves_many_amounts_consistently():
    ranking = Ranking([torch.rand(200, generator=torch.Generator().manual_seed(3))])
    previous = torch.ones(200, dtype=torch.bool)
    for amount in [0.1, 0.3, 0.6, 0.9]:
        (keep,) = ranking.masks(amount)
        assert bool((keep <= previous).all())  # more sparsity only removes more
        previous = keep


def test_two_of_four_keeps_the_two_largest_of_every_four():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.1, 0.2, 0.4, 0.3]])
    keep = n_of_m_mask(scores)
    assert keep.tolist() == [[False, True, True, False, False, False, True, True]]


def test_two_of_four_on_conv_weights_counts_per_block():
    scores = torch.rand(6, 4, 3, 3, generator=torch.Generator().manual_seed(1))  # rows of 36
    keep = n_of_m_mask(scores)
    assert keep.shape == scores.shape
    assert (keep.reshape(-1, 4).sum(1) == 2).all()


def test_two_of_four_rejects_rows_not_a_multiple_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        n_of_m_mask(torch.rand(3, 6))
