"""The browser harness itself: it runs a notebook like a person, and it sees every kind of breakage.

If these fail, the prunelab browser tests cannot be trusted either way.
"""

from __future__ import annotations

import re
import sys

import pytest

# Each module opens JupyterLab: seconds. Its first test also pays for starting the server and Chromium
# and running the notebook (each wait bounded in labdriver), hence the long per-test timeout.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]
SCREENSHOTS = "harness"  # tests/browser/screenshots/harness/
SLIDER = ".harness-slider"
READOUT = ".harness-readout"


@pytest.fixture(scope="module")
def healthy(open_run):
    return open_run("harness/harness_healthy.ipynb", screenshots=SCREENSHOTS, wait_for=f"{SLIDER} .noUi-handle")


@pytest.fixture(scope="module")
def broken(open_run):
    return open_run("harness/harness_broken.ipynb", screenshots=SCREENSHOTS, wait_for=".harness-raising-slider")


def test_healthy_notebook_runs_every_cell_without_errors(healthy):
    assert healthy.unexecuted_cells() == []
    assert healthy.errors() == []


def test_kernel_is_this_interpreter(healthy):
    stdout = "".join(o["text"] or "" for c in healthy.cells() for o in c["outputs"] if o["name"] == "stdout")
    assert f"KERNEL_EXECUTABLE={sys.executable}" in stdout


def test_bokeh_view_draws_something(healthy):
    pictures = healthy.canvases()
    assert len(pictures) == 1, f"one bokeh figure, one picture: {pictures}"
    assert pictures[0]["colour"] > 300, "the blue line and red points are not drawn"
    assert healthy.blank_canvases() == []


def test_keyboard_moves_slider_and_kernel_updates_readout_and_plot(healthy):
    before_text = healthy.text(READOUT)
    before_pictures = healthy.canvases()
    value = healthy.slider_value(SLIDER)
    healthy.press_keys(SLIDER, "ArrowRight", times=3)
    after_text = healthy.wait_text_change(READOUT, before_text)
    # The kernel may see the intermediate values; the readout ends at the slider's final value.
    healthy.page.wait_for_function(
        "([s, v]) => document.querySelector(s).innerText === 'points: ' + v", arg=[READOUT, int(value) + 3]
    )
    assert healthy.slider_value(SLIDER) == value + 3
    assert after_text != before_text
    assert healthy.wait_canvas_change(before_pictures) != before_pictures, "the plot did not redraw"
    assert healthy.errors() == []


def test_mouse_drag_moves_slider_and_kernel_updates_readout(healthy):
    before_text = healthy.text(READOUT)
    healthy.drag_slider(SLIDER, 0.6)
    healthy.wait_text_change(READOUT, before_text)
    value = healthy.slider_value(SLIDER)
    assert 50 <= value <= 70, f"dragging to 60% of the track gave {value}"
    healthy.page.wait_for_function(
        "([s, v]) => document.querySelector(s).innerText === 'points: ' + v", arg=[READOUT, int(value)]
    )
    assert healthy.errors() == []


def test_every_kind_of_breakage_is_detected(broken):
    # Move the slider whose observer raises: its traceback reaches no cell output.
    broken.press_keys(".harness-raising-slider", "ArrowRight")
    broken.page.wait_for_function("() => (window.__kernelErrors || []).some(e => e.includes('observer failure'))")
    errors = "\n".join(broken.errors())
    expected = {
        "cell error output": r"cell \d+ error output: RuntimeError: deliberate cell failure",
        "bokeh view without BokehJS": r"error drawn in .*Click to show javascript error",
        "JavaScript output that threw": r"error drawn in .*Javascript Error:",
        "widget view that failed (console)": r"console\.error: Could not create a view",
        "observer traceback": r"kernel error message: ValueError: deliberate observer failure at 1",
    }
    missed = [what for what, pattern in expected.items() if not re.search(pattern, errors)]
    assert missed == [], f"not detected: {missed}\nall errors found:\n{errors}"


def test_blank_canvas_is_detected(broken):
    blank = broken.blank_canvases()
    assert [(c["w"], c["h"], c["colour"]) for c in blank] == [(200, 80, 0)]
