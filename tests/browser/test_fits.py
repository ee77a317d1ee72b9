"""The explorer fits where people open it: a 1280x800 laptop with JupyterLab's file browser open
(the views go below the controls), and a 1920x1080 screen (views beside the controls, using the
width). Checked by element boxes against the output area's box: Playwright's Chromium hides
scrollbars, so screenshots cannot show them (they are kept under tests/browser/screenshots/fits/)."""

from __future__ import annotations

from pathlib import Path

import pytest

import explorer_ui as ui
import labdriver

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]
NOTEBOOK = "01-quickstart.ipynb"
SHOTS = Path(__file__).parent / "screenshots" / "fits"
TABS = ("Inspect", "Fine-tune", "Export", "Tables", "Recover", "What pruning breaks", "Compare")


@pytest.fixture(scope="module")
def quick(lab, browser):
    nb = labdriver.open_notebook(lab, browser, NOTEBOOK, viewport=(1280, 800))
    try:
        ui.open_file_browser(nb)
        nb.run_all(timeout_s=240)
        ui.wait_ready(nb)
        yield nb
    finally:
        nb.close()
        lab.shutdown_kernels()


def scroll_to_explorer(nb) -> None:
    nb.page.locator(ui.EXPLORER).first.scroll_into_view_if_needed()
    nb.page.wait_for_timeout(800)  # bokeh re-lays out to its new width


def assert_fits(nb, where: str) -> dict:
    box = ui.fit(nb)
    assert box is not None, "no explorer on the page"
    assert box["outside"] == [], f"{where}: parts of the explorer lie outside its output area: {box['outside']}"
    assert box["scrollers"] == [], f"{where}: horizontal scrollbars: {box['scrollers']}"
    assert box["explorer"]["right"] <= box["area"]["right"] + 1, box
    return box


def test_at_1280_with_the_file_browser_open_nothing_lies_outside_the_output_area(quick):
    assert quick.page.evaluate("() => !window.jupyterapp.shell.leftCollapsed"), "the file browser is not open"
    scroll_to_explorer(quick)
    for tab in TABS:
        quick.page.locator(ui.TAB, has_text=tab).first.click()
        quick.page.wait_for_timeout(700)
        box = assert_fits(quick, f"1280x800, file browser open, {tab} tab")
        assert ui.cut_off_labels(quick) == [], f"1280x800, {tab} tab: labels cut off with an ellipsis"
        quick.screenshot(SHOTS, f"1280-{tab.lower()}")
    quick.page.locator(ui.TAB, has_text="Inspect").first.click()
    quick.page.wait_for_timeout(500)
    box = assert_fits(quick, "1280x800, Inspect tab")
    # narrow: the views are below the controls and use the whole width of the area
    assert box["tabs"]["top"] > box["controls"]["top"] + 100, box
    assert box["connectivity"]["width"] > 0.9 * box["area"]["width"] - 40, box
    assert quick.errors() == []


def test_at_1920_the_views_sit_beside_the_controls_and_use_the_width(quick):
    quick.page.set_viewport_size({"width": 1920, "height": 1080})
    quick.page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
    quick.page.wait_for_function("() => window.jupyterapp.shell.leftCollapsed", timeout=10_000)
    scroll_to_explorer(quick)
    box = assert_fits(quick, "1920x1080")
    quick.screenshot(SHOTS, "1920-inspect")
    assert box["tabs"]["left"] >= box["controls"]["right"], f"the views are not beside the controls: {box}"
    used = box["tabs"]["right"] - box["area"]["left"]
    assert used > 0.9 * box["area"]["width"] - 40, f"the explorer leaves the width unused: {box}"
    assert box["connectivity"]["width"] > 1000, box
    assert quick.errors() == []
