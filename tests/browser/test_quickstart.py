"""notebooks/01-quickstart.ipynb as a person uses it: run it, drag sliders, read the numbers, reset.

One page and one kernel for the whole module (opening and running the notebook is the slow part);
every test that moves something starts from reset, so the tests do not depend on their order.
"""

from __future__ import annotations

import re

import pytest

import explorer_ui as ui

# Each module opens JupyterLab: seconds. Its first test also pays for starting the server and Chromium
# and running the notebook (each wait bounded in labdriver), hence the long per-test timeout.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]
NOTEBOOK = "01-quickstart.ipynb"
SCREENSHOTS = "quickstart"  # tests/browser/screenshots/quickstart/
# Views that must draw differently after the global slider moved: the weights (kept/pruned), the
# connectivity graph (edges pruned) and the accuracy-vs-sparsity trace (a new point).
REDRAWN_ON_PRUNE = ("weights", "connectivity", "trace")


@pytest.fixture(scope="module")
def quick(open_run):
    nb = open_run(NOTEBOOK, screenshots=SCREENSHOTS, wait_for=f"{ui.GLOBAL_SLIDER} .noUi-handle", timeout_s=240)
    ui.wait_ready(nb)
    nb.original_accuracy = ui.accuracy(nb)
    return nb


@pytest.fixture
def fresh(quick):
    """The quickstart explorer back at its original weights, and no error seen so far."""
    if ui.sparsity(quick) > 0 or ui.accuracy(quick) != quick.original_accuracy:
        ui.click_reset(quick)
    assert quick.errors() == []
    return quick


def test_runs_clean_and_every_view_draws_data(quick):
    assert quick.unexecuted_cells() == []
    assert quick.errors() == []
    assert quick.page.locator(ui.GLOBAL_SLIDER).count() == 1
    assert quick.page.locator(ui.LAYER_SLIDER).count() >= 2
    assert quick.original_accuracy > 80, "the digits demo is about 97% accurate dense"
    assert quick.blank_canvases() == []
    assert ui.views_without_data(quick) == {}
    # the readout is what the kernel's Pruner measured (the notebook's last cell prints it)
    printed = re.search(r"accuracy (\d+(?:\.\d)?)% on (\d+) validation samples", quick.stdout())
    assert printed and float(printed.group(1)) == quick.original_accuracy, quick.stdout()[-500:]


def test_bokehjs_is_inline_and_nothing_comes_from_outside(quick):
    ui.assert_offline(quick)


def test_global_slider_by_keyboard_changes_accuracy_and_redraws_views(fresh):
    before_views = ui.view_hashes(fresh)
    fresh.press_keys(ui.GLOBAL_SLIDER, "ArrowRight", times=3)
    ui.settle(fresh)
    assert fresh.slider_value(ui.GLOBAL_SLIDER) == pytest.approx(0.03)
    assert re.search(r"sparsity\s+3\.\d%", fresh.text(ui.METRICS)), fresh.text(ui.METRICS)
    redrawn = ui.redrawn_views(fresh, before_views, REDRAWN_ON_PRUNE)
    assert set(REDRAWN_ON_PRUNE) <= redrawn, f"only these views redrew: {sorted(redrawn)}"

    fresh.page.keyboard.press("End")  # all the way: every prunable weight removed
    ui.settle(fresh)
    assert fresh.slider_value(ui.GLOBAL_SLIDER) == 1.0
    assert ui.accuracy(fresh) < fresh.original_accuracy - 30, "with every weight pruned it should be near chance"
    assert fresh.errors() == []
    assert fresh.blank_canvases() == []  # faded edges and bars now, but every view still drawn


def test_layer_slider_by_mouse_changes_accuracy(fresh):
    before_text = fresh.text(ui.METRICS)
    before_views = ui.view_hashes(fresh)
    fresh.drag_slider(ui.LAYER_SLIDER, 1.0)  # the first layer, dragged to the end of its track
    ui.settle(fresh)
    assert fresh.slider_value(ui.LAYER_SLIDER) >= 0.95
    assert fresh.text(ui.METRICS) != before_text
    assert ui.accuracy(fresh) < fresh.original_accuracy, "pruning a whole layer must cost accuracy"
    redrawn = ui.redrawn_views(fresh, before_views, ("trace",))
    assert "trace" in redrawn, f"only these views redrew: {sorted(redrawn)}"
    assert fresh.errors() == []


def test_reset_brings_back_the_original_accuracy(fresh):
    fresh.press_keys(ui.GLOBAL_SLIDER, "End")
    ui.settle(fresh)
    assert ui.accuracy(fresh) != fresh.original_accuracy
    ui.click_reset(fresh)
    assert ui.accuracy(fresh) == fresh.original_accuracy
    assert fresh.slider_value(ui.GLOBAL_SLIDER) == 0
    layers = fresh.page.locator(ui.LAYER_SLIDER).count()
    assert [fresh.slider_value(ui.LAYER_SLIDER, i) for i in range(layers)] == [0] * layers
    assert re.search(r"sparsity\s+0\.0%", fresh.text(ui.METRICS))
    assert fresh.errors() == []


def test_export_from_the_panel_writes_the_pruned_model(fresh, lab):
    fresh.press_keys(ui.GLOBAL_SLIDER, "PageUp", times=2)
    ui.settle(fresh)
    shown = ui.sparsity(fresh)
    assert shown > 0.05, f"PageUp twice should prune something; the readout says {shown:.1%}"

    fresh.page.locator(ui.TAB, has_text="Export").click()
    panel = fresh.page.locator(ui.VISIBLE_TAB_PAGE)
    fmt = panel.get_by_label("Format")
    sparse = next(o for o in fmt.locator("option").all() if (o.get_attribute("value") or "").startswith("sparse"))
    fmt.select_option(value=sparse.get_attribute("value"))
    name = "browser-test-export.sparse.safetensors"
    panel.get_by_label("Path").fill(name)
    # By its text: the icon's font glyph makes the accessible name more than "Export".
    panel.locator("button", has_text=re.compile(r"^\s*Export\s*$")).click()
    fresh.page.wait_for_function(
        "(s) => /Wrote|Error/.test(document.querySelector(s).innerText)", arg=ui.VISIBLE_TAB_PAGE, timeout=60_000
    )
    status = panel.inner_text()
    assert "Wrote" in status and name in status, status

    # The file is where the panel said (the kernel's folder), and holds the pruning done with the slider.
    written = lab.root_dir / name
    assert written.is_file() and written.stat().st_size > 0
    from prunelab import load_sparse

    weights = [t for k, t in load_sparse(written).items() if k.endswith("weight") and t.dim() == 2]
    zeros = sum(int((t == 0).sum()) for t in weights) / sum(t.numel() for t in weights)
    assert zeros == pytest.approx(shown, abs=0.002), f"file has {zeros:.2%} zeros, the explorer showed {shown:.1%}"
    fresh.page.locator(ui.TAB, has_text="Inspect").click()
    assert fresh.errors() == []
