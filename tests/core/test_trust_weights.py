"""Trust, the weights (issue 10, cases 4, 10 and 11): weights that are not plain parameters,
one Pruner per model, weights changed behind the Pruner's back, and buffers."""

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from core_models import VECTOR, assert_same_state, make_bn_cnn, make_mlp, random_data, state_of
from prunelab import Pruner


def plain_accuracy(model, x, y):
    """Top-1 accuracy of a plain ``model(x)`` in eval mode (every module's flag put back)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    for m, t in modes.items():
        m.training = t
    return acc


# ---------------------------------------------------------------- case 4: not plain parameters

class Scale(nn.Module):
    def forward(self, w):
        return w * 2


WRAPPERS = {
    "torch.nn.utils.prune": (lambda m: torch_prune.l1_unstructured(m[0], "weight", 0.3), r"prune\.remove"),
    "weight_norm": (lambda m: torch.nn.utils.weight_norm(m[0]), r"remove_weight_norm"),
    "spectral_norm": (lambda m: torch.nn.utils.spectral_norm(m[0]), r"remove_spectral_norm"),
    "parametrizations.weight_norm": (lambda m: parametrizations.weight_norm(m[0]), r"remove_parametrizations"),
    "parametrizations.spectral_norm": (lambda m: parametrizations.spectral_norm(m[0]), r"remove_parametrizations"),
    "parametrize": (lambda m: parametrize.register_parametrization(m[2], "weight", Scale()), r"remove_parametrizations"),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_a_weight_that_is_not_a_plain_parameter_is_refused_with_what_to_do(wrapper, mlp_data):
    wrap, advice = WRAPPERS[wrapper]
    model = make_mlp()
    wrap(model)
    before = state_of(model)
    with pytest.raises(ValueError, match=advice) as e:
        Pruner(model, mlp_data)
    assert "Nothing was changed" in str(e.value)
    assert_same_state(model, before)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def test_a_weight_tied_between_two_layers_is_one_layer(mlp_data):
    model = Tied()
    before = state_of(model)
    pruner = Pruner(model, mlp_data)
    assert pruner.layer_names == ["a", "head"]
    assert "tied to layer 'a'" in pruner.skipped["b"]
    pruner.prune(0.5)
    zeros = float((model.b.weight == 0).float().mean())
    assert pruner.sparsity()["a"] == pytest.approx(zeros)  # what it reports is what the model holds
    assert pruner.evaluate().accuracy == pytest.approx(plain_accuracy(model, *mlp_data))
    assert "tied" in pruner.structured_blocked["a"]
    pruner.reset()
    assert_same_state(model, before)


def test_a_head_tied_to_an_embedding_is_pruned_under_the_embeddings_name():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed, self.head = nn.Embedding(10, 8), nn.Linear(8, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, x):
            return self.head(self.embed(x).mean(1))

    x, y = torch.randint(0, 10, (40, 5)), torch.arange(40) % 10
    model = LM()
    pruner = Pruner(model, (x, y))
    assert pruner.layer("head").weight_name == "embed.weight"
    pruner.prune(0.5)
    assert pruner.sparsity()["head"] == 0.5 and float((model.embed.weight == 0).float().mean()) == 0.5
    assert pruner.evaluate().accuracy == pytest.approx(plain_accuracy(model, x, y))


# ---------------------------------------------------------------- case 10: one Pruner per model

def test_a_second_pruner_on_a_held_model_is_refused_until_the_first_is_closed(mlp_data):
    model = make_mlp()
    p1 = Pruner(model, mlp_data)
    with pytest.raises(ValueError, match="a model another Pruner holds.*close()"):
        Pruner(model, mlp_data)
    with pytest.raises(ValueError, match="another Pruner holds"):
        Pruner(model[0], (mlp_data[0], mlp_data[1] % 3))  # a module of it too
    p1.prune(0.9).reset().close()
    with pytest.raises(ValueError, match="closed"):
        p1.prune(0.5)
    p2 = Pruner(model, mlp_data)
    p2.prune(0.9)
    assert p2.overall_sparsity() == pytest.approx(0.9, abs=0.01)


def test_a_pruner_nobody_refers_to_releases_its_model(mlp_data):
    model = make_mlp()
    Pruner(model, mlp_data).prune(0.5)  # dropped at once; it lives on in reference cycles until collected
    Pruner(model, mlp_data)  # no gc.collect() here: the claim itself lets the collector free the first


# ---------------------------------------------------------------- case 10: weights changed outside

def test_an_in_place_edit_after_evaluate_is_noticed_never_measured_stale(mlp_data):
    model = make_mlp()
    original = state_of(model)
    pruner = Pruner(model, mlp_data)
    pruner.prune(0.5).evaluate()
    with torch.no_grad():
        model[4].weight.mul_(-1)
    with pytest.raises(ValueError, match=r"'4.weight'] changed outside.*sync\(\).*reset\(\)"):
        pruner.evaluate()
    with pytest.raises(ValueError, match="changed outside"):
        pruner.prune(0.7)
    pruner.sync()
    assert pruner.overall_sparsity() == pytest.approx(0.5, abs=0.01)
    assert pruner.evaluate().accuracy == pytest.approx(plain_accuracy(model, *mlp_data))
    pruner.undo()  # back before the sync: the edit is gone from the model too
    assert torch.equal(model[4].weight, pruner.history.current.weights["4.weight"] * pruner.mask("4"))
    pruner.reset()
    assert_same_state(model, original)


def test_reset_after_an_outside_edit_returns_the_originals(mlp_data):
    model = make_mlp()
    original = state_of(model)
    pruner = Pruner(model, mlp_data)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # edited in the original state: no step to undo
    pruner.reset()
    assert_same_state(model, original)
    assert pruner.evaluate().accuracy == pytest.approx(plain_accuracy(model, *mlp_data))


def test_load_state_dict_with_assign_is_noticed_and_sync_follows_the_new_parameters(mlp_data):
    model = make_mlp()
    original = state_of(model)
    pruner = Pruner(model, mlp_data)
    pruner.prune(0.5).evaluate()
    other = {k: torch.randn_like(v) for k, v in original.items()}
    model.load_state_dict(other, assign=True)  # new Parameter objects
    with pytest.raises(ValueError, match="changed outside"):
        pruner.sparsity()
    pruner.sync()
    for name in pruner.layer_names:  # the masks are written into the new objects
        weight = model.get_submodule(name).weight
        assert torch.equal(weight, other[f"{name}.weight"] * pruner.mask(name))
    assert pruner.evaluate().accuracy == pytest.approx(plain_accuracy(model, *mlp_data))
    pruner.reset()
    assert_same_state(model, original)


# ---------------------------------------------------------------- case 11: buffers

class CountingBN(nn.BatchNorm2d):
    """Counts every batch in Python, whatever the mode (as some libraries' norms do)."""

    def forward(self, x):
        self.num_batches_tracked += 1
        return super().forward(x)


def counting_cnn():
    model = make_bn_cnn()
    for i in (1, 4):
        bn = CountingBN(model[i].num_features)
        bn.load_state_dict(model[i].state_dict())
        model[i] = bn
    return model


def test_nothing_in_core_changes_a_buffer(image_data):
    model = counting_cnn()
    before = state_of(model)
    pruner = Pruner(model, image_data, batch_size=16)
    pruner.flops()
    pruner.prune(0.5, criterion="taylor")
    pruner.prune({"3": 0.5}, granularity="structured")
    pruner.evaluate()
    pruner.reset()
    assert_same_state(model, before)


def test_reset_restores_buffers_bit_for_bit_and_evaluate_follows_outside_buffer_changes(image_data):
    model = make_bn_cnn()
    before = state_of(model)
    pruner = Pruner(model, image_data)
    dense = pruner.evaluate()
    model.train()
    with torch.no_grad():
        model(image_data[0] * 3 + 1)  # running statistics move
    model.eval()
    moved = pruner.evaluate()
    assert moved.accuracy == pytest.approx(plain_accuracy(model, *image_data))
    assert moved.loss != dense.loss  # measured anew, not served from the cache
    pruner.reset()
    assert_same_state(model, before)
    assert pruner.evaluate().loss == pytest.approx(dense.loss)
