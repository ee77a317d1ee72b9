"""compare_formats with its defaults: every format written, measured from the real files."""

from __future__ import annotations

import tempfile

import pytest

import prunelab as pl
from prunelab.export import SUFFIXES


@pytest.fixture(scope="module")
def report_and_folder(tmp_path_factory):
    d = pl.demos.load("digits-mlp")
    pruner = pl.Pruner(d.model, d.val)
    pruner.prune(0.5, granularity="structured", scope="layer")
    folder = tmp_path_factory.mktemp("formats")
    return pruner, pl.compare_formats(pruner, directory=folder, repeats=3, batch=32), folder


@pytest.mark.slow
def test_default_formats_are_all_written_into_the_directory(report_and_folder):
    pruner, report, folder = report_and_folder
    names = {f"model-{fmt}{SUFFIXES[fmt]}" for fmt in pl.EXPORT_FORMATS if fmt != "structured"}
    names |= {"model-structured.safetensors", "model-structured.pt2", "model-int8.structured.safetensors"}
    assert {p.name for p in folder.iterdir()} == names
    rows = {r.format: r for r in report.rows}
    assert list(rows) == ["state_dict", "sparse", "structured", "structured .pt2", "onnx", "recipe", "int8",
                          "structured+int8"]
    assert all(r.error is None for r in report.rows), [r.error for r in report.rows if r.error]
    files = {"structured": "model-structured.safetensors", "structured .pt2": "model-structured.pt2",
             "structured+int8": "model-int8.structured.safetensors"}
    for fmt, row in rows.items():  # sizes are those of the real files
        name = files.get(fmt, f"model-{fmt}{SUFFIXES.get(fmt, '')}")
        assert row.bytes == (folder / name).stat().st_size, fmt
    assert report.units_removed == sum(round(0.5 * pruner.layer(n).units) for n in pruner.unit_groups())
    assert report.structured is not None and report.dense.repeats == report.structured.repeats == 3


@pytest.mark.slow
def test_without_a_directory_nothing_is_left_behind(report_and_folder, tmp_path, monkeypatch):
    pruner = report_and_folder[0]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where TemporaryDirectory makes its folder
    report = pl.compare_formats(pruner, formats=("state_dict", "recipe"), repeats=1, batch=8)
    assert [r.format for r in report.rows] == ["state_dict", "recipe"] and all(r.bytes for r in report.rows)
    assert list(tmp_path.iterdir()) == []
