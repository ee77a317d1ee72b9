"""The `prunelab` command: help, and `prunelab sweep` printing the results table."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab import Pruner, demos
from prunelab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "prunelab", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prunelab") and "sweep" in out and "lab" in out
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--demo", "--sparsity", "--criterion", "--granularity", "--format"))


@pytest.mark.slow
def test_python_m_prunelab_help():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: prunelab") and "sweep" in result.stdout and "lab" in result.stdout


@pytest.mark.slow
def test_the_console_script_is_declared_and_runs():
    assert 'prunelab = "prunelab.cli:main"' in (ROOT / "pyproject.toml").read_text()
    script = Path(sys.executable).parent / "prunelab"
    if not script.exists():
        pytest.skip("prunelab is not installed as a script in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: prunelab" in result.stdout


@pytest.mark.slow
def test_sweep_from_the_shell_prints_the_table():
    result = run_module("sweep", "--demo", "digits-mlp", "--sparsity", "0,0.5,0.9")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| Pruned | Accuracy |")
    assert [l.split("|")[1].strip() for l in lines[2:5]] == ["0%", "50%", "90%"]
    assert "Measured on 360 validation samples" in result.stdout


@pytest.fixture(scope="module")
def json_rows():
    out = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, out
    try:
        assert main(["sweep", "--demo", "digits-mlp", "--sparsity", "0,0.5,0.9", "--format", "json"]) == 0
    finally:
        sys.stdout = sys_stdout
    return json.loads(out.getvalue())


def test_sweep_json_rows_are_measured(json_rows):
    assert [r["sparsity"] for r in json_rows] == [0, 0.5, 0.9]
    d = demos.load("digits-mlp")
    pruner = Pruner(d.model, d.val, train_data=d.train)
    for row in json_rows:
        pruner.reset()
        if row["sparsity"]:
            pruner.prune(row["sparsity"])
        m = pruner.evaluate()
        assert row["accuracy"] == m.accuracy and row["nonzero_params"] == m.nonzero_params
        assert row["samples"] == 360 and row["params"] == m.params == 50_610  # 64*300+300 + 300*100+100 + 100*10+10
    assert json_rows[0]["accuracy"] >= 0.97
    assert json_rows[0]["nonzero_params"] > json_rows[1]["nonzero_params"] > json_rows[2]["nonzero_params"]


def test_sweep_markdown_and_csv(capsys):
    assert main(["sweep", "--demo", "digits-cnn", "--sparsity", "0,0.5", "--granularity", "structured",
                 "--criterion", "random"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| Units pruned | Accuracy |") and "| 50% |" in table
    assert main(["sweep", "--demo", "digits-cnn", "--sparsity", "0.5", "--granularity", "2:4", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and float(rows[0]["sparsity"]) == 0.5
    assert int(rows[0]["nonzero_params"]) < int(rows[0]["params"])


@pytest.mark.parametrize("args, message", [
    (["sweep", "--sparsity", "0,1.5"], "sparsities must be fractions in [0, 1]"),
    (["sweep", "--sparsity", "half"], "expected comma-separated fractions"),
    (["sweep", "--demo", "mnist"], "invalid choice: 'mnist'"),
    (["sweep", "--criterion", "l1"], "invalid choice: 'l1'"),
    (["sweep", "--granularity", "channel"], "invalid choice: 'channel'"),
    (["sweep", "--format", "xml"], "invalid choice: 'xml'"),
])
def test_bad_arguments_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_two_of_four_sweep_refuses_other_sparsities():
    with pytest.raises(SystemExit, match="2:4 sparsity is always 0.5"):
        main(["sweep", "--sparsity", "0.9", "--granularity", "2:4"])


def test_version_and_bare_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("prunelab ")
    assert main([]) == 0
    assert "usage: prunelab" in capsys.readouterr().out
