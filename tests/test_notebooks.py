"""Every notebook in notebooks/ runs top to bottom headless, with no error output.

The kernel is this interpreter's (the venv's): jupyter_client starts a spec whose command is
``python`` with ``sys.executable``, and each run checks it. The checkout's prunelab is put first
on the kernel's path, so the notebooks test this code and not an installed copy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _errors(nb) -> list[str]:
    """Error outputs (exceptions, and text written to stderr that says Error/Traceback)."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"{out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr" and (
                    "Error" in out.get("text", "") or "Traceback" in out.get("text", "")):
                found.append(out["text"][:500])
    return found


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys, prunelab\nprint(sys.executable)\n"
                                              "print(prunelab.__file__)"))
    client = NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    assert not _errors(nb), f"{path.name} wrote errors: {_errors(nb)}"
    executable, package = nb.cells[-1].outputs[0]["text"].split()
    assert Path(executable).resolve() == Path(sys.executable).resolve(), "the kernel is not this venv's Python"
    assert Path(package).resolve().is_relative_to(ROOT)

    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, f"{path.name} shows no explorer"
    loader = [o for o in outputs if "application/vnd.bokehjs_load.v0+json" in o.get("data", {})]
    assert loader and "cdn.bokeh.org" not in json.dumps(loader[0]["data"])[:200000]  # BokehJS inline


def test_quickstart_opens_the_demo_explorer_first():
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "01-quickstart.ipynb", as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert 'pl.explore("digits-mlp")' in first_code.source
