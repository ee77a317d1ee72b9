"""Unstructured, structured and 2:4 pruning on every zoo model: the sparsity reported equals the
zeros counted in the masks and the weights, the masks have the granularity's shape, and
``evaluate()`` equals a plain loop over the model's own outputs. Structured pruning either prunes
or refuses at ``prune()``, with a reason per blocked layer and a short message."""

import warnings

import pytest

from core_models import state_of

from .known import cases
from .models import ZOO
from .support import (assert_counts_exact, assert_measures_like_own_loop, assert_two_of_four, assert_whole_units,
                      pruner_for)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", cases("unstructured"))
def test_unstructured_is_exact_and_measured_like_the_models_own_loop(name):
    entry = ZOO[name]
    model, data, pruner = pruner_for(entry)
    assert_measures_like_own_loop(entry, pruner, data)  # dense first: the baseline is the model's own
    pruner.prune(0.5)
    assert_counts_exact(pruner)
    total = sum(l.params for l in pruner.layers)
    assert abs(pruner.overall_sparsity() - 0.5) <= 1 / total
    assert_measures_like_own_loop(entry, pruner, data)


@pytest.mark.parametrize("name", cases("structured"))
def test_structured_is_whole_units_exact_and_measured_or_refused_at_prune(name):
    entry = ZOO[name]
    model, data, pruner = pruner_for(entry)
    blocked = pruner.structured_blocked
    for layer, reason in blocked.items():
        assert isinstance(reason, str) and reason, layer
    if set(blocked) >= set(pruner.layer_names):  # nothing can be removed: refused now, said briefly
        before = state_of(model)
        with pytest.raises(ValueError) as refused:
            pruner.prune(0.3, granularity="structured")
        assert len(str(refused.value)) < 600, f"{len(str(refused.value))} characters: {str(refused.value)[:300]}"
        assert not pruner.plans and all(v.equal(state_of(model)[k]) for k, v in before.items())
        return
    pruner.prune(0.3, granularity="structured")
    assert pruner.overall_sparsity() > 0
    assert_counts_exact(pruner)
    assert_whole_units(model, pruner.masks())
    for layer in blocked:  # a blocked layer keeps all its units
        plan = pruner.plans.get(layer)
        assert plan is None or plan.granularity != "structured", layer
    assert_measures_like_own_loop(entry, pruner, data)


@pytest.mark.parametrize("name", cases("2:4"))
def test_two_of_four_is_exact_and_names_the_layers_it_cannot_do(name):
    entry = ZOO[name]
    model, data, pruner = pruner_for(entry)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        pruner.prune(0.5, granularity="2:4")
    warned = " ".join(str(w.message) for w in said if "2:4" in str(w.message))
    assert_counts_exact(pruner)
    assert_two_of_four(model, pruner.masks(), pruner.layers, warned, pruner.blocked("2:4"))
    assert_measures_like_own_loop(entry, pruner, data)
