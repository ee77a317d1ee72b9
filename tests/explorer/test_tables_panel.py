"""The Tables tab: pick a kind, measure it in the background with progress, cancel, copy it as
markdown, download it as CSV; the Pruner is never changed by it."""

from __future__ import annotations

import re
import urllib.parse

import ipywidgets as widgets
import pytest

from prunelab.explorer.panels.tables import TablesPanel
from prunelab.reports import KINDS

from core_models import assert_same_state, state_of


def test_the_panel_measures_the_chosen_table_and_offers_markdown_and_csv(mlp_demo_pruner):
    pruner = mlp_demo_pruner.prune(0.6)
    before = state_of(pruner.model)
    panel = TablesPanel(pruner)
    assert isinstance(panel, widgets.Widget) and list(panel.kind.options) == list(KINDS)
    for name in ("kind", "measure", "progress", "cancel", "status", "table", "markdown", "csv", "stale"):
        assert f"prunelab-tables-{name}" in getattr(panel, {"measure": "measure_button", "cancel": "cancel_button",
                                                            "table": "output", "csv": "csv_link"}.get(name, name))._dom_classes
    panel.kind.value = "layers"
    panel.measure_button.click()
    assert panel.wait(60)
    expected = pruner.report("layers")
    assert panel.table.rows == expected.rows
    assert "<table>" in panel.output.value and "Connections after" in panel.output.value
    assert panel.markdown.value == expected.to_markdown()
    panel.markdown.value = "edited"  # read-only: the table comes back
    assert panel.markdown.value == expected.to_markdown()
    link = re.search(r"download='prunelab-layers\.csv' href='data:text/csv;charset=utf-8,([^']*)'", panel.csv_link.value)
    assert link and urllib.parse.unquote(link.group(1)) == expected.to_csv()
    assert "rows measured" in panel.status.value and not panel.runner.busy
    assert_same_state(pruner.model, before)
    pruner.prune(0.9)
    assert "changed since this table was measured" in panel.stale.value


def test_progress_reaches_every_point(mlp_demo_pruner):
    panel = TablesPanel(mlp_demo_pruner, options={"sparsity": {"sparsities": [0, 0.5, 0.9], "files": False}})
    panel.measure()
    assert panel.wait(60)
    assert panel.progress.max == 3 and panel.progress.value == 3 and panel.progress.bar_style == "success"
    assert [r["sparsity"] for r in panel.table] == [0, 0.5, 0.9]


def test_cancel_stops_the_measurement(mlp_demo_pruner):
    many = [i / 40 for i in range(40)]
    panel = TablesPanel(mlp_demo_pruner, options={"criteria": {"sparsities": many,
                                                               "criteria": ["magnitude", "random"]}})
    panel.kind.value = "criteria"
    panel.measure()
    panel.cancel_button.click()
    assert panel.wait(60)
    assert "cancelled" in panel.status.value and panel.table is None
    assert mlp_demo_pruner.history.cursor == 0


def test_a_failing_report_shows_why_in_the_panel(mlp_demo_pruner):
    panel = TablesPanel(mlp_demo_pruner, options={"thresholds": {"thresholds": [-1.0]}})
    panel.kind.value = "thresholds"
    panel.measure()
    assert panel.wait(60)
    assert "thresholds must be absolute" in panel.status.value and panel.table is None
    panel.options["iterations"] = {}
    panel.kind.value = "iterations"
    panel.measure()
    assert panel.wait(60)
    assert "no iterate() run to tabulate" in panel.status.value


def test_the_explorer_has_a_tables_tab(explorer):
    assert isinstance(explorer.panels["Tables"], TablesPanel)
    titles = [explorer.tabs.get_title(i) for i in range(len(explorer.tabs.children))]
    assert "Tables" in titles and explorer.tabs.children[titles.index("Tables")] is explorer.panels["Tables"]
