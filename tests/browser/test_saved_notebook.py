"""A quickstart run in the browser and saved: small (BokehJS in it once), and a copy reopened with
a new kernel shows one line saying to re-run the cell, not "Error displaying widget"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import explorer_ui as ui
import labdriver

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]
NOTEBOOK = "01-quickstart.ipynb"
SHOTS = Path(__file__).parent / "screenshots" / "saved"
MAX_BYTES = 1_700_000  # BokehJS's core bundle (1.27 MB) once, the outputs, and room to spare


@pytest.fixture(scope="module")
def saved(lab, browser):
    nb = labdriver.open_notebook(lab, browser, NOTEBOOK)
    try:
        nb.run_all(timeout_s=240)
        ui.wait_ready(nb)
        nb.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        path = lab.root_dir / NOTEBOOK
        nb.page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty",
                                  timeout=30_000)
        copy = lab.root_dir / "reopened-quickstart.ipynb"
        shutil.copyfile(path, copy)
        yield path, copy
    finally:
        nb.close()
        lab.shutdown_kernels()


def test_the_saved_notebook_is_small_and_holds_bokehjs_once(saved):
    path, _ = saved
    text = path.read_text()
    assert text.count("BEGIN bokeh.min.js") == 1, "BokehJS is stored more than once"
    assert path.stat().st_size < MAX_BYTES, f"{path.stat().st_size:,} bytes"
    outputs = [o for c in json.loads(text)["cells"] for o in c.get("outputs", [])]
    explorer = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
                and "prunelab explorer" in "".join(o["data"].get("text/plain", ""))]
    assert explorer and "run the cell again" in "".join(explorer[0]["data"]["text/html"])


def test_a_reopened_copy_says_to_rerun_the_cell_instead_of_an_error(saved, lab, browser):
    _, copy = saved
    nb = labdriver.open_notebook(lab, browser, copy.name)
    try:
        nb.page.wait_for_function(
            "() => document.querySelectorAll('.jp-OutputArea-output.prunelab-rerun').length > 0", timeout=30_000)
        nb.page.wait_for_timeout(2500)  # every widget output has given up on its model by now
        nb.screenshot(SHOTS, "reopened")
        body = nb.page.locator(".jp-Notebook").inner_text()
        assert "Error displaying widget" not in body
        assert "run the cell again" in body
        assert [e for e in nb.errors() if "Error displaying widget" in e] == []
    finally:
        nb.close()
        lab.shutdown_kernels()
