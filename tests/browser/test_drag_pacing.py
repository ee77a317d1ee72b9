"""A drag in the page: the readout follows and shows the final state after release; views behind
another tab do not repaint while hidden and show the final state as soon as their tab is shown."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import explorer_ui as ui
import labdriver

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import browser_latency as bench  # noqa: E402  (the bench's hand-paced drag)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]
INSPECT = ("connectivity", "weights", "importance", "interpretability")


@pytest.fixture(scope="module")
def quick(lab, browser):
    nb = labdriver.open_notebook(lab, browser, "01-quickstart.ipynb", viewport=(1280, 800))
    try:
        nb.run_all(timeout_s=240)
        ui.wait_ready(nb)
        yield nb
    finally:
        nb.close()
        lab.shutdown_kernels()


def test_after_a_drag_the_readout_shows_the_final_state(quick):
    ui.click_reset(quick)
    bench.hand_drag(quick, ui.GLOBAL_SLIDER)
    target = quick.slider_value(ui.GLOBAL_SLIDER)
    assert target > 0.5
    quick.page.wait_for_function(
        "([sel, text]) => (document.querySelector(sel) || {}).innerText.includes(text)",
        arg=[ui.METRICS, f"sparsity {target * 100:.1f}%"], timeout=10_000)
    ui.settle(quick)
    assert re.search(rf"sparsity\s+{target * 100:.1f}%", quick.text(ui.METRICS))
    assert not quick.errors()


def test_views_behind_another_tab_wait_and_show_the_final_state_when_shown(quick):
    ui.click_reset(quick)
    before = ui.view_hashes(quick)
    quick.page.locator(ui.TAB, has_text="Export").first.click()
    quick.page.wait_for_timeout(500)
    bench.hand_drag(quick, ui.GLOBAL_SLIDER)
    ui.settle(quick)
    target = quick.slider_value(ui.GLOBAL_SLIDER)
    assert re.search(rf"sparsity\s+{target * 100:.1f}%", quick.text(ui.METRICS))  # the readout followed
    quick.page.locator(ui.TAB, has_text="Inspect").first.click()
    changed = ui.redrawn_views(quick, before, expect=("connectivity", "weights", "importance"))
    assert {"connectivity", "weights", "importance"} <= changed, f"not redrawn once shown: {changed}"
    assert not quick.errors()
