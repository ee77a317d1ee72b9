"""Export: every format round-trips, files are small/fast as claimed, and failures are clean."""

from __future__ import annotations

import copy
import errno
import json
import os
import sys
import zipfile

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import prunelab as pl
from prunelab.core import files as export_files
from prunelab.export import shrink
from prunelab.export.structured import structured_paths


# ---------------------------------------------------------------------------- models and helpers

class Residual(nn.Module):
    """Stem + two residual blocks: the blocks' last convs are tied to the stem by additions."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                    nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.block2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                    nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = torch.relu(x + self.block2(x))
        return self.head(x)


class Concat(nn.Module):
    """Two branches concatenated along channels, then flattened into a Linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        x = nn.functional.max_pool2d(torch.relu(self.c(x)), 2)
        return self.fc(x.flatten(1))


class Squash(nn.Module):
    """A sigmoid after the first layer: a unit with zero weights and bias still outputs 0.5."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 12), nn.Sigmoid(), nn.Linear(12, 4))

    def forward(self, x):
        return self.net(x)


class Normed(nn.Module):
    """A LayerNorm over the first layer's units: removing units changes its statistics."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 12), nn.LayerNorm(12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, x):
        return self.net(x)


def image_data(n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so the test sees the norms being sliced correctly."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def built(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_norms(cls(), seed)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    a, b = a.detach(), b.detach()
    return a.shape == b.shape and float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def no_temporaries(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------- state_dict

def test_state_dict_has_masks_baked_in_and_loads_into_a_fresh_model(mlp_demo, mlp_demo_pruner, tmp_path):
    d, pruner = mlp_demo, mlp_demo_pruner
    pruner.prune(0.8)
    done = pruner.export(tmp_path / "m.safetensors", "state_dict")
    state = pl.load_state_dict(done.path)
    assert set(state) == set(d.model.state_dict())  # no weight_orig / weight_mask
    fresh = pl.demos.load("digits-mlp").model
    fresh.load_state_dict(state)
    assert torch.equal(outputs(fresh, pruner.val_inputs), outputs(pruner.model, pruner.val_inputs))
    assert float((state["0.weight"] == 0).float().mean()) > 0.5


def test_export_leaves_the_model_and_the_pruner_as_they_were(cnn_demo, cnn_demo_pruner, tmp_path):
    d, pruner = cnn_demo, cnn_demo_pruner
    pruner.prune(0.5, granularity="structured")
    before = {k: v.clone() for k, v in d.model.state_dict().items()}
    masks = pruner.masks()
    shrink(pruner)
    pruner.export(tmp_path / "s", "sparse")
    after = d.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(masks[k], m) for k, m in pruner.masks().items())
    assert not pruner.can_redo and pruner.can_undo


def test_unknown_format_is_refused_with_the_list(mlp_demo_pruner, tmp_path):
    pruner = mlp_demo_pruner
    with pytest.raises(ValueError, match="Did you mean 'sparse'"):
        pruner.export(tmp_path / "m", "sparce")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- sparse

def test_sparse_round_trip_gives_the_same_state_dict(cnn_demo_pruner, tmp_path):
    pruner = cnn_demo_pruner
    pruner.prune(0.5, granularity="structured")
    pruner.prune({"8": 0.95})
    pruner.export(tmp_path / "dense", "state_dict")
    pruner.export(tmp_path / "sparse", "sparse")
    dense, sparse = pl.load_state_dict(tmp_path / "dense"), pl.load_sparse(tmp_path / "sparse")
    assert set(dense) == set(sparse)
    for k in dense:
        assert dense[k].dtype == sparse[k].dtype and torch.equal(dense[k], sparse[k]), k


@pytest.mark.parametrize("demo", ["digits-mlp", "digits-cnn"])
def test_sparse_file_at_90_percent_is_at_most_15_percent_of_dense(demo, tmp_path):
    d = pl.demos.load(demo)
    pruner = pl.Pruner(d.model, d.val)
    pruner.prune(0.9)
    dense = pruner.export(tmp_path / "dense", "state_dict").bytes
    sparse = pruner.export(tmp_path / "sparse", "sparse").bytes
    assert sparse <= 0.15 * dense, f"{demo}: sparse file is {sparse / dense:.1%} of dense"


# ---------------------------------------------------------------------------- structured

def test_structured_shrinks_the_cnn_and_keeps_its_outputs(cnn_demo, cnn_demo_pruner):
    d, pruner = cnn_demo, cnn_demo_pruner
    pruner.prune(0.5, granularity="structured", scope="layer")
    shapes = {k: v.shape for k, v in d.model.state_dict().items()}
    shrunk = shrink(pruner)
    units = {n: pruner.layer(n).units for n in pruner.unit_groups()}  # every layer but the output: half go
    assert shrunk.units == {n: (u, u - round(0.5 * u)) for n, u in units.items()}
    assert shrunk.model[0].out_channels == 8 and ["1", "0"] in shrunk.folded  # its BatchNorm folded into it
    assert shrunk.model[3].in_channels == 8 and shrunk.model[8].in_features == 16 * 4 * 4
    assert close(outputs(shrunk.model, pruner.val_inputs), outputs(pruner.model, pruner.val_inputs))
    assert shrunk.flops_ratio > 3
    assert {k: v.shape for k, v in d.model.state_dict().items()} == shapes  # the user's model is untouched


@pytest.mark.parametrize("cls", [Residual, Concat])
def test_structured_handles_residual_and_concatenating_models(cls):
    model = built(cls)
    x, y = image_data()
    pruner = pl.Pruner(model, (x, y))
    pruner.prune(0.5, granularity="structured", scope="layer")
    shrunk = shrink(pruner)
    assert shrunk.removed > 0
    assert close(outputs(shrunk.model, x), outputs(model, x))
    if cls is Residual:  # the stem and both blocks' last convs are one group: they shrink together
        widths = {shrunk.model.stem[0].out_channels, shrunk.model.block1[3].out_channels,
                  shrunk.model.block2[3].out_channels, shrunk.model.head[2].in_features}
        assert widths == {4}
    else:  # the concatenation's consumer loses exactly the removed input channels
        assert shrunk.model.c.in_channels == shrunk.model.a.out_channels + shrunk.model.b.out_channels < 10


def test_units_that_output_zero_are_removed_and_biased_ones_stay(mlp_demo_pruner):
    pruner = mlp_demo_pruner
    w = pruner.model[0].weight.detach().clone()
    b = pruner.model[0].bias.detach().clone()
    w[:10] = 0
    b[:5] = 0  # units 0-4: weights and bias zero -> output exactly 0; units 5-9 still output their bias
    pruner.set_weights({"0.weight": w, "0.bias": b})
    shrunk = shrink(pruner)
    units = pruner.layer("0").units
    assert shrunk.units["0"] == (units, units - 5)  # units 0-4 go, the biased 5-9 stay
    assert close(outputs(shrunk.model, pruner.val_inputs), outputs(pruner.model, pruner.val_inputs))


def test_silent_units_stay_when_what_follows_does_not_map_zero_to_zero():
    torch.manual_seed(0)
    model = Squash().eval()
    x = torch.randn(32, 16)
    pruner = pl.Pruner(model, (x, torch.randint(0, 4, (32,))))
    w, b = model.net[0].weight.detach().clone(), model.net[0].bias.detach().clone()
    w[:4], b[:4] = 0, 0  # these units output sigmoid(0) = 0.5, which the next layer uses
    pruner.set_weights({"net.0.weight": w, "net.0.bias": b})
    assert shrink(pruner).units == {}
    pruner.prune({"net.0": 0.5}, granularity="structured")  # pruned units: their columns are masked too
    shrunk = shrink(pruner)
    assert shrunk.units == {"net.0": (12, 6)}
    assert close(outputs(shrunk.model, x), outputs(model, x))


def test_structured_refuses_at_prune_time_when_a_layernorm_mixes_the_units(tmp_path):
    torch.manual_seed(0)
    model = Normed().eval()
    x = torch.randn(32, 16)
    pruner = pl.Pruner(model, (x, torch.randint(0, 4, (32,))))
    assert "normalised together by LayerNorm 'net.1'" in pruner.structured_blocked["net.0"]
    with pytest.raises(ValueError, match=r"'net.0' cannot be pruned structurally: .*LayerNorm 'net.1'"):
        pruner.prune({"net.0": 0.5}, granularity="structured")
    pruner.export(tmp_path / "normed", "structured")  # nothing to remove: the dense network, exactly
    assert shrink(pruner).units == {}


@pytest.fixture(scope="module")
def structured_cnn(tmp_path_factory):
    """The CNN demo with half of each layer's units pruned, exported "structured" once for the
    module (torch.export takes seconds): (pruner, Exported, its folder). Tests only read them."""
    d = pl.demos.load("digits-cnn")
    pruner = pl.Pruner(d.model, d.val, train_data=d.train)
    pruner.prune(0.5, granularity="structured", scope="layer")
    folder = tmp_path_factory.mktemp("structured")
    return pruner, pruner.export(folder / "small", "structured"), folder


@pytest.mark.slow
def test_structured_files_load_back_with_the_class_and_without_it(structured_cnn, tmp_path):
    pruner, done, folder = structured_cnn
    weights, program = done.files
    assert (weights, program) == structured_paths(folder / "small")
    reference = outputs(pruner.model, pruner.val_inputs)
    dense_bytes = pruner.export(tmp_path / "dense", "state_dict").bytes
    assert weights.stat().st_size < 0.5 * dense_bytes  # physically smaller
    with zipfile.ZipFile(program) as z:  # no pickled record at all in the program archive
        assert all(i.file_size == 0 for i in z.infolist() if i.filename.endswith(".pt"))

    rebuilt = pl.load_structured(weights, pl.demos.architecture("digits-cnn"))
    assert rebuilt[0].out_channels == 8 and rebuilt[8].weight.shape == (32, 256)
    assert close(outputs(rebuilt, pruner.val_inputs), reference)

    classless = pl.load_structured(program)  # no model class needed
    assert close(classless(pruner.val_inputs), reference)
    assert close(pl.load_program(program).module()(pruner.val_inputs[:7]), reference[:7])  # any batch size


@pytest.mark.slow
def test_structured_residual_round_trip_through_files(tmp_path):
    model = built(Residual)
    x, y = image_data()
    pruner = pl.Pruner(model, (x, y))
    pruner.prune(0.5, granularity="structured", scope="layer")
    done = pruner.export(tmp_path / "res", "structured")
    rebuilt = pl.load_structured(done.path, Residual())
    assert close(outputs(rebuilt, x), outputs(model, x))
    assert close(pl.load_structured(done.files[1])(x), outputs(model, x))


def test_load_structured_says_what_model_it_needs(cnn_demo_pruner, tmp_path, monkeypatch):
    pruner = cnn_demo_pruner
    pruner.prune(0.5, granularity="structured", scope="layer")
    monkeypatch.setattr("prunelab.export.structured.program_bytes", lambda *a: b"not needed here")
    done = pruner.export(tmp_path / "small", "structured")
    with pytest.raises(ValueError, match="fresh instance of Sequential"):
        pl.load_structured(done.path, pl.demos.architecture("digits-mlp"))


# ---------------------------------------------------------------------------- onnx

@pytest.mark.slow
def test_onnx_export_is_checked_with_onnxruntime_and_runs_any_batch(cnn_demo_pruner, tmp_path):
    import onnxruntime as ort

    pruner = cnn_demo_pruner
    pruner.prune(0.5, granularity="structured", scope="layer")
    done = pruner.export(tmp_path / "m.onnx", "onnx")
    assert done.details["network"].startswith("structured") and done.details["max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    x = pruner.val_inputs[:5]
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert close(got, outputs(pruner.model, x), 1e-4)


def test_onnx_without_the_extra_says_how_to_install_it(mlp_demo_pruner, tmp_path, monkeypatch):
    pruner = mlp_demo_pruner
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"pip install prunelab\[onnx\]"):
        pruner.export(tmp_path / "m.onnx", "onnx")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- writing fails cleanly

def _full_disk_after(calls: int, monkeypatch):
    """Let ``calls`` file writes succeed, then fail the next one half way, like a full disk."""
    real = export_files.write_all
    count = {"n": 0}

    def write(f, data):
        count["n"] += 1
        if count["n"] > calls:
            real(f, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(export_files, "write_all", write)


@pytest.mark.parametrize("fmt", ["state_dict", "sparse", "recipe"])
def test_full_disk_leaves_no_file_and_keeps_an_older_export(mlp_demo_pruner, tmp_path, monkeypatch, fmt):
    pruner = mlp_demo_pruner
    pruner.prune(0.5)
    old = pruner.export(tmp_path / "m", fmt).path.read_bytes()
    pruner.prune(0.9)
    _full_disk_after(0, monkeypatch)
    with pytest.raises(OSError, match=r"could not write .*m: No space left on device.*free space") as info:
        pruner.export(tmp_path / "m", fmt)
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "m").read_bytes() == old  # the previous export is intact
    assert no_temporaries(tmp_path)


def test_full_disk_on_the_second_structured_file_leaves_neither(cnn_demo_pruner, tmp_path, monkeypatch):
    pruner = cnn_demo_pruner
    pruner.prune(0.5, granularity="structured")
    monkeypatch.setattr("prunelab.export.structured.program_bytes", lambda *a: b"program bytes")
    _full_disk_after(1, monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        pruner.export(tmp_path / "s", "structured")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destinations_give_a_clear_error(mlp_demo_pruner, tmp_path):
    pruner = mlp_demo_pruner
    (tmp_path / "a-file").write_text("x")
    for bad in (tmp_path / "a-file" / "m.safetensors", tmp_path / "missing" / "m.safetensors"):
        with pytest.raises(OSError, match="could not write .*folder exists and is writable"):
            pruner.export(bad, "sparse")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        pruner.export(tmp_path, "sparse")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def _refuse(monkeypatch, name: str, folder):
    """Make ``os.<name>`` fail with EACCES for paths in ``folder``, as a read-only folder does
    (simulated: root, as CI runs, writes through permissions)."""
    real = getattr(os, name)

    def refused(path, *args, **kwargs):
        if str(folder) in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, refused)


@pytest.mark.parametrize("refused", ["open", "replace"])  # creating the temporary, or moving it into place
def test_read_only_folder_gives_a_clear_error(mlp_demo_pruner, tmp_path, monkeypatch, refused):
    pruner = mlp_demo_pruner
    folder = tmp_path / "ro"
    folder.mkdir()
    _refuse(monkeypatch, refused, folder)
    with pytest.raises(PermissionError, match=r"could not write .*ro.m: Permission denied.*writable") as info:
        pruner.export(folder / "m", "state_dict")
    assert info.value.errno == errno.EACCES
    monkeypatch.undo()
    assert list(folder.iterdir()) == []  # no temporary left behind either


# ---------------------------------------------------------------------------- reading refuses what is not ours

def test_loading_foreign_damaged_or_mismatched_files_is_refused_clearly(mlp_demo_pruner, tmp_path):
    pruner = mlp_demo_pruner
    pruner.prune(0.9)
    sparse = pruner.export(tmp_path / "sparse", "sparse").path
    data = sparse.read_bytes()

    (tmp_path / "random").write_bytes(b"\x00\x01 not a model" * 10)
    save_file({"w": torch.ones(3)}, tmp_path / "foreign.safetensors")
    (tmp_path / "truncated").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    (tmp_path / "flipped").write_bytes(bytes(flipped))

    with pytest.raises(ValueError, match="random is not a readable safetensors file"):
        pl.load_sparse(tmp_path / "random")
    with pytest.raises(ValueError, match="foreign.safetensors is not a prunelab 'sparse' export"):
        pl.load_sparse(tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="truncated is not a readable"):
        pl.load_sparse(tmp_path / "truncated")
    with pytest.raises(ValueError, match="flipped is damaged"):
        pl.load_sparse(tmp_path / "flipped")
    with pytest.raises(ValueError, match="is a prunelab 'sparse' export.*prunelab.load_sparse"):
        pl.load_state_dict(sparse)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pl.load_sparse(tmp_path / "nope")
    (tmp_path / "r.json").write_text('{"format": "prunelab.recipe", "steps": [')
    with pytest.raises(ValueError, match="r.json is not a prunelab recipe"):
        pl.load_recipe(tmp_path / "r.json")


@pytest.mark.slow
def test_program_loader_refuses_damaged_foreign_and_pickled_archives(structured_cnn, tmp_path):
    program = structured_cnn[1].files[1]
    data = program.read_bytes()

    (tmp_path / "cut.pt2").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt2 is not a readable .pt2 program"):
        pl.load_program(tmp_path / "cut.pt2")

    plain = torch.export.export(pl.demos.architecture("digits-mlp"), (torch.randn(2, 64),))
    torch.export.save(plain, tmp_path / "foreign.pt2")
    with pytest.raises(ValueError, match="is not the .pt2 program of a prunelab 'structured' export.*format='structured'"):
        pl.load_program(tmp_path / "foreign.pt2")

    # A tampered archive asking for a pickled weight must never reach torch.load(weights_only=False).
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(tmp_path / "pickled.pt2", "w") as dst:
        for item in src.infolist():
            body = src.read(item)
            if item.filename.endswith("weights_config.json"):
                config = json.loads(body)
                next(iter(config["config"].values()))["use_pickle"] = True
                body = json.dumps(config).encode()
            dst.writestr(item, body)
    with pytest.raises(ValueError, match="do not match the checksum"):  # re-sealed: tests/export/test_trust_files.py
        pl.load_program(tmp_path / "pickled.pt2")


# ---------------------------------------------------------------------------- report and CLI

def test_format_report_measures_real_files_and_says_which_formats_give_speed(cnn_demo_pruner):
    pruner = cnn_demo_pruner
    pruner.prune(0.5, granularity="structured", scope="layer")
    report = pl.compare_formats(pruner, formats=("state_dict", "sparse", "recipe"), repeats=5, batch=64)
    sizes = {r.format: r.bytes for r in report.rows}
    assert sizes["sparse"] < sizes["state_dict"] and sizes["recipe"] < 10_000
    halves = sum(round(0.5 * pruner.layer(n).units) for n in pruner.unit_groups())  # scope="layer": half each
    assert report.units_removed == halves and report.structured is not None and report.dense.repeats == 5
    text = report.sentence()
    assert "only 'structured'" in text and "Size only: 'sparse'" in text and f"{report.speedup:.2f}x" in text
    pruner.reset()
    again = pl.compare_formats(pruner, formats=("sparse",), repeats=3, batch=16)
    assert again.units_removed == 0 and "no format makes the model faster" in again.sentence()


def test_cli_export_writes_the_file_and_reports_errors(tmp_path, capsys):
    from prunelab.cli import main

    assert main(["export", "--demo", "digits-mlp", "--sparsity", "0.9", "--granularity", "unstructured",
                 "--format", "sparse", "--out", str(tmp_path / "m.sparse")]) == 0
    assert "wrote sparse" in capsys.readouterr().out
    assert pl.load_sparse(tmp_path / "m.sparse")["0.weight"].shape == pl.demos.load("digits-mlp").model[0].weight.shape
    assert main(["export", "--format", "sparse", "--out", str(tmp_path / "missing" / "m")]) == 1
    assert "could not write" in capsys.readouterr().err
