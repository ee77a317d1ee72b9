"""The Export panel: exports on click, shows errors in the panel, measures formats on demand."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import pytest
import torch

import prunelab as pl
from prunelab.explorer.panels.export import ExportPanel


def half_the_units(pruner):
    """Remove half of each layer's units (structured): the state these tests export."""
    pruner.prune(0.5, granularity="structured", scope="layer")


def test_panel_is_a_widget_and_exports_the_chosen_format_on_click(cnn_demo_pruner, tmp_path):
    half_the_units(cnn_demo_pruner)
    panel = ExportPanel(cnn_demo_pruner, directory=tmp_path)
    assert isinstance(panel, widgets.Widget)
    assert panel.path.value == str(tmp_path / "pruned-model.sparse.safetensors")
    panel.export_button.click()
    assert (tmp_path / "pruned-model.sparse.safetensors").exists()
    assert "Wrote" in panel.status.value and "kB" in panel.status.value
    assert pl.load_sparse(panel.last_export.path)["0.weight"].shape == (16, 1, 3, 3)

    panel.format.value = "recipe"  # the default name follows the format
    assert panel.path.value == str(tmp_path / "pruned-model.recipe.json")
    assert "replays" in panel.gives.value
    panel.path.value = str(tmp_path / "mine.json")
    panel.format.value = "state_dict"  # a name the user typed stays
    assert panel.path.value == str(tmp_path / "mine.json")


def test_panel_shows_a_clear_error_and_writes_nothing(cnn_demo_pruner, tmp_path):
    half_the_units(cnn_demo_pruner)
    panel = ExportPanel(cnn_demo_pruner, directory=tmp_path / "missing")
    panel.export_button.click()
    assert "could not write" in panel.status.value and "#b00" in panel.status.value
    assert panel.last_export is None and not panel.export_button.disabled
    assert list(tmp_path.iterdir()) == []


def test_measure_fills_the_table_and_goes_stale_when_the_pruning_moves(cnn_demo_pruner, tmp_path):
    half_the_units(cnn_demo_pruner)
    panel = ExportPanel(cnn_demo_pruner, directory=tmp_path, formats=("state_dict", "sparse", "recipe"))
    panel.measure_button.click()
    report = panel.report
    removed = sum(int((~cnn_demo_pruner.mask(l.name).reshape(l.units, -1).any(1)).sum())
                  for l in cnn_demo_pruner.layers)
    assert report is not None and removed > 0 and report.units_removed == removed
    for fmt in ("state_dict", "sparse", "recipe"):
        assert f"<td>{fmt}</td>" in panel.table.value
    assert "ms</td>" in panel.table.value  # dense and structured latency
    assert "only &#x27;structured&#x27;" in panel.summary.value and "Size only" in panel.summary.value
    assert panel.stale.value == ""
    cnn_demo_pruner.prune(0.9)
    assert "changed since" in panel.stale.value
    panel.close()
    panel.stale.value = ""
    revision = panel.state.revision
    cnn_demo_pruner.prune(0.5)  # a closed panel no longer listens
    assert panel.stale.value == "" and panel.state.revision == revision


def test_export_panel_has_stable_css_classes(mlp_demo_pruner):
    panel = ExportPanel(mlp_demo_pruner)
    assert "prunelab-export" in panel._dom_classes
    assert "prunelab-export-button" in panel.export_button._dom_classes
    assert "prunelab-export-path" in panel.path._dom_classes


def test_the_formats_offered_are_prunelabs_export_formats(mlp_demo_pruner):
    panel = ExportPanel(mlp_demo_pruner)
    assert [value for _label, value in panel.format.options] == list(pl.EXPORT_FORMATS)
    panel.close()


def test_structured_export_writes_a_smaller_model_with_the_same_outputs(cnn_demo_pruner, tmp_path):
    half_the_units(cnn_demo_pruner)
    panel = ExportPanel(cnn_demo_pruner, directory=tmp_path)
    panel.format.value = "structured"
    panel.export_button.click()
    assert "Wrote" in panel.status.value and panel.last_export.format == "structured"
    assert all(f.exists() for f in panel.last_export.files)
    small = pl.load_structured(panel.last_export.path)
    x = cnn_demo_pruner.val_inputs[:32]
    with torch.no_grad():
        assert torch.allclose(small(x), cnn_demo_pruner.model(x), atol=1e-4)
    dense = sum(p.numel() for p in cnn_demo_pruner.model.parameters())
    assert sum(p.numel() for p in small.parameters()) < dense
    panel.close()


def test_onnx_export_is_checked_against_the_masked_model(cnn_demo_pruner, tmp_path):
    half_the_units(cnn_demo_pruner)
    onnxruntime = pytest.importorskip("onnxruntime")
    panel = ExportPanel(cnn_demo_pruner, directory=tmp_path)
    panel.format.value = "onnx"
    assert panel.path.value == str(tmp_path / "pruned-model.onnx")
    panel.export_button.click()
    done = panel.last_export
    assert done is not None and done.path.exists(), panel.status.value
    assert "Outputs checked on" in panel.status.value
    session = onnxruntime.InferenceSession(str(done.path))
    x = cnn_demo_pruner.val_inputs[:8]
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.allclose(out, cnn_demo_pruner.model(x).numpy(), atol=1e-4)
    panel.close()


def test_in_an_explorer_the_panel_observes_the_explorers_state(explorer):
    panel = explorer.panels["Export"]
    assert isinstance(panel, ExportPanel) and panel.state is explorer.state
    panel.report = object()  # as if measured
    panel.stale.value = ""
    explorer.pruner.prune(0.5)
    assert "changed since" in panel.stale.value
    explorer.pruner.reset()
    explorer.wait()
    panel.report = None


def test_the_gives_line_says_a_shrinking_format_gains_nothing_until_units_are_pruned(mlp_demo_pruner, tmp_path):
    panel = ExportPanel(mlp_demo_pruner, directory=tmp_path)
    mlp_demo_pruner.prune(0.8)  # unstructured: no unit goes whole
    for fmt in ("structured", "onnx"):
        panel.format.value = fmt
        assert "nothing now" in panel.gives.value and "units are removed" not in panel.gives.value
    panel.format.value = "structured"
    mlp_demo_pruner.prune(0.5, granularity="structured")  # the line follows the state, the format unchanged
    assert "units are removed" in panel.gives.value
    panel.format.value = "sparse"
    assert "size only" in panel.gives.value
