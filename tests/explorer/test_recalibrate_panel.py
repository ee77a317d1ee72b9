"""Recovery without training in the explorer: "after recalibration: N% (+x pts)" beside the raw
readout, measured in the background for the state shown (stale results dropped), applied with one
click as one step of history; hidden for a model without BatchNorm."""

import ipywidgets as widgets
import pytest

import prunelab as pl
from prunelab.explorer.background import Scheduler
from prunelab.explorer.panels.recalibrate import RecalibratePanel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cnn_explorer():
    ex = pl.explore("digits-cnn")
    ex.wait()
    yield ex
    ex.close()


def test_readout_sits_beside_the_raw_readout_and_apply_is_one_undoable_step(cnn_explorer):
    ex = cnn_explorer
    ex.pruner.reset()
    ex.wait()
    panel = ex.panels["Recover"]
    raw = ex.views["metrics"].readout
    beside = [c for c in ex.children if isinstance(c, widgets.HBox) and raw in c.children]
    assert beside and panel.inline in beside[0].children
    assert panel.label.value == ""  # dense: nothing to recover

    ex.pruner.prune(0.3, granularity="structured")
    ex.wait()
    raw_accuracy = ex.pruner.evaluate().accuracy
    result = panel.result
    assert result is not None and result.accuracy_before == pytest.approx(raw_accuracy)
    assert result.gain > 0.03  # BatchNorm re-estimation recovers points on digits-cnn
    assert result.readout() in panel.label.value and "after recalibration:" in panel.label.value
    assert ex.pruner.evaluate().accuracy == raw_accuracy  # measured on a copy: nothing applied yet

    steps = len(ex.pruner.history)
    panel.apply_button.click()
    ex.wait()
    assert len(ex.pruner.history) == steps + 1
    assert ex.pruner.evaluate().accuracy == pytest.approx(result.accuracy_after)
    assert ex.state.metrics.accuracy == pytest.approx(result.accuracy_after)  # the raw readout follows
    assert "recalibrated" in panel.label.value and panel.apply_button.disabled

    ex.pruner.undo()
    ex.wait()
    assert ex.pruner.evaluate().accuracy == raw_accuracy  # back to the raw pruned state
    assert result.readout() in panel.label.value and not panel.apply_button.disabled


def test_a_result_for_a_state_left_behind_is_dropped(cnn_explorer):
    ex = cnn_explorer
    ex.pruner.reset()
    ex.wait()
    panel = ex.panels["Recover"]
    ex.pruner.prune(0.3, granularity="structured")
    panel.start()                                   # measuring 30% ...
    ex.pruner.prune(0.5, granularity="structured")  # ... while the state moves on
    plans = dict(ex.pruner.plans)
    ex.wait()
    assert panel.result.accuracy_before == pytest.approx(ex.pruner.evaluate().accuracy)
    measured = panel.result
    applied = panel.apply()
    assert applied is measured and ex.pruner.plans == plans  # of the state shown, on top of it
    assert ex.pruner.evaluate().accuracy == pytest.approx(applied.accuracy_after)
    ex.pruner.reset()
    ex.wait()


def test_hidden_for_a_model_without_batchnorm_with_the_reason(mlp_demo_pruner):
    scheduler = Scheduler()
    panel = RecalibratePanel(mlp_demo_pruner, scheduler=scheduler)
    mlp_demo_pruner.prune(0.5)
    scheduler.wait()
    assert panel.inline.layout.display == "none" and panel.result is None
    assert "no BatchNorm" in panel.details.value
    assert panel.apply() is None and len(mlp_demo_pruner.history) == 2
