"""Exports replace all or nothing: a failure at any write, any rename or an interrupt leaves every
destination with its previous file (byte for byte), and removes only what the failed call created."""

from __future__ import annotations

import errno
import os

import pytest

from prunelab.core import files as export_files

FORMATS = ["state_dict", "sparse", "recipe", "structured"]


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


class Faults:
    """Counts calls of one operation (a file write, ``os.replace``, ``os.link``) and fails the
    ``fail_at``-th (1-based; 0: never) with ``error``."""

    def __init__(self, monkeypatch, what: str, fail_at: int = 0, error: BaseException | None = None):
        self.calls, self.fail_at = 0, fail_at
        self.error = error or OSError(errno.ENOSPC, "No space left on device")
        target, name = {"write": (export_files, "write_all"), "replace": (os, "replace"),
                        "link": (os, "link")}[what]
        real = getattr(target, name)

        def faulty(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                if what == "write":  # half the bytes reach the disk first, as on a full disk
                    real(args[0], args[1][: len(args[1]) // 2])
                raise self.error
            return real(*args, **kwargs)

        monkeypatch.setattr(target, name, faulty)


@pytest.fixture
def cheap_program(monkeypatch):
    """The .pt2 half of "structured" as bytes that differ per call: the write path is the same, and
    torch.export is not what is under test here."""
    count = iter(range(10**6))
    monkeypatch.setattr("prunelab.export.structured.program_bytes",
                        lambda model, example, info, output=None: f"program {next(count)}".encode())


def export(pruner, folder, fmt):
    return pruner.export(folder / "m", fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("what", ["write", "replace"])
@pytest.mark.parametrize("interrupt", [False, True], ids=["oserror", "interrupt"])
def test_a_failure_at_every_write_and_replace_keeps_the_previous_export(
        mlp_demo_pruner, tmp_path, monkeypatch, cheap_program, fmt, what, interrupt):
    pruner = mlp_demo_pruner
    folder = tmp_path / "out"
    folder.mkdir()
    pruner.prune(0.5, granularity="structured")
    export(pruner, folder, fmt)
    old = snapshot(folder)
    pruner.prune(0.8, granularity="structured")
    with monkeypatch.context() as m:  # how many writes and replaces a successful export makes
        counter = Faults(m, what)
        export(pruner, tmp_path, fmt)
    assert counter.calls >= 1
    for k in range(1, counter.calls + 1):
        error = KeyboardInterrupt() if interrupt else OSError(errno.EIO, "Input/output error")
        with monkeypatch.context() as m:
            Faults(m, what, fail_at=k, error=error)
            with pytest.raises(KeyboardInterrupt if interrupt else OSError) as info:
                export(pruner, folder, fmt)
        assert snapshot(folder) == old, f"failure at {what} {k} of {counter.calls} changed the old export"
        if not interrupt:
            assert "Nothing was written there" not in str(info.value)
            assert "unchanged; nothing new was written" in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("what", ["write", "replace"])
def test_a_failure_into_an_empty_folder_leaves_it_empty(mlp_demo_pruner, tmp_path, monkeypatch, cheap_program,
                                                        fmt, what):
    pruner = mlp_demo_pruner.prune(0.5, granularity="structured")
    with monkeypatch.context() as m:
        counter = Faults(m, what)
        export(pruner, tmp_path, fmt)
    folder = tmp_path / "empty"
    folder.mkdir()
    for k in range(1, counter.calls + 1):
        with monkeypatch.context() as m:
            Faults(m, what, fail_at=k)
            with pytest.raises(OSError, match="Nothing was written there"):
                export(pruner, folder, fmt)
        assert snapshot(folder) == {}


def test_the_second_structured_replace_failing_puts_the_first_file_back(mlp_demo_pruner, tmp_path, monkeypatch,
                                                                       cheap_program):
    """The case of issue 10: it used to remove the old .safetensors and say nothing was written."""
    pruner = mlp_demo_pruner.prune(0.5, granularity="structured")
    old = {f.name: f.read_bytes() for f in pruner.export(tmp_path / "s", "structured").files}
    pruner.prune(0.9, granularity="structured")
    with monkeypatch.context() as m:
        Faults(m, "replace", fail_at=2)
        with pytest.raises(OSError, match=r"The previous .*s.safetensors and .*s.pt2 are unchanged"):
            pruner.export(tmp_path / "s", "structured")
    assert snapshot(tmp_path) == old


def test_without_hard_links_the_old_files_are_copied_and_a_new_export_still_lands(
        mlp_demo_pruner, tmp_path, monkeypatch, cheap_program):
    pruner = mlp_demo_pruner.prune(0.5, granularity="structured")
    pruner.export(tmp_path / "s", "structured")
    pruner.prune(0.9, granularity="structured")
    expected = snapshot(tmp_path)
    monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no links here")))
    with monkeypatch.context() as m:
        Faults(m, "replace", fail_at=2)
        with pytest.raises(OSError):
            pruner.export(tmp_path / "s", "structured")
    assert snapshot(tmp_path) == expected  # put back from the copies
    done = pruner.export(tmp_path / "s", "structured")
    assert sorted(snapshot(tmp_path)) == sorted(f.name for f in done.files)  # no backup or temporary left


def test_a_rollback_that_fails_too_says_where_the_old_file_is(mlp_demo_pruner, tmp_path, monkeypatch, cheap_program):
    pruner = mlp_demo_pruner.prune(0.5, granularity="structured")
    old = {f.name: f.read_bytes() for f in pruner.export(tmp_path / "s", "structured").files}
    pruner.prune(0.9, granularity="structured")
    real = os.replace
    calls = []

    def failing_from_the_second(src, dst):
        calls.append(dst)
        if len(calls) >= 2:
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing_from_the_second)
    with pytest.raises(OSError, match=r"Putting the previous files back failed as well: the previous .*s.safetensors "
                                      r"is kept as .*\.old") as info:
        pruner.export(tmp_path / "s", "structured")
    monkeypatch.undo()
    kept = str(info.value).split("is kept as ")[1].split(". ")[0]
    assert open(kept, "rb").read() == old["s.safetensors"]  # the message is true


@pytest.mark.slow  # two ONNX exports: seconds
def test_a_failed_onnx_export_keeps_the_previous_file(mlp_demo_pruner, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pruner = mlp_demo_pruner.prune(0.5)
    path = pruner.export(tmp_path / "m.onnx", "onnx").path
    old = snapshot(tmp_path)
    pruner.prune(0.9)
    with monkeypatch.context() as m:  # the file is written by onnx itself: fail its rename, then its check
        Faults(m, "replace", fail_at=1)
        with pytest.raises(OSError, match="unchanged"):
            pruner.export(path, "onnx")
    assert snapshot(tmp_path) == old
    monkeypatch.setattr("prunelab.export.onnx_export.check_with_onnxruntime",
                        lambda *a: (_ for _ in ()).throw(ValueError("does not reproduce the torch outputs")))
    with pytest.raises(ValueError, match="does not reproduce"):
        pruner.export(path, "onnx")
    assert snapshot(tmp_path) == old
