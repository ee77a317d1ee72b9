"""Measuring: incremental outputs equal a full forward, and Metrics agree with a plain loop."""

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core_models import (IMAGE, TOKENS, VECTOR, make_attention_net, make_bn_cnn, make_branching_mlp, make_concat_cnn,
                      make_mlp, make_residual_cnn, random_data)
from prunelab import Metrics, Pruner
from prunelab.core.evaluation import Evaluator
from prunelab.core.metrics import classification_scores, wilson_interval
from prunelab.core.flops import count_flops


def plain_forward(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


# (builder, input shape, layers to change: late, middle, early, then late again)
CASES = {
    "chain": (make_bn_cnn, IMAGE, ["10", "3", "0", "8"]),
    "chain_inplace": (lambda: make_bn_cnn(inplace=True), IMAGE, ["10", "3", "0", "8"]),
    "mlp_inplace": (lambda: make_mlp(inplace=True), VECTOR, ["4", "2", "0", "4"]),
    "residual": (make_residual_cnn, IMAGE, ["head", "b", "a", "stem", "b"]),
    "concat": (make_concat_cnn, IMAGE, ["head", "right", "mix", "left", "right"]),
    "attention": (make_attention_net, TOKENS, ["head", "attn.out_proj", "embed", "attn.out_proj"]),
    "untraceable": (make_branching_mlp, VECTOR, ["out", "fc2", "fc1", "out"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_incremental_outputs_equal_a_full_forward(case):
    build, shape, order = CASES[case]
    x, y = random_data(shape)
    pruner = Pruner(build(), (x, y))
    assert pruner.incremental == (case != "untraceable")
    assert torch.equal(pruner.outputs(), plain_forward(pruner.model, x))
    for step, name in enumerate(order):
        pruner.prune({name: 0.3 + 0.1 * step})
        assert torch.equal(pruner.outputs(), plain_forward(pruner.model, x)), f"after changing {name}"
    pruner.prune(0.5, granularity="unstructured")  # every layer at once
    assert torch.equal(pruner.outputs(), plain_forward(pruner.model, x))
    pruner.undo()
    pruner.undo()
    assert torch.equal(pruner.outputs(), plain_forward(pruner.model, x))
    pruner.reset()
    assert torch.equal(pruner.outputs(), plain_forward(pruner.model, x))


@pytest.mark.parametrize("case", ["chain", "residual", "concat"])
def test_incremental_outputs_across_batches_and_structured_changes(case):
    build, shape, order = CASES[case]
    x, y = random_data(shape, n=40)
    pruner = Pruner(build(), (x, y), batch_size=16)
    reference = lambda: torch.cat([plain_forward(pruner.model, b) for b in x.split(16)])
    pruner.outputs()
    changed = []
    for name in order[1:]:
        if name in pruner.unit_groups():
            pruner.prune({name: 0.5}, granularity="structured")
            assert torch.equal(pruner.outputs(), reference()), f"after removing units of {name}"
            changed.append(name)
    assert changed, f"no layer of {case} could be pruned structurally: the test checked nothing"


def test_a_late_change_does_not_rerun_the_early_layers():
    x, y = random_data(IMAGE)
    pruner = Pruner(make_bn_cnn(), (x, y))
    calls = {"first conv": 0, "last linear": 0}
    # Hooks on modules the traced graph calls run in the incremental path too. They are in place
    # before the first evaluation: a hook added later counts as a change of its module.
    pruner.model[0].register_forward_hook(lambda *a: calls.__setitem__("first conv", calls["first conv"] + 1))
    pruner.model[10].register_forward_hook(lambda *a: calls.__setitem__("last linear", calls["last linear"] + 1))
    pruner.evaluate()
    calls.update({"first conv": 0, "last linear": 0})
    pruner.prune({"10": 0.5})
    pruner.evaluate()
    assert calls == {"first conv": 0, "last linear": 1}
    pruner.prune({"0": 0.5})
    pruner.evaluate()
    assert calls == {"first conv": 1, "last linear": 2}


def test_evaluator_with_a_tiny_cache_budget_still_agrees():
    model = make_residual_cnn().eval()
    x, _ = random_data(IMAGE)
    ev = Evaluator(model, x, batch_size=16, cache_bytes=2048)
    ev.outputs()
    with torch.no_grad():
        model.b.weight.mul_(0.5)
    assert torch.equal(ev.outputs({"b"}), plain_forward(model, x))
    with torch.no_grad():
        model.stem.weight.mul_(0.5)
    assert torch.equal(ev.outputs({"stem"}), plain_forward(model, x))
    assert torch.equal(ev.outputs(None), plain_forward(model, x))


def plain_loop(model, x, y, classes, batch_size=7):
    """Accuracy, mean loss and per-class accuracy, one small batch at a time."""
    model.eval()
    correct, loss, hits, counts = 0, 0.0, [0] * classes, [0] * classes
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size])
            t = y[i:i + batch_size]
            loss += float(nn.functional.cross_entropy(out, t, reduction="sum"))
            for p, target in zip(out.argmax(1).tolist(), t.tolist()):
                counts[target] += 1
                hits[target] += p == target
                correct += p == target
    return correct / len(x), loss / len(x), [h / c for h, c in zip(hits, counts)]


@pytest.mark.parametrize("build, shape", [(make_mlp, VECTOR), (make_residual_cnn, IMAGE)])
def test_evaluate_agrees_with_a_plain_loop(build, shape):
    x, y = random_data(shape, n=60, classes=3)
    pruner = Pruner(build(), (x, y))
    for amount in (0.0, 0.4, 0.8):
        pruner.prune(amount)
        m = pruner.evaluate()
        acc, loss, per_class = plain_loop(pruner.model, x, y, 3)
        assert m.accuracy == acc
        assert m.loss == pytest.approx(loss, rel=1e-5)
        assert m.per_class == pytest.approx(per_class)
        assert (m.samples, m.data, m.metric_name) == (60, "validation", "accuracy")
        lo, hi = m.accuracy_interval
        assert lo <= m.accuracy <= hi


def test_sizes_count_parameters_masks_and_values(image_data):
    pruner = Pruner(make_bn_cnn(), image_data)
    model = pruner.model
    params = sum(p.numel() for p in model.parameters())
    dense = pruner.evaluate()
    assert (dense.params, dense.nonzero_params, dense.dense_bytes) == (params, params, 4 * params)
    assert dense.sparse_bytes == 4 * params and dense.compression_ratio == 1.0
    pruner.prune({"3": 0.5}, granularity="structured")
    m = pruner.evaluate()
    masks = pruner.masks()
    masked = sum(int((~k).sum()) for k in masks.values())
    assert all(bool((model.get_parameter(n)[~k] == 0).all()) for n, k in masks.items())  # masks act in place
    assert m.nonzero_params == params - masked
    assert m.sparse_bytes == 4 * (params - masked) + math.ceil(sum(k.numel() for k in masks.values()) / 8)
    assert m.dense_bytes == 4 * params
    assert m.compression_ratio == pytest.approx(params / (params - masked))
    assert m.sparsity == pytest.approx(masked / params)


@pytest.mark.parametrize("build, shape", [(make_mlp, VECTOR), (make_bn_cnn, IMAGE), (make_attention_net, TOKENS)])
def test_flops_come_from_torch_flop_counter_and_scale_with_density(build, shape):
    x, y = random_data(shape)
    pruner = Pruner(build(), (x, y))
    model = pruner.model.eval()
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(x[:1])
    total, per_layer = pruner.flops()
    assert total == counter.get_total_flops() > 0
    assert sum(per_layer.values()) <= total
    for l in pruner.layers:  # a dense layer multiplies and adds once per weight and output position
        assert per_layer[l.name] > 0 and per_layer[l.name] % (2 * l.params) == 0
    pruner.prune(0.6)
    m = pruner.evaluate()
    expected = total - sum(per_layer[n] * s for n, s in pruner.sparsity().items())
    assert m.flops == total and m.nonzero_flops == round(expected)
    assert m.theoretical_speedup == pytest.approx(total / m.nonzero_flops)


def test_attention_flops_include_the_attention_and_its_out_projection():
    x, y = random_data(TOKENS)
    pruner = Pruner(make_attention_net(), (x, y))
    total, per_layer = pruner.flops()
    tokens, width = TOKENS[0], 8
    assert per_layer["attn.out_proj"] == 2 * tokens * width * width
    assert total > sum(per_layer.values())  # query/key/value projections and the attention itself
    before = pruner.evaluate().nonzero_flops
    pruner.prune({"attn.out_proj": 0.5})
    assert pruner.evaluate().nonzero_flops == before - per_layer["attn.out_proj"] // 2


def test_flops_of_a_model_that_is_one_layer():
    model = nn.Linear(8, 3)
    total, per_layer = count_flops(model, torch.randn(1, 8), [""])
    assert total == per_layer[""] == 2 * 8 * 3


def test_a_user_metric_and_loss_are_used(mlp_data):
    x, y = mlp_data
    seen = []

    def top2(outputs, targets):
        seen.append(outputs.shape)
        return float((outputs.topk(2, 1).indices == targets[:, None]).any(1).float().mean())

    def hinge(outputs, targets):
        return nn.functional.multi_margin_loss(outputs, targets)

    pruner = Pruner(make_mlp(), (x, y), metric=top2, loss=hinge)
    m = pruner.evaluate()
    out = plain_forward(pruner.model, x)
    assert seen[-1] == (48, 3)
    assert m.accuracy == top2(out, y) and m.metric_name == "top2"
    assert m.loss == pytest.approx(float(hinge(out, y)))
    assert len(m.per_class) == 3  # still class indices, so per-class accuracy is there


def test_regression_targets_with_a_metric(mlp_data):
    x, _ = mlp_data
    targets = torch.randn(len(x), 3)

    def neg_mse(outputs, t):
        return float(-((outputs - t) ** 2).mean())

    pruner = Pruner(make_mlp(), (x, targets), metric=neg_mse, loss=nn.functional.mse_loss)
    assert not pruner.classification
    m = pruner.evaluate()
    out = plain_forward(pruner.model, x)
    assert m.accuracy == neg_mse(out, targets) and m.per_class == () and m.accuracy_interval is None
    assert m.loss == pytest.approx(float(nn.functional.mse_loss(out, targets)))
    pruner.prune(0.5, criterion="taylor")  # the user's loss scores
    assert pruner.overall_sparsity() == pytest.approx(0.5, abs=0.01)


def test_regression_targets_without_a_metric_say_what_to_pass(mlp_data):
    x, _ = mlp_data
    with pytest.raises(ValueError, match=r"not class indices.*Pass metric=f\(outputs, targets\)"):
        Pruner(make_mlp(), (x, torch.randn(len(x), 3)))


def test_eval_samples_measures_a_stratified_subset_and_says_so():
    x, y = random_data(VECTOR, n=90)
    pruner = Pruner(make_mlp(), (x, y), eval_samples=30)
    m = pruner.evaluate()
    assert m.samples == 30 and m.data == "validation (subset of 90)"
    assert torch.bincount(pruner.val_targets).tolist() == [10, 10, 10]
    lo, hi = m.accuracy_interval
    assert 0 <= lo < m.accuracy < hi <= 1 and hi - lo > 0.2  # 30 samples: a wide interval
    again = Pruner(make_mlp(), (x, y), eval_samples=30)
    assert torch.equal(again.val_inputs, pruner.val_inputs)  # a fixed subset


def test_evaluate_is_cached_per_state_and_follows_history(mlp, mlp_data):
    pruner = Pruner(mlp, mlp_data)
    dense = pruner.evaluate()
    pruner.prune(0.95)
    sparse = pruner.evaluate()
    assert sparse.nonzero_params < dense.nonzero_params
    assert pruner.evaluate() is sparse
    pruner.undo()
    assert pruner.evaluate() == dense
    pruner.redo()
    assert pruner.evaluate() == sparse
    acc, _, _ = plain_loop(mlp, *mlp_data, 3)
    assert sparse.accuracy == acc


def test_metrics_report_their_derived_numbers():
    m = Metrics(accuracy=0.9, loss=0.3, per_class=(0.8, 1.0), samples=10, data="validation", params=100,
                nonzero_params=25, dense_bytes=400, sparse_bytes=113, flops=1000, nonzero_flops=250)
    assert (m.compression_ratio, m.theoretical_speedup, m.sparsity) == (4.0, 4.0, 0.75)
    d = m.as_dict()
    assert d["compression_ratio"] == 4.0 and d["theoretical_speedup"] == 4.0 and d["params"] == 100
    assert str(m) == ("accuracy 90.0% on 10 validation samples, 25/100 params nonzero "
                      "(4.0x smaller, 4.0x fewer FLOPs)")


def test_classification_scores_and_interval():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([0, 1, 1, 1])
    acc, loss, per_class, correct = classification_scores(logits, targets, 2)
    assert (acc, correct) == (0.75, 3) and per_class == pytest.approx((1.0, 2 / 3))
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, targets)))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)
