"""Dense references: the views compare against the unmasked weights, whatever is pruned."""

import torch

from prunelab.explorer.state import dense_reference, magnitude_scores


def test_reference_holds_unmasked_weights_while_pruned(mlp_pruner):
    mlp_pruner.reset()
    original = mlp_pruner.layer("2").module.weight.detach().clone()
    mlp_pruner.prune(0.9)
    ref = dense_reference(mlp_pruner)
    assert torch.equal(ref.weights["2"], original)
    assert (mlp_pruner.layer("2").module.weight == 0).float().mean() > 0.5  # the model stays masked
    assert ref.version == mlp_pruner.weights_version
    assert ref.abs_flat("2").shape == (30000,)
    scores = magnitude_scores(mlp_pruner)
    assert abs(scores["2"][7] - original[7].abs().sum().item()) < 1e-4  # L1 norm of unit 7's weights
    mlp_pruner.reset()
