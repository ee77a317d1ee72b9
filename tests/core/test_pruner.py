"""The Pruner: exact sparsity, structured pruning, masks in place, history, and bad input."""

import copy
import io

import pytest
import torch
from torch import nn

from core_models import (IMAGE, TOKENS, VECTOR, assert_same_state, make_attention_net, make_bn_cnn, make_concat_cnn,
                      make_depthwise_cnn, make_mlp, make_residual_cnn, random_data, state_of)
from prunelab import Pruner
from prunelab.core.plan import Plan


def masked_count(pruner, names=None):
    return sum(int((~pruner.mask(n)).sum()) for n in (names or pruner.layer_names))


def total_weights(pruner, names=None):
    return sum(pruner.layer(n).params for n in (names or pruner.layer_names))


def removed_units(pruner, layer):
    """Output units of ``layer`` whose whole weight row is masked."""
    rows = pruner.mask(layer).reshape(pruner.layer(layer).units, -1)
    return set((~rows.any(1)).nonzero().flatten().tolist())


def planned_removed(pruner, layer):
    """Units a structured plan removes from ``layer`` (its unit keep-vector)."""
    plan = pruner.plans.get(layer)
    return 0 if plan is None else int((~plan.keep).sum())


def snapshot(pruner):
    return (state_of(pruner.model), pruner.plans, pruner.sparsity(), len(pruner.history), pruner.history.cursor,
            pruner.masks(), pruner.model.training)


def assert_unchanged(pruner, snap):
    state, plans, sparsity, length, cursor, masks, training = snap
    assert_same_state(pruner.model, state)
    assert pruner.plans.keys() == plans.keys() and all(pruner.plans[k] is plans[k] for k in plans)
    assert pruner.sparsity() == sparsity
    assert (len(pruner.history), pruner.history.cursor) == (length, cursor)
    now = pruner.masks()
    assert now.keys() == masks.keys() and all(torch.equal(now[k], masks[k]) for k in masks)
    assert pruner.model.training == training


@pytest.fixture
def small_pruner(mlp, mlp_data):
    """A Pruner over the small core MLP on random data (not the demo: see tests/conftest.py)."""
    return Pruner(mlp, mlp_data)


@pytest.fixture
def small_cnn_pruner(image_data):
    """A Pruner over a small BatchNorm CNN on random images."""
    return Pruner(make_bn_cnn(), image_data)


# ---------------------------------------------------------------- exact unstructured sparsity

@pytest.mark.parametrize("amount", [0.0, 0.013, 0.3, 0.5, 0.777, 0.9, 1.0])
def test_global_amount_masks_exactly_that_share_of_all_weights(small_pruner, amount):
    small_pruner.prune(amount)
    assert masked_count(small_pruner) == round(amount * total_weights(small_pruner))
    assert small_pruner.overall_sparsity() == pytest.approx(masked_count(small_pruner) / total_weights(small_pruner))


def test_global_ranking_is_by_magnitude_across_layers(small_pruner):
    small_pruner.prune(0.6)
    with small_pruner.dense():
        w = {n: small_pruner.layer(n).module.weight.detach().abs() for n in small_pruner.layer_names}
    dropped = torch.cat([w[n][~small_pruner.mask(n)] for n in w])
    kept = torch.cat([w[n][small_pruner.mask(n)] for n in w])
    assert dropped.max() <= kept.min()


@pytest.mark.parametrize("amount", [0.25, 0.61])
def test_layer_scope_prunes_each_layer_to_the_amount(small_pruner, amount):
    small_pruner.prune(amount, scope="layer")
    for l in small_pruner.layers:
        assert int((~small_pruner.mask(l.name)).sum()) == round(amount * l.params)


def test_per_layer_dict_is_exact_and_leaves_other_layers_alone(small_pruner):
    small_pruner.prune({"0": 0.5, "4": 0.2})
    assert int((~small_pruner.mask("0")).sum()) == round(0.5 * 128)
    assert int((~small_pruner.mask("4")).sum()) == round(0.2 * 36)
    assert small_pruner.sparsity()["2"] == 0.0
    small_pruner.prune({"2": 0.75})
    assert int((~small_pruner.mask("2")).sum()) == round(0.75 * 192)
    assert int((~small_pruner.mask("0")).sum()) == 64  # untouched by a call that does not name it


def test_amount_is_a_slider_not_a_ratchet(small_pruner, mlp):
    original = mlp[0].weight.detach().clone()
    small_pruner.prune({"0": 0.8})
    small_pruner.prune({"0": 0.3})
    assert int((~small_pruner.mask("0")).sum()) == round(0.3 * 128)
    kept = small_pruner.mask("0")
    assert torch.equal(mlp[0].weight[kept], original[kept])  # weights come back with their values
    small_pruner.prune({"0": 0})
    assert "0" not in small_pruner.plans and torch.equal(mlp[0].weight, original)


def test_plans_record_how_each_layer_is_pruned(small_pruner):
    small_pruner.prune({"0": 0.5}, criterion="random")
    plan = small_pruner.plans["0"]
    assert (plan.granularity, plan.criterion, plan.amount, plan.threshold) == ("unstructured", "random", 0.5, None)
    assert torch.equal(plan.keep, small_pruner.mask("0"))


def test_threshold_prunes_exactly_the_weights_below_it(small_pruner, mlp):
    with torch.no_grad():
        dense = {n: small_pruner.layer(n).module.weight.abs().clone() for n in small_pruner.layer_names}
    small_pruner.prune(threshold=0.1)
    for n, w in dense.items():
        assert torch.equal(small_pruner.mask(n), w >= 0.1)
        assert small_pruner.plans[n].threshold == 0.1
    small_pruner.prune(threshold={"2": 0.2})
    assert torch.equal(small_pruner.mask("2"), dense["2"] >= 0.2)
    assert torch.equal(small_pruner.mask("0"), dense["0"] >= 0.1)


def test_structured_threshold_removes_units_by_mean_magnitude(small_pruner, mlp):
    mean_abs = mlp[0].weight.detach().abs().mean(1)
    t = float(mean_abs.median())
    small_pruner.prune(threshold={"0": t}, granularity="structured")
    assert removed_units(small_pruner, "0") == set((mean_abs < t).nonzero().flatten().tolist())


def test_masked_weights_are_zero_in_the_model_and_kept_ones_untouched(small_pruner, mlp):
    before = state_of(mlp)
    small_pruner.prune(0.7)
    for n in small_pruner.layer_names:
        w, keep = mlp.get_submodule(n).weight.detach(), small_pruner.mask(n)
        assert bool((w[~keep] == 0).all())
        assert torch.equal(w[keep], before[f"{n}.weight"][keep])
        assert torch.equal(mlp.get_submodule(n).bias, before[f"{n}.bias"])  # unstructured leaves biases


def test_masks_lists_only_masked_parameters(small_pruner):
    assert small_pruner.masks() == {}
    small_pruner.prune({"2": 0.5})
    assert set(small_pruner.masks()) == {"2.weight"}
    m = small_pruner.masks()["2.weight"]
    m[:] = False  # a copy: changing it changes nothing
    assert small_pruner.sparsity()["2"] == 0.5


# ---------------------------------------------------------------- structured

def test_structured_zeroes_rows_biases_and_the_next_layers_columns(small_pruner, mlp):
    small_pruner.prune({"0": 0.25}, granularity="structured")
    gone = sorted(removed_units(small_pruner, "0"))
    assert len(gone) == round(0.25 * 16)
    assert bool((mlp[0].weight[gone] == 0).all()) and bool((mlp[0].bias[gone] == 0).all())
    assert bool((mlp[2].weight[:, gone] == 0).all())
    kept = [i for i in range(16) if i not in gone]
    assert bool((mlp[0].weight[kept] != 0).all())
    assert set(small_pruner.masks()) == {"0.weight", "0.bias", "2.weight"}


def test_structured_removes_the_weakest_units_by_l1(small_pruner, mlp):
    l1 = mlp[2].weight.detach().abs().sum(1)
    small_pruner.prune({"2": 0.5}, granularity="structured")
    assert removed_units(small_pruner, "2") == set(l1.argsort()[:6].tolist())


def test_structured_conv_zeroes_batchnorm_and_removed_channels_output_zero(small_cnn_pruner, image_data):
    model = small_cnn_pruner.model
    small_cnn_pruner.prune({"3": 0.5}, granularity="structured")
    gone = sorted(removed_units(small_cnn_pruner, "3"))
    assert len(gone) == 3
    bn = model[4]
    assert bool((bn.weight[gone] == 0).all()) and bool((bn.bias[gone] == 0).all())
    assert bool((model[3].bias[gone] == 0).all())
    cols = torch.arange(96).reshape(6, 16)[gone].flatten()
    assert bool((model[8].weight[:, cols] == 0).all())
    seen = {}
    model[5].register_forward_hook(lambda m, i, o: seen.setdefault("relu", o.detach().clone()))
    model.eval()
    with torch.no_grad():
        model(image_data[0])
    assert bool((seen["relu"][:, gone] == 0).all())  # the channel is really gone, after BatchNorm too


def test_residual_coupled_layers_lose_the_same_units(image_data):
    pruner = Pruner(make_residual_cnn(), image_data)
    pruner.prune({"b": 0.5}, granularity="structured")
    assert pruner.plans["stem"] is pruner.plans["b"]
    gone = removed_units(pruner, "stem")
    assert gone == removed_units(pruner, "b") and len(gone) == 3
    m, idx = pruner.model, sorted(gone)
    for bn in (m.stem_bn, m.b_bn):
        assert bool((bn.weight[idx] == 0).all()) and bool((bn.bias[idx] == 0).all())
    assert bool((m.a.weight[:, idx] == 0).all()) and bool((m.head.weight[:, idx] == 0).all())


def test_unknown_layer_suggests_close_names(image_data):
    pruner = Pruner(make_residual_cnn(), image_data)
    with pytest.raises(ValueError, match="unknown layer 'stme'. Did you mean 'stem'"):
        pruner.prune({"stme": 0.5})


def test_conflicting_amounts_for_coupled_layers_are_refused(image_data):
    pruner = Pruner(make_residual_cnn(), image_data)
    snap = snapshot(pruner)
    with pytest.raises(ValueError, match="coupled"):
        pruner.prune({"stem": 0.5, "b": 0.25}, granularity="structured")
    assert_unchanged(pruner, snap)
    pruner.prune({"stem": 0.5, "b": 0.5}, granularity="structured")  # agreeing amounts are fine
    assert len(removed_units(pruner, "b")) == 3


def test_concat_branches_clear_their_own_columns_of_the_consumer(image_data):
    pruner = Pruner(make_concat_cnn(), image_data)
    pruner.prune({"right": 0.4}, granularity="structured")
    gone = sorted(removed_units(pruner, "right"))
    assert len(gone) == 2
    mix = pruner.model.mix.weight.detach()
    zero_cols = [c for c in range(8) if bool((mix[:, c] == 0).all())]
    assert zero_cols == [3 + g for g in gone]


def test_depthwise_channels_go_with_the_layer_feeding_them(image_data):
    pruner = Pruner(make_depthwise_cnn(), image_data)
    pruner.prune({"0": 0.5}, granularity="structured")
    gone = sorted(removed_units(pruner, "0"))
    assert removed_units(pruner, "2") == set(gone)
    m = pruner.model
    assert bool((m[3].weight[gone] == 0).all()) and bool((m[5].weight[:, gone] == 0).all())


@pytest.mark.parametrize("amount", [0.2, 0.5, 0.9])
def test_global_structured_removes_that_share_of_all_units(small_cnn_pruner, amount):
    small_cnn_pruner.prune(amount, granularity="structured")
    units = {n: small_cnn_pruner.layer(n).units for n in small_cnn_pruner.unit_groups()}  # every layer but the output
    assert set(units) == set(small_cnn_pruner.layer_names[:-1])
    assert sum(planned_removed(small_cnn_pruner, n) for n in units) == round(amount * sum(units.values()))
    planned = [n for n in units if n in small_cnn_pruner.plans]
    assert planned  # the checks below run
    for n in planned:  # each planned unit is removed (more rows go dark when a whole input is gone)
        plan = small_cnn_pruner.plans[n]
        assert set((~plan.keep).nonzero().flatten().tolist()) <= removed_units(small_cnn_pruner, n)
    assert small_cnn_pruner.sparsity()["10"] > 0  # the output layer loses the columns of removed units only
    assert removed_units(small_cnn_pruner, "10") == set()


@pytest.mark.parametrize("amount", [0.3, 0.5])
def test_structured_layer_scope_is_exact_per_group(image_data, amount):
    pruner = Pruner(make_residual_cnn(), image_data)
    pruner.prune(amount, granularity="structured", scope="layer")
    assert len(removed_units(pruner, "stem")) == round(amount * pruner.layer("stem").units)
    assert len(removed_units(pruner, "a")) == round(amount * pruner.layer("a").units)


def test_output_layer_is_reported_and_refused_for_structured(small_pruner):
    assert "output" in small_pruner.structured_blocked["4"]
    snap = snapshot(small_pruner)
    with pytest.raises(ValueError, match="cannot be pruned structurally"):
        small_pruner.prune({"4": 0.5}, granularity="structured")
    assert_unchanged(small_pruner, snap)


def test_unstructured_after_structured_replaces_the_group_plan(small_pruner):
    small_pruner.prune({"0": 0.5}, granularity="structured")
    small_pruner.prune({"0": 0.1})
    assert small_pruner.sparsity()["2"] == 0.0 and "0.bias" not in small_pruner.masks()
    assert int((~small_pruner.mask("0")).sum()) == round(0.1 * 128)


# ---------------------------------------------------------------- 2:4

def test_two_of_four_zeroes_exactly_two_in_every_four(small_pruner, mlp):
    small_pruner.prune(0.5, granularity="2:4")
    for n in small_pruner.layer_names:
        keep = small_pruner.mask(n)
        assert (keep.reshape(-1, 4).sum(1) == 2).all()
        w = mlp.get_submodule(n).weight.detach()
        assert ((w == 0).reshape(-1, 4).sum(1) >= 2).all()
    small_pruner.prune(0, granularity="2:4")
    assert small_pruner.masks() == {}


def test_two_of_four_skips_rows_that_do_not_divide_by_four_in_a_global_call(small_cnn_pruner):
    with pytest.warns(UserWarning, match=r"0: its rows are 9 weights long"):  # conv "0" has rows of 9 weights
        small_cnn_pruner.prune(0.5, granularity="2:4")
    assert small_cnn_pruner.sparsity()["0"] == 0.0
    assert small_cnn_pruner.sparsity()["3"] == 0.5
    with pytest.raises(ValueError, match="multiple of 4"):
        small_cnn_pruner.prune({"0": 0.5}, granularity="2:4")


def test_two_of_four_amount_must_be_half(small_pruner):
    snap = snapshot(small_pruner)
    with pytest.raises(ValueError, match="0.5"):
        small_pruner.prune(0.7, granularity="2:4")
    assert_unchanged(small_pruner, snap)


# ---------------------------------------------------------------- the model stays an ordinary module

def test_model_stays_a_plain_module_while_pruned(small_pruner, mlp):
    keys = list(mlp.state_dict())
    names = [n for n, _ in mlp.named_parameters()]
    small_pruner.prune(0.5, granularity="structured")
    assert list(mlp.state_dict()) == keys  # no weight_orig / weight_mask
    assert [n for n, _ in mlp.named_parameters()] == names
    assert type(mlp) is nn.Sequential and type(mlp[0]) is nn.Linear
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._parameters.get("weight_orig")
               for m in mlp.modules())


def test_deepcopy_holds_the_pruned_weights_and_is_independent(small_pruner, mlp, mlp_data):
    small_pruner.prune(0.8)
    clone = copy.deepcopy(mlp)
    assert torch.equal(clone[0].weight, mlp[0].weight)
    with torch.no_grad():
        assert torch.equal(clone(mlp_data[0]), mlp(mlp_data[0]))
    zeros = int((clone[0].weight == 0).sum())
    assert zeros == int((~small_pruner.mask("0")).sum()) > 0
    small_pruner.reset()
    assert int((clone[0].weight == 0).sum()) == zeros  # the copy keeps its zeros
    assert int((mlp[0].weight == 0).sum()) == 0


def test_torch_save_and_weights_only_load_round_trip(small_cnn_pruner):
    small_cnn_pruner.prune(0.6)
    buffer = io.BytesIO()
    torch.save(small_cnn_pruner.model.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = make_bn_cnn()
    fresh.load_state_dict(loaded)  # strict: same keys as an unpruned model
    for k, v in small_cnn_pruner.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    buffer = io.BytesIO()
    torch.save(small_cnn_pruner.model, buffer)  # the whole module pickles too (no wrappers)
    buffer.seek(0)
    whole = torch.load(buffer, weights_only=False)
    assert torch.equal(whole[3].weight, small_cnn_pruner.model[3].weight)


def test_dense_loads_the_original_weights_temporarily(small_pruner, mlp):
    original = mlp[0].weight.detach().clone()
    small_pruner.prune(0.9)
    pruned = mlp[0].weight.detach().clone()
    with small_pruner.dense() as model:
        assert model is mlp and torch.equal(mlp[0].weight, original)
    assert torch.equal(mlp[0].weight, pruned)


def test_train_mode_survives_pruning_and_measuring(image_data):
    model = make_bn_cnn().train()
    pruner = Pruner(model, image_data)
    pruner.prune(0.5, granularity="structured")
    pruner.prune(0.5, criterion="taylor")
    pruner.evaluate()
    assert model.training and all(m.training for m in model.modules())


# ---------------------------------------------------------------- history

def test_reset_restores_the_original_weights_bit_for_bit(small_cnn_pruner):
    before = state_of(small_cnn_pruner.model)
    small_cnn_pruner.prune(0.9).prune(0.5, granularity="structured").prune({"3": 0.2}, criterion="random")
    small_cnn_pruner.set_weights({"3.weight": torch.randn(6, 4, 3, 3)})
    small_cnn_pruner.reset()
    assert_same_state(small_cnn_pruner.model, before)
    assert small_cnn_pruner.plans == {} and small_cnn_pruner.masks() == {}


def test_undo_and_redo_walk_the_history(small_pruner, mlp):
    states = [state_of(mlp)]
    for a in (0.3, 0.6, 0.9):
        small_pruner.prune(a)
        states.append(state_of(mlp))
    assert not small_pruner.can_redo
    for i in (2, 1, 0):
        assert small_pruner.undo()
        assert_same_state(mlp, states[i])
    assert not small_pruner.can_undo and small_pruner.undo() is False
    for i in (1, 2, 3):
        assert small_pruner.redo()
        assert_same_state(mlp, states[i])
    assert small_pruner.redo() is False
    assert masked_count(small_pruner) == round(0.9 * total_weights(small_pruner))


def test_a_new_change_drops_the_redo_branch(small_pruner):
    small_pruner.prune(0.3).prune(0.6)
    small_pruner.undo()
    assert small_pruner.can_redo
    small_pruner.prune(0.1)
    assert not small_pruner.can_redo and small_pruner.redo() is False
    small_pruner.undo()
    assert masked_count(small_pruner) == round(0.3 * total_weights(small_pruner))


def test_reset_is_a_step_of_history_and_can_be_undone(small_pruner, mlp):
    original = state_of(mlp)
    small_pruner.prune(0.7)
    pruned = state_of(mlp)
    small_pruner.reset()
    assert_same_state(mlp, original)
    assert small_pruner.can_undo
    small_pruner.undo()
    assert_same_state(mlp, pruned)
    assert small_pruner.sparsity() == pytest.approx(
        {n: int((~small_pruner.mask(n)).sum()) / small_pruner.layer(n).params for n in small_pruner.layer_names})
    small_pruner.redo()
    assert_same_state(mlp, original)


def test_reset_of_an_unpruned_model_adds_no_history(small_pruner):
    small_pruner.reset()
    assert not small_pruner.can_undo


def test_set_weights_is_undoable_and_masks_stay(small_pruner, mlp):
    small_pruner.prune({"0": 0.5})
    keep = small_pruner.mask("0")
    new = torch.full((16, 8), 0.5)
    small_pruner.set_weights({"0.weight": new})
    assert torch.equal(mlp[0].weight, new * keep)
    small_pruner.undo()
    assert not torch.equal(mlp[0].weight, new * keep) and torch.equal(small_pruner.mask("0"), keep)


def test_listeners_hear_every_change(small_pruner):
    calls = []
    unsubscribe = small_pruner.on_change(lambda: calls.append(small_pruner.overall_sparsity()))
    small_pruner.prune(0.5)
    small_pruner.undo()
    small_pruner.redo()
    small_pruner.reset()
    assert calls == pytest.approx([0.5, 0.0, 0.5, 0.0], abs=0.01)
    unsubscribe()
    small_pruner.prune(0.2)
    assert len(calls) == 4


# ---------------------------------------------------------------- bad input: a clear error, nothing changed

@pytest.fixture
def pruned(small_pruner):
    small_pruner.prune({"0": 0.5, "2": 0.3})
    return small_pruner


@pytest.mark.parametrize("call, message", [
    (lambda p: p.prune(1.5), r"\[0, 1\]"),
    (lambda p: p.prune(-0.1), r"\[0, 1\]"),
    (lambda p: p.prune(float("nan")), r"\[0, 1\]"),
    (lambda p: p.prune({"0": 0.2, "2": 2.0}), r"\[0, 1\]"),
    (lambda p: p.prune(True), r"\[0, 1\]"),
    (lambda p: p.prune("0.5"), r"\[0, 1\]"),
    (lambda p: p.prune({"O": 0.5}), r"unknown layer 'O'. Prunable layers: \['0', '2', '4'\]"),
    (lambda p: p.prune({"00": 0.5}), r"unknown layer '00'. Did you mean '0'"),
    (lambda p: p.prune({"0": 0.9, "fc9": 0.5}), r"unknown layer 'fc9'"),
    (lambda p: p.prune(0.5, criterion="magnitud"), r"unknown criterion 'magnitud'.*magnitude"),
    (lambda p: p.prune(0.5, granularity="channel"), r"unknown granularity 'channel'.*structured"),
    (lambda p: p.prune(0.5, scope="model"), r"unknown scope"),
    (lambda p: p.prune(), r"either amount .* or threshold"),
    (lambda p: p.prune(0.5, threshold=0.1), r"not both"),
    (lambda p: p.prune(threshold=-1.0), r"threshold must be a number >= 0"),
    (lambda p: p.prune(threshold=0.1, criterion="random"), r"criterion='magnitude' only"),
    (lambda p: p.prune(threshold=0.1, granularity="2:4"), r"2:4"),
    (lambda p: p.prune(threshold={"nope": 0.1}), r"unknown layer 'nope'"),
    (lambda p: p.layer("00"), r"unknown layer '00'. Did you mean '0'"),
    (lambda p: p.set_weights({"0.weight": torch.zeros(3, 3)}), r"shape"),
    (lambda p: p.set_weights({"9.weight": torch.zeros(3, 3)}), r"unknown parameter"),
])
def test_bad_prune_arguments_raise_and_change_nothing(pruned, call, message):
    snap = snapshot(pruned)
    with pytest.raises(ValueError, match=message):
        call(pruned)
    assert_unchanged(pruned, snap)


def _keep(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5


@pytest.mark.parametrize("plans, weights, error, message", [
    (lambda p: {"9": None}, None, ValueError, r"unknown layer '9'"),
    (lambda p: {"0": "half"}, None, TypeError, r"plans\['0'\] must be a prunelab Plan"),
    (lambda p: {"0": Plan("channel", "magnitude", 0.5, None, _keep(p.layer("0").shape))}, None, TypeError,
     r"must be a prunelab Plan"),
    (lambda p: {"0": Plan("unstructured", "magnitude", 0.5, None, _keep(p.layer("0").shape).float())}, None,
     ValueError, r"keep must be a bool tensor shaped \(16, 8\).*torch.float32"),
    (lambda p: {"0": Plan("unstructured", "magnitude", 0.5, None, _keep((3, 3)))}, None, ValueError,
     r"keep must be a bool tensor shaped \(16, 8\).*\(3, 3\)"),
    (lambda p: {"0": Plan("unstructured", "magnitude", 0.5, None, [True] * 8)}, None, ValueError,
     r"keep must be a bool tensor"),
    (lambda p: {"0": Plan("structured", "magnitude", 0.5, None, _keep(p.layer("0").shape))}, None, ValueError,
     r"shaped \(16,\)"),  # structured plans keep units, not weights
    (lambda p: {"4": Plan("structured", "magnitude", 0.5, None, _keep((p.layer("4").units,)))}, None, ValueError,
     r"layer '4' cannot be pruned structurally: its outputs are the model's outputs"),
    (lambda p: {"0": None}, {"0.weight": torch.zeros(2, 2)}, ValueError, r"parameter '0.weight' has shape"),
    (lambda p: {"0": Plan("unstructured", "magnitude", 0.5, None, _keep(p.layer("0").shape))},
     {"0.weihgt": torch.zeros(16, 8)}, ValueError, r"unknown parameter '0.weihgt'. Did you mean '0.weight'"),
])
def test_bad_set_plans_raise_and_change_nothing(pruned, plans, weights, error, message):
    assert pruned.layer("0").shape == (16, 8)  # the shapes the messages name
    snap = snapshot(pruned)
    with pytest.raises(error, match=message):
        pruned.set_plans(plans(pruned), weights=weights)
    assert_unchanged(pruned, snap)


def test_set_plans_applies_explicit_masks_as_one_step(pruned):
    keep = _keep(pruned.layer("2").shape)
    before = (len(pruned.history), pruned.history.cursor)
    pruned.set_plans({"2": Plan("unstructured", "custom", None, None, keep), "0": None})
    assert torch.equal(pruned.mask("2"), keep) and "0" not in pruned.plans
    assert pruned.sparsity()["2"] == pytest.approx(1 - int(keep.sum()) / keep.numel())
    assert (len(pruned.history), pruned.history.cursor) == (before[0] + 1, before[1] + 1)
    pruned.undo()
    assert pruned.plans["0"].amount == 0.5 and pruned.plans["2"].amount == 0.3


def test_set_plans_spreads_a_structured_plan_over_coupled_layers(image_data):
    pruner = Pruner(make_residual_cnn(), image_data)
    keep = torch.tensor([True, False, True, True, False, True])
    assert pruner.layer("stem").units == len(keep)
    pruner.set_plans({"stem": Plan("structured", "custom", 2 / 6, None, keep)})
    assert set(pruner.plans) == {"stem", "b"} and pruner.plans["b"] is pruner.plans["stem"]  # tied by the addition
    assert removed_units(pruner, "stem") == removed_units(pruner, "b") == {1, 4}


def test_regression_without_loss_cannot_score_by_taylor(mlp, mlp_data):
    x, _ = mlp_data
    pruner = Pruner(mlp, (x, torch.randn(len(x), 3)), metric=lambda o, t: float(-((o - t) ** 2).mean()))
    snap = snapshot(pruner)
    with pytest.raises(ValueError, match="loss="):
        pruner.prune(0.5, criterion="taylor")
    with pytest.raises(ValueError, match="class-index targets"):
        pruner.prune(0.5, criterion="attribution")
    assert_unchanged(pruner, snap)


def test_attention_model_has_no_structurally_prunable_layer(image_data):
    x, y = random_data(TOKENS)
    pruner = Pruner(make_attention_net(), (x, y))
    snap = snapshot(pruner)
    with pytest.raises(ValueError, match="no layer of this model can be pruned structurally.*MultiheadAttention"):
        pruner.prune(0.5, granularity="structured")
    assert_unchanged(pruner, snap)
    pruner.prune(0.5)  # unstructured works, out_proj included
    assert pruner.sparsity()["attn.out_proj"] > 0


def constructor_cases():
    x, y = random_data(VECTOR)
    bad_weights = make_mlp()
    with torch.no_grad():
        bad_weights[2].weight[0, 0] = float("nan")
    return [
        ("no layers", nn.Sequential(nn.ReLU(), nn.Dropout()), (x, y), {}, "no prunable layers"),
        ("wrong shape", make_mlp(), (torch.randn(10, 5), y[:10]), {}, r"val_data does not fit.*\(5,\)"),
        ("wrong dtype", make_mlp(), (x.double(), y), {}, r"val_data does not fit.*float64"),
        ("wrong device", make_mlp(), (x.to("meta"), y), {}, r"cannot be moved to the model's device"),
        ("float targets", make_mlp(), (x, torch.randn(len(x))), {}, r"not class indices.*metric="),
        ("one-hot targets", make_mlp(), (x, nn.functional.one_hot(y, 3)), {}, r"not class indices"),
        ("targets out of range", make_mlp(), (x, y + 5), {}, r"val_data: targets range over .* must lie in \[0, 3\)"),
        ("empty tensors", make_mlp(), (x[:0], y[:0]), {}, r"val_data is empty"),
        ("empty dataset", make_mlp(), torch.utils.data.TensorDataset(x[:0], y[:0]), {}, r"val_data is empty"),
        ("unpaired", make_mlp(), (x, y[:-1]), {}, r"48 inputs but 47 targets"),
        ("non-finite weights", bad_weights, (x, y), {}, r"non-finite.*2.weight"),
        ("train data misfit", make_mlp(), (x, y), {"train_data": (torch.randn(4, 3), y[:4])},
         r"train_data does not fit"),
        ("empty train data", make_mlp(), (x, y), {"train_data": (x[:0], y[:0])}, r"train_data is empty"),
    ]


@pytest.mark.parametrize("case", constructor_cases(), ids=lambda c: c[0])
def test_bad_model_or_data_is_refused_and_left_unchanged(case):
    _, model, data, kwargs, message = case
    model.train()
    before = state_of(model)
    with pytest.raises((ValueError, TypeError), match=message):
        Pruner(model, data, **kwargs)
    assert_same_state(model, before)
    assert model.training


def test_data_of_the_wrong_type_says_what_to_pass(mlp):
    with pytest.raises(TypeError, match="DataLoader, a Dataset"):
        Pruner(mlp, [1, 2, 3])


def test_narrow_integer_targets_are_class_indices(mlp, mlp_data):
    x, y = mlp_data
    pruner = Pruner(mlp, (x, y.int()), train_data=(x, y.short()))
    assert pruner.classification and pruner.evaluate().accuracy == Pruner(make_mlp(), mlp_data).evaluate().accuracy
    pruner.prune(0.5, criterion="taylor")
    assert pruner.overall_sparsity() == pytest.approx(0.5, abs=0.01)


def test_numpy_numbers_are_amounts_and_thresholds(small_pruner):
    np = pytest.importorskip("numpy")
    small_pruner.prune(np.float32(0.5))
    assert masked_count(small_pruner) == round(0.5 * total_weights(small_pruner))
    small_pruner.prune({"0": np.float64(0.25)}, scope="layer")
    assert int((~small_pruner.mask("0")).sum()) == 32
    small_pruner.prune(threshold=np.float32(0.1))
    assert small_pruner.plans["0"].threshold == pytest.approx(0.1)


class LayerNormMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.ln, self.b = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.b(torch.relu(self.ln(self.a(x))))


class ResidualStream(nn.Module):
    """Blocks added onto the input in a loop: every block is coupled through the stream."""

    def __init__(self):
        super().__init__()
        self.blocks, self.head = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)]), nn.Linear(8, 3)

    def forward(self, x):
        for block in self.blocks:
            x = x + torch.relu(block(x))
        return self.head(x)


class TiedLinear(nn.Module):
    """One layer applied twice."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.a(torch.relu(self.a(x)))))


UNUSUAL = {
    "layernorm": (LayerNormMLP, VECTOR),
    "residual stream": (ResidualStream, VECTOR),
    "tied": (TiedLinear, VECTOR),
    "groupnorm": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                                        nn.Linear(256, 3)), IMAGE),
    "batchnorm without affine": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False),
                                                       nn.BatchNorm2d(4, affine=False), nn.ReLU(), nn.Flatten(),
                                                       nn.Linear(256, 3)), IMAGE),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(24, 3)), (2, 8)),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.Conv3d(4, 4, 1), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(32, 3)), (1, 4, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_models_prune_or_explain_why_not(name):
    build, shape = UNUSUAL[name]
    torch.manual_seed(0)
    model = build()
    x, y = random_data(shape, n=20)
    pruner = Pruner(model, (x, y))
    assert all(isinstance(r, str) and r for r in pruner.structured_blocked.values())
    for granularity in ("unstructured", "structured", "2:4"):
        try:
            pruner.prune(0.5, granularity=granularity)
        except ValueError as e:
            assert granularity == "structured" and "can be pruned structurally" in str(e)
            continue
        model.eval()
        with torch.no_grad():
            assert torch.equal(pruner.outputs(), model(x))
        assert pruner.overall_sparsity() > 0
        pruner.reset()


def test_repr_names_the_model_and_sparsity(small_pruner):
    small_pruner.prune(0.25)
    assert repr(small_pruner) == "Pruner(Sequential, 3 prunable layers, sparsity 25.0%)"


def test_global_structured_never_removes_a_whole_layer():
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[2].weight[3:].mul_(1e-3)  # three units of layer "2" outscore every unit of layer "0"
    pruner = Pruner(model, (x, y))
    pruner.prune(13 / 16, granularity="structured")  # 3 units of 16 stay
    for name in ("0", "2"):
        assert pruner.mask(name).any(1).sum() >= 1, name
    assert pruner.sparsity()["0"] < 1


def test_per_class_accuracy_is_nan_for_a_class_without_samples():
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(10, 4), torch.tensor([0, 1] * 5)
    per_class = Pruner(model, (x, y)).evaluate().per_class
    assert len(per_class) == 3 and per_class[2] != per_class[2]
