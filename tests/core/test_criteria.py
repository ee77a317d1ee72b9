"""Importance criteria: magnitude, random, taylor (|w * grad| over the data), attribution (captum)."""

import pytest
import torch
from captum.attr import LayerConductance, LayerGradientXActivation
from torch import nn

from core_models import IMAGE, TOKENS, VECTOR, make_attention_net, make_bn_cnn, make_mlp, random_data
from prunelab import Attribution, Criterion, Pruner
from prunelab.core.criteria import get_criterion


def taylor_reference(model, x, y):
    """|w * dL/dw| on one batch, computed the plain way."""
    model.eval()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    out = {n.rpartition(".")[0]: (p.detach() * p.grad).abs() for n, p in model.named_parameters()
           if n.endswith("weight") and p.dim() > 1}
    model.zero_grad(set_to_none=True)
    return out


def test_magnitude_is_absolute_weight_and_units_are_l1(mlp, mlp_data):
    pruner = Pruner(mlp, mlp_data)
    w = pruner.scores("magnitude")
    u = pruner.scores("magnitude", units=True)
    for name in pruner.layer_names:
        weight = mlp.get_submodule(name).weight.detach()
        assert torch.equal(w[name], weight.abs())
        assert torch.allclose(u[name], weight.abs().sum(1))


def test_scores_are_taken_on_the_dense_model(mlp, mlp_data):
    original = mlp[2].weight.detach().clone()
    seen = []

    class Spy(Criterion):
        name = "spy"

        def weight_scores(self, ctx):
            seen.append(ctx.model[2].weight.detach().clone())
            return {l.name: l.module.weight.detach().abs() for l in ctx.layers}

    pruner = Pruner(mlp, mlp_data).prune(0.9)
    pruner.prune({"0": 0.5}, criterion=Spy())
    assert torch.equal(seen[0], original)  # scored on the unmasked weights
    assert int((mlp[2].weight == 0).sum()) >= int((~pruner.mask("2")).sum()) > 0  # and the masks are back


def test_random_is_reproducible_across_pruners_and_changes_with_the_seed(mlp_data):
    def masks(seed):
        p = Pruner(make_mlp(), mlp_data, seed=seed).prune(0.5, criterion="random")
        return {n: p.mask(n) for n in p.layer_names}

    a, b, c = masks(7), masks(7), masks(8)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    magnitude = Pruner(make_mlp(), mlp_data).prune(0.5)
    assert any(not torch.equal(a[n], magnitude.mask(n)) for n in a)


def test_random_structured_is_reproducible(image_data):
    def removed(seed):
        p = Pruner(make_bn_cnn(), image_data, seed=seed).prune(0.5, criterion="random", granularity="structured")
        return {n: plan.keep.clone() for n, plan in p.plans.items()}

    a, b = removed(3), removed(3)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_taylor_uses_train_data_when_given():
    xv, yv = random_data(VECTOR, seed=1)
    xt, yt = random_data(VECTOR, n=40, seed=2)
    pruner = Pruner(make_mlp(), (xv, yv), train_data=(xt, yt))
    scores = pruner.scores("taylor")
    on_train, on_val = taylor_reference(make_mlp(), xt, yt), taylor_reference(make_mlp(), xv, yv)
    for n in pruner.layer_names:
        assert torch.allclose(scores[n], on_train[n], rtol=1e-5, atol=1e-8)
    assert not all(torch.allclose(scores[n], on_val[n]) for n in pruner.layer_names)


def test_taylor_falls_back_to_validation_data():
    xv, yv = random_data(VECTOR, seed=1)
    scores = Pruner(make_mlp(), (xv, yv)).scores("taylor")
    reference = taylor_reference(make_mlp(), xv, yv)
    assert all(torch.allclose(scores[n], reference[n], rtol=1e-5, atol=1e-8) for n in reference)


def test_taylor_averages_over_batches():
    x, y = random_data(VECTOR, n=40)
    pruner = Pruner(make_mlp(), (x, y), batch_size=16)  # scoring batches of 16: 16 + 16 + 8
    batches = [taylor_reference(make_mlp(), x[i:i + 16], y[i:i + 16]) for i in (0, 16, 32)]
    for n, s in pruner.scores("taylor").items():
        assert torch.allclose(s, sum(b[n] for b in batches) / 3, rtol=1e-5, atol=1e-8)


def test_taylor_prunes_with_the_users_loss(mlp_data):
    x, y = mlp_data
    calls = []

    def loss(out, target):
        calls.append(len(target))
        return nn.functional.cross_entropy(out, target)

    pruner = Pruner(make_mlp(), (x, y), loss=loss)
    assert calls == [2]  # tried once at construction: it must return a scalar
    pruner.prune(0.5, criterion="taylor")
    assert calls == [2, 48]


def test_attribution_unit_scores_are_mean_absolute_layer_attributions(mlp_data):
    x, y = mlp_data
    model = make_mlp()
    pruner = Pruner(model, (x, y))
    units = pruner.scores("attribution", units=True)
    reference = LayerGradientXActivation(model, model[2]).attribute(x, target=y).abs().mean(0)
    assert torch.allclose(units["2"], reference, rtol=1e-5, atol=1e-9)


def test_attribution_weights_magnitude_by_relative_unit_importance(mlp_data):
    pruner = Pruner(make_mlp(), mlp_data)
    weights, units = pruner.scores("attribution"), pruner.scores("attribution", units=True)
    for n in pruner.layer_names:
        w = pruner.layer(n).module.weight.detach().abs()
        relative_unit = units[n] / units[n].mean()
        assert torch.allclose(weights[n], w * relative_unit[:, None], rtol=1e-5)


@pytest.mark.parametrize("build, shape", [(make_mlp, VECTOR), (make_bn_cnn, IMAGE)])
def test_attribution_ranks_differently_from_magnitude(build, shape):
    data = random_data(shape)
    by_attribution = Pruner(build(), data).prune(0.5, criterion="attribution", granularity="structured")
    by_magnitude = Pruner(build(), data).prune(0.5, granularity="structured")
    assert by_attribution.overall_sparsity() > 0
    assert any(not torch.equal(by_attribution.plans[n].keep, by_magnitude.plans[n].keep)
               for n in by_attribution.plans)
    unstructured = Pruner(build(), data).prune(0.5, criterion="attribution")
    assert unstructured.overall_sparsity() == pytest.approx(0.5, abs=1e-3)


def test_attribution_with_layer_conductance(mlp_data):
    x, y = mlp_data
    model = make_mlp()
    pruner = Pruner(model, (x, y))
    crit = Attribution("LayerConductance", n_steps=8)
    units = pruner.scores(crit, units=True)
    assert set(units) == set(pruner.layer_names)
    for n in pruner.layer_names:  # captum's LayerConductance called directly, on the same data
        reference = LayerConductance(model, model.get_submodule(n)).attribute(x, target=y, n_steps=8)
        assert torch.allclose(units[n], reference.abs().mean(0), rtol=1e-5, atol=1e-9)
    pruner.prune({"0": 0.5}, criterion=crit)
    assert pruner.plans["0"].criterion == "attribution"


def test_attribution_gives_layers_run_inside_attention_the_mean_score():
    pruner = Pruner(make_attention_net(), random_data(TOKENS))
    units = pruner.scores("attribution", units=True)
    out_proj = units["attn.out_proj"]
    assert bool((out_proj == out_proj[0]).all())
    pruner.prune(0.5, criterion="attribution")
    assert pruner.sparsity()["attn.out_proj"] > 0


def test_unknown_captum_method_is_a_clear_error(mlp_data):
    pruner = Pruner(make_mlp(), mlp_data)
    with pytest.raises(ValueError, match="captum has no layer attribution method 'LayerMagic'"):
        pruner.prune(0.5, criterion=Attribution("LayerMagic"))
    assert pruner.plans == {}


def test_a_custom_criterion_object_is_used_as_given(mlp, mlp_data):
    class Largest(Criterion):
        name = "largest-first"

        def weight_scores(self, ctx):
            return {l.name: -l.module.weight.detach().abs() for l in ctx.layers}

    pruner = Pruner(mlp, mlp_data).prune({"0": 0.5}, criterion=Largest())
    w = pruner.layer("0").module.weight
    with pruner.dense():
        dense = w.detach().abs().clone()
    assert dense[~pruner.mask("0")].min() >= dense[pruner.mask("0")].max()
    assert pruner.plans["0"].criterion == "largest-first"


def test_get_criterion_names_the_choices():
    assert get_criterion("taylor").name == "taylor"
    choices = r"\['attribution', 'magnitude', 'random', 'taylor', 'wanda'\]"
    with pytest.raises(ValueError, match=r"unknown criterion 'l1'.*" + choices):
        get_criterion("l1")


def test_each_criterion_instance_gets_its_own_scores(mlp_data):
    class Signed(Criterion):
        name = "signed"

        def __init__(self, sign):
            self.sign = sign

        def weight_scores(self, ctx):
            return {l.name: self.sign * l.module.weight.detach().abs() for l in ctx.layers}

    pruner = Pruner(make_mlp(), mlp_data)
    with pruner.dense():
        w = pruner.model[0].weight.detach().abs().clone()
    for i in range(10):  # fresh instances, freed each time: ids get reused by CPython
        sign = 1 if i % 2 == 0 else -1
        pruner.prune({"0": 0.5}, criterion=Signed(sign))
        keep = pruner.mask("0")
        if sign == 1:
            assert w[~keep].max() <= w[keep].min()
        else:
            assert w[~keep].min() >= w[keep].max()


def test_scores_follow_new_weights_even_after_history_was_cut(mlp_data):
    pruner = Pruner(make_mlp(), mlp_data)
    rising = torch.arange(128.0).reshape(16, 8)
    pruner.set_weights({"0.weight": rising})
    pruner.prune({"0": 0.5})
    pruner.undo()
    pruner.undo()
    pruner.prune({"2": 0.1})  # cuts the branch that held the first set_weights
    pruner.set_weights({"0.weight": rising.flip(0)})
    pruner.prune({"0": 0.5})
    assert bool(pruner.mask("0")[:8].all()) and not bool(pruner.mask("0")[8:].any())


def test_scores_are_computed_once_per_criterion_and_weights(mlp_data):
    calls = []

    class Counting(Criterion):
        name = "counting"

        def weight_scores(self, ctx):
            calls.append(1)
            return {l.name: l.module.weight.detach().abs() for l in ctx.layers}

    crit = Counting()
    pruner = Pruner(make_mlp(), mlp_data)
    for amount in (0.2, 0.5, 0.8, 0.5):  # a slider moving: one scoring, then index lookups
        pruner.prune(amount, criterion=crit)
    assert len(calls) == 1
    pruner.set_weights({"0.weight": torch.randn(16, 8)})  # new weights: scored afresh
    pruner.prune(0.5, criterion=crit)
    assert len(calls) == 2


def test_taylor_scores_frozen_weights_and_leaves_them_frozen(mlp_data):
    reference = Pruner(make_mlp(), mlp_data).scores("taylor")
    frozen = make_mlp().requires_grad_(False)
    partly = make_mlp()
    partly[0].requires_grad_(False)
    for model in (frozen, partly):
        flags = [p.requires_grad for p in model.parameters()]
        scores = Pruner(model, mlp_data).scores("taylor")
        assert all(torch.allclose(scores[n], reference[n]) for n in reference)
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
