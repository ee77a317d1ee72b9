"""Each control changes the Pruner's state through it; when the Pruner changes from elsewhere, the
controls follow without acting."""

import threading
from collections import OrderedDict

import pytest
import torch
from torch import nn

import prunelab as pl
from prunelab.explorer.controls import on_step


@pytest.fixture
def ex(explorer):
    explorer.pruner.reset()
    state = explorer.state  # the controls show the hub's choices without acting on them
    state.criterion, state.granularity, state.mode, state.driver = "magnitude", "unstructured", "amount", "global"
    explorer.wait()
    c = explorer.controls
    assert (c.criterion.value, c.granularity.value, c.mode.value) == ("magnitude", "unstructured", "amount")
    return explorer


def test_css_classes_for_tests_and_styling(ex):
    c = ex.controls
    assert "prunelab-global-slider" in c.global_slider._dom_classes
    assert all("prunelab-layer-slider" in s._dom_classes for s in c.layer_sliders.values())
    assert "prunelab-reset" in c.reset._dom_classes
    assert [s.description for s in c.layer_sliders.values()] == ["0", "2", "4"]
    assert "Linear 300×64" in c.layer_labels["0"].value and "19.2k" in c.layer_labels["0"].value


def test_global_slider_prunes_every_layer(ex):
    ex.controls.global_slider.value = 0.8
    assert abs(ex.pruner.overall_sparsity() - 0.8) < 1e-4
    assert {p.criterion for p in ex.pruner.plans.values()} == {"magnitude"}
    # per-layer sliders show how the global ranking spread the pruning
    for name, s in ex.controls.layer_sliders.items():  # on the sliders' 1% grid (the page snaps to it)
        assert s.value == on_step(ex.pruner.plans[name].amount)
        assert abs(s.value - ex.pruner.plans[name].amount) <= 0.005 + 1e-9
    assert f"{ex.pruner.evaluate().accuracy:.1%}" in ex.views["metrics"].readout.value


def test_layer_slider_prunes_that_layer_only(ex):
    ex.controls.layer_sliders["2"].value = 0.6
    sparsity = ex.pruner.sparsity()
    assert sparsity["2"] == pytest.approx(0.6) and sparsity["0"] == 0 and sparsity["4"] == 0
    assert abs(ex.controls.global_slider.value - ex.pruner.overall_sparsity()) <= 0.005


def test_criterion_choice_reapplies_with_the_new_criterion(ex):
    ex.controls.global_slider.value = 0.5
    ex.controls.criterion.value = "random"
    assert {p.criterion for p in ex.pruner.plans.values()} == {"random"}
    assert abs(ex.pruner.overall_sparsity() - 0.5) < 1e-3


def test_taylor_uses_the_scores_computed_in_the_background(ex, monkeypatch):
    from prunelab.core.criteria import Taylor

    ex.controls.criterion.value = "taylor"
    ex.wait()  # weight scores are computed off the main thread, then the action runs
    calls = []
    original = Taylor.weight_scores
    monkeypatch.setattr(Taylor, "weight_scores", lambda self, ctx: calls.append(1) or original(self, ctx))
    ex.controls.global_slider.value = 0.7
    assert {p.criterion for p in ex.pruner.plans.values()} == {"taylor"}
    assert calls == []  # the Pruner did not score again on the main thread


def test_structured_granularity_removes_units_and_disables_blocked_layers(ex):
    ex.controls.granularity.value = "structured"
    ex.controls.global_slider.value = 0.5
    plans = ex.pruner.plans
    assert plans["0"].granularity == "structured" and "4" not in plans  # outputs cannot be removed
    assert ex.controls.layer_sliders["4"].disabled
    assert "cannot prune 4" in ex.controls.layer_sliders["4"].tooltip


def test_two_four_snaps_to_half(ex):
    ex.controls.granularity.value = "2:4"
    ex.controls.global_slider.value = 0.3
    assert ex.controls.global_slider.value == 0.5
    assert {p.granularity for p in ex.pruner.plans.values()} == {"2:4"}
    ex.controls.global_slider.value = 0.1
    assert not ex.pruner.plans


def test_threshold_mode_prunes_below_an_absolute_magnitude(ex):
    ex.controls.global_slider.value = 0.5
    ex.controls.mode.value = "threshold"
    # entering threshold mode keeps the sparsity in effect
    assert abs(ex.pruner.overall_sparsity() - 0.5) < 0.01
    ex.controls.threshold_slider.value = 0.05
    for name, plan in ex.pruner.plans.items():
        assert plan.threshold == pytest.approx(0.05)
        dense = ex.state.reference.weights[name].abs()
        assert int((dense < 0.05).sum()) == int((~ex.pruner.mask(name)).sum())
    assert ex.controls.criterion.disabled


def test_reset_undo_redo_buttons(ex):
    ex.controls.global_slider.value = 0.9
    ex.controls.global_slider.value = 0.95
    ex.controls.undo.click()
    assert abs(ex.pruner.overall_sparsity() - 0.9) < 1e-3
    assert abs(ex.controls.global_slider.value - 0.9) < 1e-3
    ex.controls.redo.click()
    assert abs(ex.pruner.overall_sparsity() - 0.95) < 1e-3
    ex.controls.reset.click()
    assert ex.pruner.overall_sparsity() == 0 and ex.controls.global_slider.value == 0
    assert f"{ex.state.baseline.accuracy:.1%}" in ex.views["metrics"].readout.value
    assert not ex.controls.undo.disabled and ex.controls.redo.disabled  # reset is a step of history
    ex.controls.undo.click()
    assert abs(ex.pruner.overall_sparsity() - 0.95) < 1e-3


def test_changes_from_python_move_the_controls(ex):
    ex.pruner.prune({"0": 0.4})
    assert ex.controls.layer_sliders["0"].value == pytest.approx(0.4)
    assert "<b>40%</b> zero" in ex.controls.layer_labels["0"].value


def test_layer_selector_drives_the_detail_views(ex):
    ex.controls.layer_select.value = "0"
    assert ex.state.layer == "0"
    assert "layer <b>0</b>" in ex.views["weights"].caption.value
    ex.state.layer = "4"
    assert ex.controls.layer_select.value == "4"


def test_invalid_actions_explain_and_change_nothing(ex):
    ex.controls.granularity.value = "structured"
    before = ex.pruner.plans
    ex.controls.layer_sliders["4"].disabled = False  # as if a person got past the disabled slider
    ex.controls.layer_sliders["4"].value = 0.5
    assert "cannot be pruned structurally" in ex.controls.message.value
    assert ex.pruner.plans.keys() == before.keys()


def test_values_shown_lie_on_the_sliders_grid():
    # the page snaps other values to the grid and sends them back as if a person had moved it
    assert on_step(0.3474) == 0.35 and on_step(0.0) == 0.0 and on_step(1.0) == 1.0
    assert str(on_step(0.07)) == "0.07"


def test_choices_follow_a_state_made_elsewhere(ex):
    ex.pruner.prune(0.3, criterion="random", granularity="structured")
    assert ex.controls.criterion.value == "random" and ex.controls.granularity.value == "structured"
    assert ex.state.criterion == "random" and ex.state.granularity == "structured"
    ex.controls.undo.click()  # back to dense: the choices stay as they were
    assert ex.controls.criterion.value == "random"


def scored_on_the_main_thread(monkeypatch, criterion_class) -> list:
    """Records each call of ``criterion_class.weight_scores`` made on the main thread."""
    calls = []
    original = criterion_class.weight_scores

    def recording(self, ctx):
        if threading.current_thread() is threading.main_thread():
            calls.append(1)
        return original(self, ctx)

    monkeypatch.setattr(criterion_class, "weight_scores", recording)
    return calls


def test_choosing_attribution_prunes_by_attribution_scored_in_the_background(ex, monkeypatch):
    from prunelab.core.criteria import Attribution

    calls = scored_on_the_main_thread(monkeypatch, Attribution)
    ex.controls.criterion.value = "attribution"
    assert ex.state.criterion == "attribution"
    ex.controls.global_slider.value = 0.6
    ex.wait()  # the scores arrive, then the waiting action runs
    assert {p.criterion for p in ex.pruner.plans.values()} == {"attribution"}
    assert abs(ex.pruner.overall_sparsity() - 0.6) < 1e-3
    assert calls == [] and ex.controls.message.value == ""


def test_a_layer_named_reset_is_pruned_by_its_slider_not_reset(monkeypatch):
    from prunelab.core.criteria import Taylor

    torch.manual_seed(0)
    x = torch.randn(120, 6)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(OrderedDict(reset=nn.Linear(6, 16), relu=nn.ReLU(), out=nn.Linear(16, 2)))
    ex = pl.explore(model, (x, y))
    ex.wait()
    calls = scored_on_the_main_thread(monkeypatch, Taylor)
    ex.controls.criterion.value = "taylor"  # its weight scores start in the background
    ex.controls.layer_sliders["reset"].value = 0.5
    # a pruning action like any other: it waits for the scores (a reset would not)
    assert "reset" not in ex.pruner.plans and "computing taylor scores" in ex.controls.message.value
    ex.wait()
    plan = ex.pruner.plans["reset"]
    assert plan.criterion == "taylor" and plan.amount == pytest.approx(0.5)
    assert ex.pruner.sparsity()["reset"] == pytest.approx(0.5)
    assert ex.state.driver == "layers" and ex.pruner.can_undo
    assert calls == []  # like any layer's slider: Taylor scores from the background, none on the main thread
    ex.close()
