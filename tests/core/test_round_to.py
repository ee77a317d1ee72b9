"""Structured pruning with ``round_to``: every layer keeps a whole number of channel blocks, the
highest-scored units, and a bad request changes nothing."""

import pytest
import torch
from torch import nn

from core_models import random_data, state_of
from prunelab import Pruner


def wide_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 40), nn.ReLU(), nn.Linear(40, 27), nn.ReLU(), nn.Linear(27, 3))


@pytest.fixture
def pruner():
    return Pruner(wide_mlp(), random_data((8,), n=32, classes=3))


def kept_units(pruner, layer) -> int:
    plan = pruner.plans.get(layer)
    return pruner.layer(layer).units if plan is None else int(plan.keep.sum())


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("amount", [0.3, 0.55])
def test_every_layer_keeps_a_multiple_and_the_plans_say_what_was_removed(pruner, scope, amount):
    pruner.prune(amount, granularity="structured", scope=scope, round_to=8)
    for layer in ("0", "2"):
        n, kept = pruner.layer(layer).units, kept_units(pruner, layer)
        assert kept % 8 == 0 or kept == n, (layer, kept)
        assert pruner.plans[layer].amount == pytest.approx(1 - kept / n)  # the amount done, not the one asked
    plain = Pruner(wide_mlp(), random_data((8,), n=32, classes=3)).prune(amount, granularity="structured", scope=scope)
    assert [kept_units(pruner, n) for n in ("0", "2")] != [kept_units(plain, n) for n in ("0", "2")]  # it rounded


def test_rounding_keeps_the_highest_scored_units(pruner):
    pruner.prune({"2": 0.3}, granularity="structured", round_to=8)  # 27 units: 19 asked, 16 kept
    keep = pruner.plans["2"].keep
    assert int(keep.sum()) == 16
    norms = pruner.history.current.weights["2.weight"].abs().sum(1)
    assert norms[keep].min() >= norms[~keep].max()


def test_a_layer_asked_to_stay_dense_stays_whole(pruner):
    pruner.prune({"2": 0.0}, granularity="structured", round_to=8)
    assert "2" not in pruner.plans  # 27 units, not 24 or 32


@pytest.mark.parametrize("kwargs, says", [
    (dict(amount=0.3, granularity="unstructured", round_to=8), "granularity='structured'"),
    (dict(threshold=0.05, granularity="structured", round_to=8), "an amount"),
    (dict(amount=0.3, granularity="structured", round_to=0), "round_to"),
    (dict(amount=0.3, granularity="structured", round_to=2.5), "round_to"),
])
def test_a_bad_round_to_is_refused_by_name_and_changes_nothing(pruner, kwargs, says):
    before, steps = state_of(pruner.model), len(pruner.history)
    with pytest.raises(ValueError, match=says):
        pruner.prune(**kwargs)
    assert all(torch.equal(before[k], v) for k, v in state_of(pruner.model).items())
    assert len(pruner.history) == steps and not pruner.plans
