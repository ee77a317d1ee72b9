"""Issue 13: the controls never say something false and never stick: one quantity per slider, one
history step per gesture, a |w| slider whose first steps do something, names readable."""

import math

import pytest

from prunelab.explorer.controls import on_step
from prunelab.core.planning import unit_sparsity
from prunelab.explorer.slider_values import short_name


@pytest.fixture
def ex(explorer):
    state = explorer.state
    state.criterion, state.granularity, state.mode, state.driver = "magnitude", "unstructured", "amount", "global"
    explorer.wait()
    return explorer


def as_fine_tuned(pruner):
    """What a fine-tune with the masks held leaves: the pruned weights trained to zero."""
    weights = {l.weight_name: l.module.weight.detach().clone() for l in pruner.layers}  # masked: zeros
    pruner.set_weights(weights)


def test_structured_global_slider_shows_units_after_python_undo_and_redo(ex):
    c = ex.controls
    c.granularity.value = "structured"
    c.global_slider.value = 0.4
    ex.wait()
    shown_after_drag = c.global_slider.value
    assert shown_after_drag == pytest.approx(0.4)
    assert unit_sparsity(ex.pruner) == pytest.approx(0.4, abs=0.01)
    weights = ex.pruner.overall_sparsity()
    assert abs(weights - 0.4) > 0.02  # units and weights differ here, so showing the wrong one shows
    assert f"{weights:.1%}</b> of weights" in c.global_note.value
    c.global_slider.value = 0.6
    ex.wait()
    c.undo.click()
    ex.wait()
    assert c.global_slider.value == pytest.approx(0.4)  # units, as while dragging: not weight sparsity
    c.redo.click()
    ex.wait()
    assert c.global_slider.value == pytest.approx(0.6)
    ex.pruner.prune(0.3, granularity="structured")  # from Python
    ex.wait()
    assert c.global_slider.value == pytest.approx(0.3)
    # the next key press moves one step from what is shown: no jump
    c.global_slider.value = on_step(c.global_slider.value + 0.01)
    ex.wait()
    assert unit_sparsity(ex.pruner) == pytest.approx(0.31, abs=0.01)


def test_switching_granularity_is_one_history_step_and_undo_shows_the_state_before(ex):
    c, p = ex.controls, ex.pruner
    c.global_slider.value = 0.5
    ex.wait()
    before_plans, cursor = p.plans, p.history.cursor
    assert "4" in before_plans  # the output layer is pruned unstructured; structured cannot prune it
    c.granularity.value = "structured"
    ex.wait()
    assert p.history.cursor == cursor + 1
    assert {pl.granularity for pl in p.plans.values()} == {"structured"}
    c.undo.click()
    ex.wait()
    assert p.plans.keys() == before_plans.keys()  # the state seen before the switch, not a mix
    assert {pl.granularity for pl in p.plans.values()} == {"unstructured"}
    assert p.overall_sparsity() == pytest.approx(0.5, abs=1e-3)


def test_a_switch_that_changes_nothing_adds_no_history_step(ex):
    c, p = ex.controls, ex.pruner
    cursor = p.history.cursor
    c.mode.value = "threshold"  # on the dense model: the |w| slider starts where nothing is pruned
    ex.wait()
    assert p.overall_sparsity() == 0 and not p.plans
    assert p.history.cursor == cursor
    c.granularity.value = "structured"  # still nothing pruned: nothing to record
    ex.wait()
    assert p.history.cursor == cursor and not p.plans


def really_fine_tuned(pruner):
    """A real epoch of fine-tuning with the masks held: the kept weights move, and some thin out
    below the old threshold (a thin tail of small |w| under the kept mass)."""
    pruner.finetune(1)


@pytest.mark.parametrize("fine_tune", [as_fine_tuned, really_fine_tuned])
def test_threshold_slider_after_fine_tuning_starts_at_the_state_and_each_first_step_prunes(ex, fine_tune):
    c, p = ex.controls, ex.pruner
    c.global_slider.value = 0.885
    ex.wait()
    fine_tune(p)
    ex.wait()
    sparsity = p.overall_sparsity()
    c.mode.value = "threshold"
    ex.wait()
    s = c.threshold_slider
    assert p.overall_sparsity() == pytest.approx(sparsity, abs=1e-3)  # entering keeps the state
    kept = min(float(ex.state.reference.weights[l.name].abs()[p.mask(l.name)].min()) for l in p.layers)
    assert s.value <= kept < 10 ** (math.log10(s.value) + s.step)  # starts right below the weights kept
    for _ in range(5):  # the keyboard's steps, right arrow: each shows in the readout (0.1%)
        last = p.overall_sparsity()
        s.value = 10 ** (math.log10(s.value) + s.step)
        ex.wait()
        assert p.overall_sparsity() >= last + 0.001


def test_long_layer_names_are_shortened_in_the_middle_with_the_whole_name_on_hover():
    assert short_name("features.0.block.1") == "feat…ock.1"
    assert short_name("fc") == "fc" and len(short_name("a" * 40)) == 10
    assert short_name("features.0.block.1") != short_name("features.0.block.2")


def test_a_long_layer_name_reads_on_its_slider_and_whole_on_hover():
    from collections import OrderedDict

    import torch
    from torch import nn

    import prunelab as pl

    torch.manual_seed(0)
    x = torch.randn(64, 6)
    y = (x[:, 0] > 0).long()
    block = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8))
    features = nn.Sequential(nn.Sequential(OrderedDict(block=block)))
    model = nn.Sequential(OrderedDict(features=features, relu=nn.ReLU(), head=nn.Linear(8, 2)))
    ex = pl.explore(model, (x, y))
    ex.wait()
    slider = ex.controls.layer_sliders["features.0.block.1"]
    assert slider.description == "feat…ock.1"  # both ends kept: not "featur..." for every block
    assert ex.controls.layer_sliders["features.0.block.0"].description == "feat…ock.0"
    assert "features.0.block.1" in slider.tooltip
    ex.close()
