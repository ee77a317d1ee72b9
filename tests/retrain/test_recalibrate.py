"""pruner.recalibrate(): BatchNorm statistics re-estimated and bias compensation, as one exact step of history."""

import pytest
import torch
from torch import nn

import prunelab as pl
from prunelab.core.maskstate import MaskState
from prunelab.retrain.calibration import compensation, removed_inputs

from core_models import assert_same_state, state_of

pytestmark = pytest.mark.usefixtures("one_thread")


def bn_buffers(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n}


def test_recovers_accuracy_after_structured_pruning_as_one_step(cnn_demo_pruner):
    p = cnn_demo_pruner.prune(0.3, granularity="structured")
    raw = p.evaluate().accuracy
    cursor, stats = p.history.cursor, bn_buffers(p.model)
    result = p.recalibrate()
    assert p.history.cursor == cursor + 1
    assert result.accuracy_before == raw
    assert result.accuracy_after == p.evaluate().accuracy
    assert result.accuracy_after >= raw + 0.05  # measured here: 85.6% -> 95.8% or more
    assert result.normalizations == ("1", "4")
    assert any(not torch.equal(stats[n], b) for n, b in bn_buffers(p.model).items())
    assert "after recalibration:" in result.readout() and "pts" in result.readout()


def test_undo_returns_the_raw_pruned_state_and_reset_the_original_bit_for_bit(cnn_demo_pruner):
    p = cnn_demo_pruner
    original = state_of(p.model)
    p.prune(0.5, granularity="structured")
    raw, raw_accuracy = state_of(p.model), p.evaluate().accuracy
    p.recalibrate()
    recalibrated, accuracy = state_of(p.model), p.evaluate().accuracy
    assert p.undo()
    assert_same_state(p.model, raw)
    assert p.evaluate().accuracy == raw_accuracy
    assert p.redo()
    assert_same_state(p.model, recalibrated)
    assert p.evaluate().accuracy == accuracy
    p.reset()
    assert_same_state(p.model, original)
    p.undo()  # reset was a step: undo goes back to the recalibrated state
    assert_same_state(p.model, recalibrated)


def test_a_failure_part_way_leaves_everything_as_it_was(cnn_demo_pruner, monkeypatch):
    p = cnn_demo_pruner.prune(0.3, granularity="structured")
    before, cursor, accuracy = state_of(p.model), p.history.cursor, p.evaluate().accuracy

    enter, calls = MaskState.enter, []

    def broken(self, *args, **kwargs):
        if self.model is p.model:  # the Pruner's own state, as the step is applied (the copy runs fine)
            calls.append(1)
            raise KeyboardInterrupt
        return enter(self, *args, **kwargs)

    monkeypatch.setattr(MaskState, "enter", broken)  # the buffers are written first, then this fails
    with pytest.raises(KeyboardInterrupt):
        p.recalibrate()
    monkeypatch.undo()
    assert calls
    assert_same_state(p.model, before)
    assert p.history.cursor == cursor and p.evaluate().accuracy == accuracy


def test_dropout_stays_off_and_the_model_keeps_its_flags(cnn_demo):
    model = nn.Sequential(*list(cnn_demo.model)[:8], nn.Dropout(0.9), *list(cnn_demo.model)[8:])
    seen = []
    model[8].register_forward_pre_hook(lambda m, a: seen.append(m.training))
    model.eval()
    p = pl.Pruner(model, cnn_demo.val, train_data=cnn_demo.train)
    p.prune(0.3, granularity="structured")
    seen.clear()
    p.recalibrate(bias_compensation=False)
    assert seen and not any(seen)
    assert not any(m.training for m in model.modules())


def test_bias_compensation_adds_the_removed_units_mean_times_the_weight_columns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(64, 6)
    y = torch.arange(64) % 3
    p = pl.Pruner(model, (x, y), train_data=(x, y))
    p.prune({"0": 0.5}, granularity="structured")
    gone = (~p.plans["0"].keep).nonzero().flatten()
    assert torch.equal(removed_inputs(p)["2.weight"].sort().values, gone.sort().values)
    w = dict(p.history.current.weights)
    with p.dense() as dense:
        h = torch.relu(dense[0](x))
        biases, done, skipped = compensation(p, dense, w, [(x, y)])
    expected = w["2.bias"] + w["2.weight"][:, gone] @ h[:, gone].mean(0)
    assert torch.allclose(biases["2.bias"], expected, atol=1e-6)
    assert done == {"2": len(gone)} and not skipped


def test_a_layer_without_a_bias_says_so_and_gets_none():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    x, y = torch.randn(64, 6), torch.arange(64) % 3
    p = pl.Pruner(model, (x, y), train_data=(x, y))
    p.prune({"0": 0.5}, granularity="structured")
    result = p.recalibrate()
    assert "2" in result.uncompensated and "no bias" in result.uncompensated["2"]
    assert not result.applied and p.history.cursor == 1  # no normalization, nothing to compensate: no step


def test_errors_say_what_to_do_and_change_nothing(cnn_demo):
    p = pl.Pruner(cnn_demo.model, cnn_demo.val)  # no train_data
    p.prune(0.3, granularity="structured")
    before = state_of(p.model)
    with pytest.raises(ValueError, match="calibration data"):
        p.recalibrate()
    with pytest.raises(ValueError, match="batches"):
        p.recalibrate(cnn_demo.train, batches=0)
    cnn_demo.model.train()
    with torch.no_grad():
        cnn_demo.model(cnn_demo.val.tensors[0][:32])  # BatchNorm statistics move behind the Pruner's back
    cnn_demo.model.eval()
    moved = state_of(p.model)
    with pytest.raises(ValueError, match="behind the Pruner's back"):
        p.recalibrate(cnn_demo.train)
    assert_same_state(p.model, moved)
    assert not torch.equal(moved["1.running_mean"], before["1.running_mean"])


def test_iterate_reestimates_batchnorm_after_each_step_and_undo_is_exact(cnn_demo_pruner):
    p = cnn_demo_pruner
    original = state_of(p.model)
    p.iterate(0.5, steps=2, epochs_per_step=1, final_epochs=0, progress=False)
    after = state_of(p.model)
    assert not torch.equal(after["1.running_mean"], original["1.running_mean"])  # re-estimated, with the step
    p.undo()
    p.undo()
    assert_same_state(p.model, original)
    p.redo()
    p.redo()
    assert_same_state(p.model, after)
