"""`prunelab report KIND` (and `prunelab sweep`) on a model given by import path, as a user's own
package would give it: a module written into tmp_path and put on the path."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab import Pruner
from prunelab.cli import main

ROOT = Path(__file__).resolve().parents[2]
NAME = "user_models_for_prunelab"
MODULE = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

model = build()

def val():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()

wrong_width = (torch.randn(10, 5), torch.zeros(10, dtype=torch.long))

def broken():
    raise RuntimeError("no GPU here")

not_a_model = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / f"{NAME}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield sys.modules.setdefault(NAME, __import__(NAME))
    sys.modules.pop(NAME, None)


@pytest.fixture
def weights(user_module, tmp_path):
    """A state for build() that differs from its own initial weights (so loading it shows)."""
    from safetensors.torch import save_file

    model = user_module.build()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)
    path = tmp_path / "trained.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def run_main(capsys, *args):
    status = main(list(args))
    return status, capsys.readouterr().out


def test_report_on_a_model_by_import_path_with_weights(capsys, user_module, weights):
    path, trained = weights
    status, out = run_main(capsys, "report", "sparsity", "--model", f"{NAME}:build", "--weights", str(path),
                           "--data", f"{NAME}:val", "--sparsity", "0,0.5", "--format", "json")
    assert status == 0
    rows = json.loads(out)
    expected = Pruner(trained, user_module.val())
    assert rows[0]["accuracy"] == expected.evaluate().accuracy  # measured with the loaded weights
    assert rows[1]["accuracy"] == expected.prune(0.5).evaluate().accuracy
    assert rows[1]["file_mb"] > 0 and rows[0]["params"] == sum(p.numel() for p in trained.parameters())


def test_sweep_takes_model_and_data_too(capsys, user_module):
    status, out = run_main(capsys, "sweep", "--model", f"{NAME}:model", "--data", f"{NAME}:val", "--sparsity",
                           "0,0.9", "--format", "csv")
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [float(r["sparsity"]) for r in rows] == [0, 0.9]
    assert float(rows[0]["accuracy"]) == Pruner(user_module.build(), user_module.val()).evaluate().accuracy


def test_report_kinds_from_the_shell(capsys, user_module):
    status, out = run_main(capsys, "report", "criteria", "--model", f"{NAME}:build", "--data", f"{NAME}:val",
                           "--criteria", "magnitude,random", "--sparsity", "0,0.9")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "| Pruned | magnitude | random |" and lines[2].startswith("| 0% |")
    status, out = run_main(capsys, "report", "layers", "--model", f"{NAME}:build", "--data", f"{NAME}:val")
    assert status == 0 and "| Layer | Kind | Connections before |" in out and "| total |" in out
    status, out = run_main(capsys, "report", "thresholds", "--demo", "digits-mlp", "--thresholds", "0.05",
                           "--format", "json")
    assert status == 0 and json.loads(out)[0]["threshold"] == 0.05


@pytest.mark.parametrize("args, message", [
    (["--model", "no_such_pkg_xyz:build", "--data", f"{NAME}:val"], "no module named 'no_such_pkg_xyz'"),
    (["--model", f"{NAME}:nothing", "--data", f"{NAME}:val"], f"{NAME} has no attribute 'nothing' (it has: "),
    (["--model", NAME, "--data", f"{NAME}:val"], "expected MODULE:ATTRIBUTE, e.g. mypkg.models:build"),
    (["--model", f"{NAME}:broken", "--data", f"{NAME}:val"], "calling broken() failed: RuntimeError: no GPU here"),
    (["--model", f"{NAME}:not_a_model", "--data", f"{NAME}:val"], "gave a int, not a torch.nn.Module"),
    (["--model", f"{NAME}:build", "--data", f"{NAME}:nothing"], "--data"),
    (["--model", f"{NAME}:build", "--data", f"{NAME}:wrong_width"], "prunelab report: "),
    (["--model", f"{NAME}:build"], "--model needs --data MODULE:ATTR"),
    (["--model", f"{NAME}:build", "--data", f"{NAME}:val", "--weights", "missing.safetensors"], "no such file"),
    (["--demo", "digits-mlp", "--weights", "x.safetensors"], "--weights goes with --model"),
    (["--demo", "digits-mlp", "--thresholds", "0.1"], "--thresholds does not apply to this report"),
])
def test_bad_paths_and_callables_are_one_clear_line(user_module, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "sparsity", *args])
    text = exit_info.value.code  # a string: Python prints it on stderr and exits with status 1
    assert isinstance(text, str) and "\n" not in text and "Traceback" not in text
    assert text.startswith("prunelab report") and message in text


def test_weights_that_do_not_fit_say_so(user_module, tmp_path):
    from safetensors.torch import save_file

    save_file({"0.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "layers", "--model", f"{NAME}:build", "--data", f"{NAME}:val", "--weights",
              str(tmp_path / "other.safetensors")])
    assert "does not fit the model" in exit_info.value.code and "\n" not in exit_info.value.code


@pytest.mark.slow  # starts Python
def test_the_shell_on_a_users_package_with_no_traceback(tmp_path):
    (tmp_path / f"{NAME}.py").write_text(MODULE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the user's module is found in the current folder
    good = subprocess.run([sys.executable, "-m", "prunelab", "report", "size", "--model", f"{NAME}:build", "--data",
                           f"{NAME}:val", "--format", "csv"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("file,format,mb,reduction,error\ndense,state_dict,")
    bad = subprocess.run([sys.executable, "-m", "prunelab", "report", "layers", "--model", f"{NAME}:broken",
                          "--data", f"{NAME}:val"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 1 and bad.stdout == "" and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"prunelab report: --model '{NAME}:broken': calling broken() failed: RuntimeError: no GPU here"]
