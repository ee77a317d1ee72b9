"""Issue 13: the panels never say something false and say what to do when empty."""

import dataclasses
import json
from pathlib import Path

from prunelab.explorer.panels.export import ExportPanel
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
    assert "replays" not in report.gives(rows["sparse"]) and "size only" in report.gives(rows["sparse"])
    # a state with units removed says how many, and the speed measured
    shrunk = dataclasses.replace(report, units_removed=12)
    text = shrunk.gives(rows["structured"])
    assert text.startswith("12 units removed") and f"{shrunk.speedup:.2f}x the dense speed" in text
    panel.close()


def test_quickstart_says_how_many_digits_interpretability_shows(explorer):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    text = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "one digit per class" not in text
    ex = explorer.wait().state.explanations
    assert len(ex.samples) == 6 and "six validation digits" in text
    assert sorted(int(t) for t in ex.targets) == [0, 1, 2, 3, 4, 5] and "0 to 5" in text


def test_fine_tune_panel_before_its_first_run_says_what_to_do(mlp_demo_pruner):
    panel = TrainingPanel(mlp_demo_pruner)
    assert panel.history_row.layout.display == "none"  # no blank plot, no bare table header
    assert panel.history_empty.layout.display != "none"
    assert "run <b>Fine-tune</b> or <b>Iterate</b> to see" in panel.history_empty.value
    section = panel.sensitivity
    assert section.plot.layout.display == "none" and "Analyse sensitivity" in section.empty.value
    assert section.allocate_button.disabled
    assert "press Analyse sensitivity first" in section.why_disabled.value
    assert "press Analyse sensitivity first" in section.allocate_button.tooltip
    panel.close()


def test_iterate_uses_the_explorers_granularity(explorer):
    panel = explorer.panels["Fine-tune"]
    assert panel.granularity.value == "unstructured"
    explorer.controls.granularity.value = "structured"
    explorer.wait()
    assert panel.granularity.value == "structured"  # what Iterate will prune by
    explorer.controls.granularity.value = "2:4"  # one sparsity only: iterate keeps the last it can take
    explorer.wait()
    assert panel.granularity.value == "structured"
    explorer.controls.granularity.value = "structured"
    explorer.wait()
    fresh = TrainingPanel(explorer.pruner, explorer.state, panel.post)  # made while structured is chosen
    assert fresh.granularity.value == "structured"
    fresh.close()


def test_one_format_for_accuracy_drops_in_the_readout_and_the_allocation_table(explorer):
    import re

    from prunelab.explorer.panels.sensitivity import allocation_html
    from prunelab.explorer.views.metrics import points
    from prunelab.sensitivity import Allocation

    assert points(-0.289) == "-28.9 pts" and points(0.6) == "+60.0 pts"
    explorer.pruner.prune(0.97)
    explorer.wait()
    m, base = explorer.state.metrics, explorer.state.baseline
    readout = explorer.views["metrics"].readout.value
    assert points(m.accuracy - base.accuracy) in readout
    result = Allocation(sparsities={"0": 0.9, "2": 0.5}, single_drops={"0": 0.6, "2": 0.01}, predicted_drop=0.61,
                        baseline=0.95, accuracy=0.30, sparsity=0.8, overall_sparsity=0.8, granularity="unstructured")
    text = allocation_html(result)
    assert "-60.0 pts" in text and "-1.0 pts" in text and "-61.0 pts" in text and "-65.0 pts vs dense" in text
    assert not re.search(r"\d pt\b", text) and "+60" not in text  # not a second format (drops as "+60 pt")
