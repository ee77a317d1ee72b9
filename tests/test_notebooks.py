"""Every notebook in notebooks/ runs top to bottom headless, with no error output, and shows what it
exists to show. Each is run once in the suite: the explorer notebooks in JupyterLab by the browser
tests (tests/browser/, which name their NOTEBOOK), the others here with nbclient.

The kernel is this interpreter's (the venv's): jupyter_client starts a spec whose command is
``python`` with ``sys.executable``, and each run checks it. The checkout's prunelab is put first
on the kernel's path, so the notebooks test this code and not an installed copy. PRUNELAB_QUICK=1
asks the notebooks that train for a short schedule (each reads it itself).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BROWSER_TESTS = sorted((ROOT / "tests" / "browser").glob("test_*.py"))


def browser_notebooks() -> set[str]:
    """The notebooks the browser tests open (each module's ``NOTEBOOK = "..."``)."""
    found = set()
    for path in BROWSER_TESTS:
        found.update(re.findall(r'^NOTEBOOK = "([^"]+\.ipynb)"', path.read_text(), flags=re.M))
    return found


IN_BROWSER = browser_notebooks()
HERE = [p for p in NOTEBOOKS if p.name not in IN_BROWSER]
# Variables each notebook run here leaves, printed by a cell appended after its own.
LEAVES = {
    "03-iterative-pruning.ipynb": ("SCHEDULE", "baseline", "one_shot", "iterative", "random_one_shot",
                                   "random_iterative"),
    "04-export.ipynb": (),
    "05-hugging-face.ipynb": (),
    "06-beyond.ipynb": ("QUICK", "WANDA_GAIN_90", "RECALIBRATED", "ALLOCATE", "INT8"),
    "07-tables.ipynb": ("KINDS_MADE",),
}
SAYS = {"04-export.ipynb": ("same masks: True", "only 'structured'"),
        "05-hugging-face.ipynb": ("whole heads: True", "same outputs: True"),
        "06-beyond.ipynb": ("after recalibration:", "| structured+int8 |", "changed class", "loaded back"),
        "07-tables.ipynb": ("| Pruned | Accuracy |", "made 9 tables")}  # what its computed output must say


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


def test_each_notebook_is_run_once_by_the_suite():
    assert {"01-quickstart.ipynb", "02-your-own-model.ipynb"} <= IN_BROWSER  # the explorer, in a real browser
    assert IN_BROWSER <= {p.name for p in NOTEBOOKS}, "a browser test opens a notebook that is not there"
    assert {p.name for p in HERE} == set(LEAVES), "a notebook nobody runs, or one run twice"


@pytest.fixture(scope="module")
def run_notebook(tmp_path_factory):
    """Run a notebook with nbclient (once per module and notebook): its executed cells and the values of
    the variables named in LEAVES."""
    import nbformat
    from nbclient import NotebookClient

    done = {}

    def _run(path: Path):
        if path.name in done:
            return done[path.name]
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1",  # small models train faster on one thread
               "PRUNELAB_QUICK": "1"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the kernel inherits this process's environment
        try:
            nb = nbformat.read(path, as_version=4)
            names = LEAVES.get(path.name, ())
            nb.cells.append(nbformat.v4.new_code_cell(
                "import json as _json, sys as _sys, prunelab as _pl\n"
                f"print(_json.dumps({{'executable': _sys.executable, 'package': _pl.__file__, "
                f"'values': {{n: globals()[n] for n in {list(names)!r}}}}}))"))
            client = NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=True,
                                    resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}})
            client.execute()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        last = nb.cells.pop()
        assert not _errors(nb), f"{path.name} wrote errors: {_errors(nb)}"
        assert last.outputs and last.outputs[0].get("name") == "stdout", f"{path.name}: the probe cell failed"
        done[path.name] = nb, json.loads(last.outputs[0]["text"])
        return done[path.name]

    return _run


@pytest.mark.slow
@pytest.mark.timeout(900)  # the kernel's start and every cell (nbclient gives each cell 300 s)
@pytest.mark.parametrize("path", HERE, ids=lambda p: p.name)
def test_notebook_runs_without_errors_in_this_checkout(path, run_notebook):
    nb, probe = run_notebook(path)
    assert Path(probe["executable"]).resolve() == Path(sys.executable).resolve(), "the kernel is not this venv's"
    assert Path(probe["package"]).resolve().is_relative_to(ROOT), "the kernel imported another prunelab"
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    for expected in SAYS.get(path.name, ()):
        assert expected in text, f"{path.name} does not say {expected!r}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_iterative_pruning_beats_one_shot_at_the_same_sparsity(run_notebook):
    """What notebook 03 exists to show, read from the accuracies it measured (at 95% of weights)."""
    _, probe = run_notebook(ROOT / "notebooks" / "03-iterative-pruning.ipynb")
    v = probe["values"]
    assert v.pop("SCHEDULE"), "the notebook did not take the quick schedule PRUNELAB_QUICK=1 asks for"
    assert v["iterative"] > v["one_shot"], v            # prune and retrain beats pruning once
    assert v["random_iterative"] > v["random_one_shot"], v
    assert v["iterative"] > v["random_iterative"], v    # magnitude beats the random baseline
    assert v["one_shot"] > v["random_one_shot"], v
    assert v["one_shot"] < v["baseline"], v              # 95% one-shot costs accuracy: there is a gap to close


def test_quickstart_opens_the_demo_explorer_first():
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "01-quickstart.ipynb", as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert 'pl.explore("digits-mlp")' in first_code.source


def test_notebook_03_reads_the_quick_switch_itself():
    # the quick schedule is the notebook's own choice, visible to a reader, and off unless asked for
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "03-iterative-pruning.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'os.environ.get("PRUNELAB_QUICK") == "1"' in code
    assert code.count("**SCHEDULE") == code.count(".iterate(") == 3


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_beyond_notebook_shows_each_part_beating_its_baseline(run_notebook):
    """What notebook 06 exists to show, read from what it measured on the demos."""
    _, probe = run_notebook(ROOT / "notebooks" / "06-beyond.ipynb")
    v = probe["values"]
    assert v["QUICK"], "the notebook did not take the quick settings PRUNELAB_QUICK=1 asks for"
    assert all(gain > 0.03 for gain in v["WANDA_GAIN_90"].values()), v["WANDA_GAIN_90"]  # wanda beats |W| at 90%
    assert all(after > before + 0.03 for before, after in v["RECALIBRATED"].values()), v["RECALIBRATED"]
    for name, a in v["ALLOCATE"].items():  # half the FLOPs within 2%, at least as accurate as uniform
        assert abs(a["flops_kept"] - 0.5) <= 0.02 and a["allocated"] >= a["uniform"] - 0.01, (name, a)
    (int8_bytes, int8_acc), (cut_bytes, cut_acc) = v["INT8"]["int8"], v["INT8"]["structured+int8"]
    assert cut_bytes < int8_bytes and int8_acc > 0.5 and cut_acc > 0.5, v["INT8"]
