"""Dense references: the views compare against the unmasked weights, whatever is pruned."""

import pytest
import torch

from prunelab.core.checks import GRANULARITIES
from prunelab.core.criteria import CRITERIA
from prunelab.explorer.actions import Action
from prunelab.explorer.background import Scheduler
from prunelab.explorer.state import (CRITERION_ORDER, ExplorerState, dense_reference, follow, magnitude_scores,
                                     measure)


def test_reference_holds_unmasked_weights_while_pruned(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    original = mlp_demo_pruner.layer("2").module.weight.detach().clone()
    mlp_demo_pruner.prune(0.9)
    ref = dense_reference(mlp_demo_pruner)
    assert torch.equal(ref.weights["2"], original)
    assert (mlp_demo_pruner.layer("2").module.weight == 0).float().mean() > 0.5  # the model stays masked
    assert ref.version == mlp_demo_pruner.weights_version
    assert ref.abs_flat("2").shape == (30000,)
    scores = magnitude_scores(mlp_demo_pruner)
    assert abs(scores["2"][7] - original[7].abs().sum().item()) < 1e-4  # L1 norm of unit 7's weights
    mlp_demo_pruner.reset()


def test_the_choices_are_the_cores_and_bad_ones_are_refused_at_the_door():
    assert sorted(CRITERION_ORDER) == sorted(CRITERIA) and CRITERION_ORDER[0] == "magnitude"
    state = ExplorerState(layer_names=("0", "2"), layer="2")
    for granularity in GRANULARITIES:
        state.granularity = granularity
    with pytest.raises(ValueError, match="unknown criterion 'tayler'.*taylor"):
        state.criterion = "tayler"
    with pytest.raises(ValueError, match="unknown granularity"):
        state.granularity = "blocks"
    with pytest.raises(ValueError, match="unknown mode"):
        state.mode = "fraction"
    with pytest.raises(ValueError, match="unknown layer '7'"):
        state.layer = "7"
    with pytest.raises(Exception, match="Action"):
        state.action = "reset"  # a label string is not an action
    assert (state.criterion, state.granularity, state.layer) == ("magnitude", "2:4", "2")


def test_dependent_state_is_derived():
    state = ExplorerState()
    assert state.explanations_stale

    class Explained:
        revision = 0

    state.explanations = Explained()
    assert not state.explanations_stale
    state.revision += 1
    assert state.explanations_stale
    state.action = Action(kind="layer", layer="0", run=lambda: None)
    assert state.driver == "layers"
    state.action = Action(kind="undo", run=lambda: None)  # restores a state made elsewhere: no driver
    assert state.driver == "layers"
    state.action = Action(kind="threshold", run=lambda: None)
    assert state.driver == "threshold"


def test_follow_measures_after_each_change_until_stopped(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = ExplorerState(reference=dense_reference(mlp_demo_pruner))
    s = Scheduler()
    stop = follow(mlp_demo_pruner, s.soon, lambda: measure(mlp_demo_pruner, state))
    mlp_demo_pruner.prune(0.5)
    assert state.revision == 1 and state.metrics == mlp_demo_pruner.evaluate()
    halved = {n: p.detach() * 0.5 for n, p in mlp_demo_pruner.model.named_parameters()}
    mlp_demo_pruner.set_weights(halved)  # new unmasked weights: a new reference
    assert state.reference.version == mlp_demo_pruner.weights_version
    assert torch.equal(state.reference.weights["0"], halved["0.weight"])
    stop()
    mlp_demo_pruner.reset()
    assert state.revision == 2
    s.close()
