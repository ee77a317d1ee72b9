"""Issue 13: the panels never say something false and say what to do when empty."""

import dataclasses
import json
from pathlib import Path

from prunelab.explorer.panels.export import ExportPanel, measured_gives
from prunelab.explorer.panels.training import TrainingPanel

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "01-quickstart.ipynb"


def test_export_table_words_structured_from_what_it_measured(mlp_demo_pruner, tmp_path):
    mlp_demo_pruner.prune(0.5)  # unstructured: no whole unit goes
    panel = ExportPanel(mlp_demo_pruner, directory=tmp_path, formats=("state_dict", "sparse", "structured"))
    report = panel.measure()
    assert report.units_removed == 0
    table = panel.table.value
    assert "nothing to remove: no whole unit is pruned" in table
    assert "size and speed: units are removed" not in table  # its own numbers beside it: 100%, equal latency
    rows = {r.format: r for r in report.rows}
    assert "replays" not in measured_gives(report, rows["sparse"]) and "size only" in measured_gives(report, rows["sparse"])
    # a state with units removed says how many, and the speed measured
    shrunk = dataclasses.replace(report, units_removed=12)
    text = measured_gives(shrunk, rows["structured"])
    assert text.startswith("12 units removed") and f"{shrunk.speedup:.2f}x the dense speed" in text
    panel.close()


def test_quickstart_says_how_many_digits_interpretability_shows(explorer):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    text = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "one digit per class" not in text
    ex = explorer.wait().state.explanations
    assert len(ex.samples) == 6 and "six validation digits" in text
    assert sorted(int(t) for t in ex.targets) == [0, 1, 2, 3, 4, 5] and "0 to 5" in text
