"""`import prunelab` and the `prunelab` command stay light: the widget stack (bokeh, ipywidgets,
jupyter_bokeh) is imported only when the explorer is opened (prunelab/__init__.py's __getattr__).

Each check runs in a fresh interpreter, since this one has long imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDGET_STACK = ("bokeh", "ipywidgets", "jupyter_bokeh")


def imported_after(code: str) -> set[str]:
    """Top-level packages of the widget stack in sys.modules after running ``code`` in a fresh Python."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(WIDGET_STACK)!r})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=240)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.slow  # one fresh interpreter that imports torch: seconds
def test_import_prunelab_and_the_cli_leave_the_widget_stack_out():
    code = ("import contextlib, io\n"
            "import prunelab as pl\n"
            "from prunelab.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['sweep', '--sparsity', '0,0.5'])\n"  # builds the parser, loads a demo, prunes, measures
            "    pl.Pruner\n")
    assert imported_after(code) == set()


@pytest.mark.slow
def test_the_explorer_brings_the_widget_stack_in():
    # the check above can fail: the same probe sees the stack once the explorer is touched
    assert imported_after("import prunelab as pl\npl.explore") == set(WIDGET_STACK)
