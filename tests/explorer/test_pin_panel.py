"""Two states side by side: pin a state, keep pruning, see both (metrics, per-class accuracy,
per-layer sparsity), unpin."""

import pytest

from prunelab.explorer.panels.pin import PinPanel


def test_pinned_state_beside_the_current_one_until_unpinned(mlp_demo_pruner):
    p = mlp_demo_pruner
    panel = PinPanel(p, class_names=[f"d{i}" for i in range(10)])
    assert panel.table.value == "" and panel.unpin_button.disabled
    p.prune(0.5, scope="layer")
    pinned_accuracy = p.evaluate().accuracy
    panel.pin_button.click()
    p.prune({"0": 0.9, "2": 0.2, "4": 0.2}, scope="layer")
    table = panel.table.value
    assert f"{pinned_accuracy:.1%}" in table and f"{p.evaluate().accuracy:.1%}" in table
    assert table.count("<td>class d") == 10  # per-class accuracy, both states
    assert "<td>layer 0 sparsity</td><td style='text-align:right'>50.0%</td><td style='text-align:right'>90.0%" in table
    assert "+40.0 pts" in table
    assert panel.pinned.overall == pytest.approx(0.5, abs=1e-3) and not panel.unpin_button.disabled
    panel.unpin_button.click()
    assert panel.pinned is None and panel.table.value == ""
