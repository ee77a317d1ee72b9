"""What a Pruner holds beside the model and its one copy of the original weights: masks one bit per
entry (plans and the masks in effect share them), no held copy of magnitude scores, rankings that
copy nothing, and the same masks, bit for bit, as before all of this."""

import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from prunelab import Pruner
from prunelab.core.bits import Bits, unique_nbytes
from prunelab.core.masks import Derived, Ranking
from prunelab.core.plan import Plan


@given(st.integers(0, 70), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_bits_give_the_mask_back_bit_for_bit(n, m, seed):
    mask = torch.rand(n, m, generator=torch.Generator().manual_seed(seed)) < 0.4
    bits = Bits(mask)
    back = bits.tensor()
    assert back.dtype == torch.bool and back.shape == mask.shape and torch.equal(back, mask)
    assert bits.kept == int(mask.sum()) and bits.nbytes == -(-n * m // 8)
    assert bits.same(Bits(mask.clone())) and (n * m == 0 or not bits.same(Bits(~mask)))


def test_bits_refuse_what_is_not_a_bool_tensor():
    with pytest.raises(TypeError, match="bool tensor"):
        Bits(torch.ones(3))


def test_a_plan_holds_its_mask_packed_and_immutable():
    keep = torch.rand(40, 30, generator=torch.Generator().manual_seed(0)) < 0.5
    plan = Plan("unstructured", "magnitude", 0.5, None, keep)
    expected = keep.clone()
    keep.fill_(False)  # the caller's tensor is not the plan's
    assert torch.equal(plan.keep, expected) and plan.bits.nbytes == 150
    plan.keep.fill_(False)  # a read is a new tensor
    assert torch.equal(plan.keep, expected)
    with pytest.raises(AttributeError, match="immutable"):
        plan.amount = 0.9
    assert torch.equal(plan.replace(amount=0.4).keep, expected) and plan.replace(amount=0.4).amount == 0.4
    raw = Plan("unstructured", "magnitude", 0.5, None, [True, False])  # held as given, for set_plans to refuse
    assert raw.keep == [True, False] and raw.bits is None


def _wide(seed=0, ties=False):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    if ties:  # many equal magnitudes, across layers: ties are broken by position
        with torch.no_grad():
            for p in model.parameters():
                p.copy_((p * 40).round() / 40)
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(seed))
    return model, (x, model(x).argmax(1))


def _stable_sort_keep(flat: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.ones(len(flat), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    return keep


@pytest.mark.parametrize("ties", [False, True])
def test_global_masks_are_those_of_a_stable_sort_over_all_layers(ties):
    # 300k weights over three layers: above the size where the selection samples a bracket
    model, data = _wide(ties=ties)
    pruner = Pruner(model, data)
    weights = [pruner.layer(n).weight.detach().clone() for n in pruner.layer_names]
    flat = torch.cat([w.abs().reshape(-1) for w in weights])
    assert len(flat) > 4 * 2**16
    for amount in (0.1, 0.5, 0.77, 0.999):
        pruner.prune(amount)
        got = torch.cat([pruner.mask(n).reshape(-1) for n in pruner.layer_names])
        assert torch.equal(got, _stable_sort_keep(flat, round(amount * len(flat)))), amount
    pruner.undo()
    got = torch.cat([pruner.mask(n).reshape(-1) for n in pruner.layer_names])
    assert torch.equal(got, _stable_sort_keep(flat, round(0.77 * len(flat))))
    pruner.reset()
    assert all(torch.equal(pruner.layer(n).weight, w) for n, w in zip(pruner.layer_names, weights))


def test_a_ranking_of_derived_scores_equals_one_of_held_scores_and_holds_nothing():
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(300, 500, generator=gen), (torch.randn(40, 3, 3, 3, generator=gen) * 4).round(),
               torch.randn(200_000, generator=gen).round(decimals=1)]
    derived = Ranking([Derived(torch.abs, w) for w in weights])
    held = Ranking([w.abs() for w in weights])
    assert derived.nbytes() == 0 and derived.shapes == held.shapes
    for amount in (0.0, 0.2, 0.5, 0.9, 1.0):
        assert all(torch.equal(a, b) for a, b in zip(derived.masks(amount), held.masks(amount))), amount
    assert all(torch.equal(a, b) for a, b in zip(derived.masks_below(0.5), held.masks_below(0.5)))


def test_magnitude_scores_are_not_held_and_masks_cost_a_bit_per_weight():
    model, data = _wide()
    pruner = Pruner(model, data)
    prunable = sum(pruner.layer(n).params for n in pruner.layer_names)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    for amount in (0.5, 0.6, 0.7):
        pruner.prune(amount)
    pruner.evaluate()
    held = pruner.memory()
    assert held.scores == 0  # |w| is read from the weights when ranked
    assert held.weights_copy == params  # the originals, once
    # three steps of plans (the masks in effect are the current step's own bits), one bit per weight
    assert 3 * prunable / 8 <= held.plans <= 3 * (prunable / 8 + len(pruner.layer_names))
    assert unique_nbytes(p.bits for p in pruner.plans.values()) <= prunable / 8 + len(pruner.layer_names)
    pruner.prune(0.5, criterion="taylor")  # data-driven scores are held, once, not copied by their ranking
    taylor = pruner.memory().scores
    assert taylor == prunable * 4


def test_structured_and_unstructured_plans_on_one_weight_combine_bit_for_bit(mlp, mlp_data):
    pruner = Pruner(mlp, mlp_data)
    pruner.prune({"0": 0.5}, granularity="structured")
    units = pruner.plans["0"].keep
    pruner.prune({"2": 0.5})  # layer 2 reads layer 0's units: its mask is both plans together
    own = pruner.plans["2"].keep
    expected = own & units[None, :]
    assert torch.equal(pruner.mask("2"), expected)
    assert torch.equal(pruner.layer("2").weight, pruner.original_weights["2.weight"] * expected)
