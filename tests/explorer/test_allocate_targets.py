"""The Allocate controls take a FLOPs or a parameter target besides sparsity and max drop."""

import pytest

from prunelab.explorer.panels.training import TrainingPanel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("mode, kept", [("flops", "flops_kept"), ("params", "params_kept")])
def test_allocate_to_a_flops_or_params_target(mlp_demo_pruner, mode, kept):
    panel = TrainingPanel(mlp_demo_pruner)
    section = panel.sensitivity
    section.show_sensitivity(mlp_demo_pruner.sensitivity([0.25, 0.5, 0.75, 0.9]))
    assert mode in [v for _label, v in section.allocate_mode.options]
    section.allocate_mode.value = mode
    assert section.allocate_value.max == 1.0
    section.allocate_value.value = 0.5
    section.allocate_button.click()
    result = section.allocate()
    assert getattr(result, kept) == pytest.approx(0.5, abs=0.02)
    m = mlp_demo_pruner.evaluate()
    measured = m.nonzero_flops / m.flops if mode == "flops" else m.nonzero_params / m.params
    assert measured == pytest.approx(0.5, abs=0.02)
    assert f"{'FLOPs' if mode == 'flops' else 'params'} kept" in panel.status.value
