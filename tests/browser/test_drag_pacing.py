"""A drag in the page: the readout follows and shows the final state after release; views behind
another tab do not repaint while hidden and show the final state as soon as their tab is shown."""

from __future__ import annotations

import json
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


def test_the_page_acknowledges_each_patch_without_echoing_the_changes(quick):
    """jupyter_bokeh would send every change of a patch back, serialized whole; the page the explorer
    loads sends one small "applied" message per patch, and the views pace on it (bokeh_loader.py)."""
    ui.click_reset(quick)
    bench.hand_drag(quick, ui.GLOBAL_SLIDER)
    ui.settle(quick)
    quick.page.wait_for_timeout(1500)  # the views' last patches and their answers
    out = quick.kernel_print(
        "import json; print(json.dumps({k: [dict(v.bokeh.received), v.bokeh.caught_up(timeout=float('inf'))] "
        "for k, v in explorer.views.items() if v.bokeh is not None}))")
    views = json.loads(out)
    for name, (received, caught_up) in views.items():
        assert caught_up, f"{name}: the page never said it applied the last patch ({received})"
        # the page's own changes (sizes its layout measured: ModelChanged:inner_width...) still come;
        # the data the kernel sent does not come back
        echoed = [k for k in received if k.startswith(("ColumnDataChanged", "ColumnsStreamed", "ColumnsPatched"))]
        assert echoed == [], f"{name}: the page echoed the data sent to it: {received}"
        assert received.get("prunelab_applied", 0) >= 1, f"{name}: no patch acknowledged ({received})"
