"""The `prunelab` command: help, `prunelab sweep` printing the results table, `prunelab export` in every
format, and `prunelab lab` (what it would start, without starting JupyterLab)."""

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab import EXPORT_FORMATS, Pruner, demos, load_sparse, load_state_dict, load_structured
from prunelab.cli import main
from prunelab.core.checks import GRANULARITIES
from prunelab.core.criteria import CRITERIA

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
    if not script.exists():  # `make test` installs it (pip install -e): in CI a missing script is a failure
        (pytest.fail if os.environ.get("CI") else pytest.skip)("prunelab is not installed as a script here")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: prunelab" in result.stdout


@pytest.fixture(scope="module")
def json_rows():
    out = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, out
    try:
        assert main(["sweep", "--demo", "digits-mlp", "--sparsity", "0,0.5,0.9", "--format", "json"]) == 0
    finally:
        sys.stdout = sys_stdout
    return json.loads(out.getvalue())


def test_sweep_json_rows_are_measured(json_rows, mlp_demo_pruner, mlp_demo):
    assert [r["sparsity"] for r in json_rows] == [0, 0.5, 0.9]
    pruner = mlp_demo_pruner
    params = sum(p.numel() for p in mlp_demo.model.parameters())  # every parameter sits in a prunable layer
    for row in json_rows:
        pruner.reset()
        if row["sparsity"]:
            pruner.prune(row["sparsity"])
        m = pruner.evaluate()
        assert row["accuracy"] == m.accuracy and row["nonzero_params"] == m.nonzero_params
        assert row["samples"] == len(mlp_demo.val) and row["params"] == m.params == params
    assert json_rows[0]["nonzero_params"] == params
    assert json_rows[0]["nonzero_params"] > json_rows[1]["nonzero_params"] > json_rows[2]["nonzero_params"]


def test_sweep_markdown_has_one_row_per_sparsity_and_names_the_data(capsys, json_rows, mlp_demo):
    # The shell route (`python -m prunelab`) is checked by test_python_m_prunelab_help; this is the same main().
    assert main(["sweep", "--demo", "digits-mlp", "--sparsity", "0,0.5,0.9"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| Pruned | Accuracy |")
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[2:5]]
    assert [r[0] for r in rows] == ["0%", "50%", "90%"]
    assert [r[1] for r in rows] == [f"{j['accuracy']:.1%}" for j in json_rows]  # the measured accuracy
    assert f"Measured on {len(mlp_demo.val)} validation samples" in lines[-1]


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


def test_two_of_four_sweep_refuses_other_sparsities_and_says_what_to_pass():
    with pytest.raises(SystemExit, match="2:4 sparsity is always 0.5.*got 0.9: pass --sparsity 0.5 .*--granularity"):
        main(["sweep", "--sparsity", "0.9", "--granularity", "2:4"])


def test_version_and_bare_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("prunelab ")
    assert main([]) == 0
    assert "usage: prunelab" in capsys.readouterr().out


# ---------------------------------------------------------------------- prunelab export

def run_export(capsys, *args) -> tuple[int, str, str]:
    """``prunelab export ARGS`` in-process: (exit status, stdout, stderr)."""
    status = main(["export", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def state_bits(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def default_export_pruner(demo):
    """What `prunelab export` does by default (--demo digits-cnn --sparsity 0.5 --granularity structured
    --scope layer --criterion magnitude), done through the Python API."""
    pruner = Pruner(demo.model, demo.val, train_data=demo.train)
    return pruner.prune(0.5, criterion="magnitude", granularity="structured", scope="layer")


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_export_scope_ranks_as_the_api_does(capsys, tmp_path, scope, mlp_demo_pruner):
    path = tmp_path / f"{scope}.sparse.safetensors"
    status, out, err = run_export(capsys, "--demo", "digits-mlp", "--sparsity", "0.8", "--granularity",
                                  "unstructured", "--scope", scope, "--format", "sparse", "--out", str(path))
    assert status == 0, err
    assert f"wrote sparse: {path}" in out
    expected = mlp_demo_pruner.prune(0.8, granularity="unstructured", scope=scope)
    assert_same_tensors(load_sparse(path), state_bits(expected.model))
    assert f"{expected.evaluate()}" in out  # the printed measurement is this state's


def test_export_scopes_differ(mlp_demo_pruner):
    # so that the test above can tell --scope from a flag that is ignored
    by_layer = mlp_demo_pruner.prune(0.8, scope="layer").sparsity()
    by_all = mlp_demo_pruner.reset().prune(0.8, scope="global").sparsity()
    assert all(v == pytest.approx(0.8, abs=1e-3) for v in by_layer.values())
    assert len({round(v, 3) for v in by_all.values()}) > 1


def test_export_structured_writes_the_smaller_network(capsys, tmp_path, cnn_demo):
    base = tmp_path / "small"
    status, out, err = run_export(capsys, "--format", "structured", "--out", str(base))
    assert status == 0, err
    expected = default_export_pruner(cnn_demo)
    x = expected.val_inputs
    with torch.no_grad():
        reference = expected.model.eval()(x)
        program = load_structured(base.with_suffix(".pt2"))
        torch.testing.assert_close(program(x), reference, atol=1e-5, rtol=1e-5)
        rebuilt = load_structured(base.with_suffix(".safetensors"), demos.load("digits-cnn").model)
        torch.testing.assert_close(rebuilt(x), reference, atol=1e-5, rtol=1e-5)
    dense_params = sum(p.numel() for p in demos.load("digits-cnn").model.parameters())
    assert sum(p.numel() for p in rebuilt.parameters()) < dense_params  # units really removed
    assert "units_removed:" in out


def test_export_onnx_runs_in_onnxruntime_like_the_pruned_model(capsys, tmp_path, cnn_demo):
    import onnxruntime as ort  # in the test extra: a missing one is a failure, not a skip
    path = tmp_path / "model.onnx"
    status, out, err = run_export(capsys, "--format", "onnx", "--out", str(path))
    assert status == 0, err
    assert f"wrote onnx: {path}" in out
    expected = default_export_pruner(cnn_demo)
    x = expected.val_inputs
    with torch.no_grad():
        reference = expected.model.eval()(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)


def test_export_replays_a_recipe_instead_of_the_pruning_flags(capsys, tmp_path, cnn_demo_pruner):
    pruner = cnn_demo_pruner
    pruner.prune(0.5, granularity="structured", scope="layer")
    pruner.prune({pruner.layer_names[-2]: 0.8}, criterion="random")
    recipe = pruner.export(tmp_path / "recipe.json", format="recipe").path
    path = tmp_path / "replayed.safetensors"
    # --sparsity 0.9 is ignored: the recipe says what to do
    status, out, err = run_export(capsys, "--recipe", str(recipe), "--sparsity", "0.9", "--format", "state_dict",
                                  "--out", str(path))
    assert status == 0, err
    replayed = demos.load("digits-cnn").model
    replayed.load_state_dict(load_state_dict(path))
    assert_same_tensors(state_bits(replayed), state_bits(pruner.model))


@pytest.mark.slow  # times dense vs structured: seconds
def test_export_all_writes_every_format_and_a_table_of_their_real_sizes(capsys, tmp_path):
    folder = tmp_path / "all"
    status, out, err = run_export(capsys, "--format", "all", "--out", str(folder))
    assert status == 0, err
    files = sorted(folder.iterdir())
    assert {f.name.split(".")[0] for f in files} == {f"model-{fmt}" for fmt in EXPORT_FORMATS}
    table = out[out.index("| Format |"):]
    for f in files:  # every file's real size is in the table
        assert f"{f.stat().st_size / 1e3:,.1f} kB" in table, f.name
    assert "Latency, dense:" in out and "Latency, structured:" in out
    assert f"Files in {folder}/" in out


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_export_bad_sparsity_is_one_clear_line(value, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--sparsity", value, "--out", str(tmp_path / "x")])
    message = exit_info.value.code  # a string: Python prints it on stderr and exits with status 1
    assert isinstance(message, str) and "\n" not in message
    assert "--sparsity" in message and value in message and "[0, 1]" in message
    assert not list(tmp_path.iterdir())


def test_export_sparsity_that_is_not_a_number_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--sparsity", "half", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "argument --sparsity: invalid float value: 'half'" in capsys.readouterr().err


@pytest.mark.slow  # starts Python
def test_export_bad_sparsity_from_the_shell_has_no_traceback(tmp_path):
    result = run_module("export", "--sparsity", "1.5", "--out", str(tmp_path / "x"))
    assert result.returncode == 1
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "prunelab export: --sparsity must be a fraction in [0, 1] (0.9 prunes 90% of weights), got 1.5."]


def test_export_to_an_unwritable_place_says_so_in_one_line(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    status, out, err = run_export(capsys, "--demo", "digits-mlp", "--granularity", "unstructured",
                                  "--out", str(blocker / "model.safetensors"))
    assert status == 1
    assert err.startswith("prunelab export: ") and err.count("\n") == 1 and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


def cli_choices(capsys, *args) -> list[str]:
    """The choices the CLI offers after ``args`` (read from argparse's own error for a bad one)."""
    with pytest.raises(SystemExit):
        main([*args, "no-such-choice"])
    m = re.search(r"invalid choice: 'no-such-choice' \(choose from (.*)\)", capsys.readouterr().err)
    assert m, "no list of choices"
    return [c.strip().strip("'") for c in m.group(1).split(",")]


def test_the_clis_choices_are_the_librarys(capsys):
    assert cli_choices(capsys, "export", "--out", "x", "--format") == [*EXPORT_FORMATS, "all"]
    assert cli_choices(capsys, "export", "--out", "x", "--granularity") == list(GRANULARITIES)
    assert cli_choices(capsys, "sweep", "--granularity") == list(GRANULARITIES)
    assert set(cli_choices(capsys, "sweep", "--criterion")) == set(CRITERIA)
    assert set(cli_choices(capsys, "export", "--out", "x", "--criterion")) == set(CRITERIA)
    assert cli_choices(capsys, "sweep", "--demo") == list(demos.NAMES)


# ---------------------------------------------------------------------- prunelab lab

@pytest.mark.parametrize("uid, root_flag", [(0, ["--allow-root"]), (1000, [])])
def test_lab_opens_the_quickstart_in_jupyterlab(monkeypatch, uid, root_flag):
    import subprocess as subprocess_module

    calls = []
    monkeypatch.setattr(subprocess_module, "call", lambda cmd, *a, **k: calls.append(cmd) or 7)
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    monkeypatch.chdir(ROOT)
    assert main(["lab"]) == 7  # JupyterLab's exit status is the command's
    notebook = ROOT / "notebooks" / "01-quickstart.ipynb"
    assert calls == [[sys.executable, "-m", "jupyter", "lab", str(notebook), *root_flag]]


def test_lab_outside_the_repository_opens_jupyterlab_without_a_notebook(monkeypatch, tmp_path):
    import subprocess as subprocess_module

    calls = []
    monkeypatch.setattr(subprocess_module, "call", lambda cmd, *a, **k: calls.append(cmd) or 0)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.chdir(tmp_path)
    assert main(["lab"]) == 0
    assert calls == [[sys.executable, "-m", "jupyter", "lab"]]


# ---------------------------------------------------------------------- never a traceback

def one_clear_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


def test_an_unwritable_out_folder_for_all_formats_is_named(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    status, out, err = run_export(capsys, "--demo", "digits-mlp", "--format", "all", "--out", str(blocker / "all"))
    line = one_clear_line(err)
    assert status == 1 and "[Errno" not in line
    assert line.startswith(f"prunelab export: could not create the folder {blocker / 'all'}") and "choose an --out" in line


@pytest.mark.parametrize("content, message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"format": "prunelab.recipe", "steps": "prune"}', "'steps' must be a list"),
    ('{"format": "prunelab.recipe", "steps": [1, 2]}', "step 0 must be a JSON object"),
    ('{"format": "prunelab.recipe", "layers": ["0"]}', "'layers' must be a JSON object"),
    ('{"format": "prunelab.recipe", "steps": [{"kind": "distill"}]}', "kind 'distill'"),
])
def test_a_bad_recipe_is_one_line(capsys, tmp_path, content, message):
    (tmp_path / "r.json").write_text(content)
    status, out, err = run_export(capsys, "--demo", "digits-mlp", "--recipe", str(tmp_path / "r.json"),
                                  "--out", str(tmp_path / "m"))
    assert status == 1 and message in one_clear_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_missing_recipe_is_one_line(capsys, tmp_path):
    status, out, err = run_export(capsys, "--recipe", str(tmp_path / "nope.json"), "--out", str(tmp_path / "m"))
    assert status == 1 and "nope.json does not exist" in one_clear_line(err)


@pytest.mark.parametrize("error, status, message", [
    (TypeError("bad operand"), 1, "unexpected TypeError: bad operand. This is a bug in prunelab: please report it"),
    (RecursionError("deep"), 1, "nested too deeply"),
    (PermissionError(13, "Permission denied", "/x/y"), 1, "Permission denied: /x/y. Check that the path exists"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_any_exception_is_one_line_and_a_nonzero_status(capsys, monkeypatch, error, status, message):
    import prunelab.cli

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(prunelab.cli, "report_command", boom)
    monkeypatch.delenv("PRUNELAB_TRACEBACK", raising=False)
    assert main(["sweep"]) == status
    line = one_clear_line(capsys.readouterr().err)
    assert line.startswith("prunelab sweep: ") and message in line


@pytest.mark.slow  # starts Python
def test_a_deep_recipe_from_the_shell_has_no_traceback(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    result = run_module("export", "--demo", "digits-mlp", "--recipe", str(tmp_path / "deep.json"),
                        "--out", str(tmp_path / "m"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "nested too deeply" in result.stderr
