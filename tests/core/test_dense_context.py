"""``pruner.dense()`` loads the unmasked weights for its duration and writes the masks back after,
touching only the parameters that need it: on a dense state it copies nothing (a big model's
weights are not rewritten on every opening), and whatever changed inside is put back."""

import torch

from core_models import make_mlp
from prunelab import Pruner


def versions(model):
    return {n: p._version for n, p in model.named_parameters()}


def test_a_dense_state_is_not_rewritten(mlp_data):
    pruner = Pruner(make_mlp(), mlp_data)
    before = versions(pruner.model)
    with pruner.dense() as model:
        assert model is pruner.model
    assert versions(pruner.model) == before


def test_only_the_masked_layer_is_loaded_and_written_back(mlp_data):
    pruner = Pruner(make_mlp(), mlp_data)
    original = pruner.model[2].weight.detach().clone()
    pruner.prune({"2": 0.5})
    masked = pruner.model[2].weight.detach().clone()
    others = {n: v for n, v in versions(pruner.model).items() if not n.startswith("2.")}
    with pruner.dense() as model:
        assert torch.equal(model[2].weight, original)
    assert torch.equal(pruner.model[2].weight, masked)
    assert {n: v for n, v in versions(pruner.model).items() if not n.startswith("2.")} == others


def test_a_weight_changed_inside_is_put_back(mlp_data):
    pruner = Pruner(make_mlp(), mlp_data)
    pruner.prune({"2": 0.5})
    expected = {n: p.detach().clone() for n, p in pruner.model.named_parameters()}
    with pruner.dense() as model, torch.no_grad():
        model[0].weight.mul_(2)  # an unmasked layer
        model[2].weight.mul_(3)
    for n, p in pruner.model.named_parameters():
        assert torch.equal(p, expected[n]), n
    pruner.evaluate()  # nothing counts as changed behind the Pruner's back
