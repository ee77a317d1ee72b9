"""notebooks/02-your-own-model.ipynb as a person uses it: their model, their data, the same explorer."""

from __future__ import annotations

import re

import pytest

import explorer_ui as ui

# Each module opens JupyterLab: seconds. Its first test also pays for starting the server and Chromium
# and running the notebook (each wait bounded in labdriver), hence the long per-test timeout.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]
NOTEBOOK = "02-your-own-model.ipynb"
SCREENSHOTS = "own-model"  # tests/browser/screenshots/own-model/


@pytest.fixture(scope="module")
def own(open_run):
    nb = open_run(NOTEBOOK, screenshots=SCREENSHOTS, wait_for=f"{ui.GLOBAL_SLIDER} .noUi-handle", timeout_s=240)
    ui.wait_ready(nb)
    return nb


def test_runs_clean_and_every_view_draws_data(own):
    assert own.unexecuted_cells() == []
    assert own.errors() == []
    assert own.blank_canvases() == []
    assert ui.views_without_data(own) == {}
    assert ui.cut_off_labels(own) == []  # a model with BatchNorm: the Recover readout beside the numbers


def test_pruning_from_python_shows_in_the_explorer(own):
    # The notebook's last cell prunes 30% of the channels from Python and prints what the kernel's Pruner
    # measured: the readout shows that state's numbers, and the global slider its sparsity.
    printed = own.stdout()
    measured = re.search(r"accuracy (\d+(?:\.\d)?)% on (\d+) validation samples", printed)
    sparsity = re.search(r"sparsity (\d+(?:\.\d)?)% of prunable weights", printed)
    assert measured and sparsity, f"the notebook's last cell printed {printed[-500:]!r}"
    assert ui.accuracy(own) == float(measured.group(1)), own.text(ui.METRICS)
    assert ui.sparsity(own) == pytest.approx(float(sparsity.group(1)) / 100, abs=1e-9), own.text(ui.METRICS)
    assert f"on {int(measured.group(2)):,}" in own.text(ui.METRICS)
    assert ui.sparsity(own) > 0.1  # 30% of the channels take more than a tenth of the weights with them
    # structured: the global slider shows the fraction of channels removed (weight sparsity beside it)
    channels = re.search(r"channels removed (\d+(?:\.\d)?)%", printed)
    assert channels, f"the notebook's last cell printed {printed[-500:]!r}"
    assert own.slider_value(ui.GLOBAL_SLIDER) == pytest.approx(float(channels.group(1)) / 100, abs=0.006)  # 1% grid


def test_bokehjs_is_inline_and_nothing_comes_from_outside(own):
    ui.assert_offline(own)


def test_global_slider_moves_the_numbers_and_reset_restores_the_dense_model(own):
    dense = dense_accuracy(own)
    before_text = own.text(ui.METRICS)
    before_views = ui.view_hashes(own)
    own.press_keys(ui.GLOBAL_SLIDER, "End")
    ui.settle(own)
    assert own.slider_value(ui.GLOBAL_SLIDER) == 1.0
    assert own.text(ui.METRICS) != before_text
    assert ui.accuracy(own) < dense - 30, "with every prunable weight removed it should be near chance"
    redrawn = ui.redrawn_views(own, before_views, ("weights", "trace"))
    assert {"weights", "trace"} <= redrawn, f"only these views redrew: {sorted(redrawn)}"
    ui.click_reset(own)
    assert ui.accuracy(own) == dense
    assert own.slider_value(ui.GLOBAL_SLIDER) == 0
    assert own.errors() == []


def dense_accuracy(nb) -> float:
    """The dense model's accuracy, which the readout shows beside the current one ("vs dense NN.N%")."""
    m = re.search(r"vs dense\s+(\d+(?:\.\d)?)%", nb.text(ui.METRICS))
    assert m, f"the readout does not show the dense accuracy: {nb.text(ui.METRICS)!r}"
    return float(m.group(1))
