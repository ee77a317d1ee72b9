"""Format "int8": int8 weights on the pruned model (the structured cut first), no pickle either way."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from torch import nn

import prunelab as pl
from prunelab.export.int8 import SCALE, dequantize_weight, int8_model, quantize_weight

pytestmark = pytest.mark.usefixtures("one_thread")


def accuracy(model, demo) -> float:
    x, y = demo.val.tensors
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def header(path) -> dict:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n])


def test_quantize_weight_keeps_zeros_and_rounds_within_half_a_step():
    w = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(0))
    w[2] = 0
    w[0, 1] = 0
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (6,)
    back = dequantize_weight(q, scale)
    assert bool((back[w == 0] == 0).all())
    # half a step at most (the largest entry is clamped at 127 of 127.5 steps: exactly half a step, rounded)
    assert bool(((back - w).abs() <= scale.reshape(-1, 1, 1) * 0.5 * (1 + 1e-3)).all())


def test_unstructured_int8_loads_without_pickle_a_quarter_of_the_size(cnn_demo_pruner, cnn_demo, tmp_path):
    p = cnn_demo_pruner.prune(0.5)
    done = p.export(tmp_path / "m.safetensors", format="int8")
    dense = p.export(tmp_path / "d.safetensors", format="state_dict")
    assert done.format == "int8" and not done.details["structured"]
    assert done.bytes < 0.3 * dense.bytes
    meta = header(done.path)["__metadata__"]
    assert meta["format"] == "prunelab.int8"
    assert header(done.path)["0.weight"]["dtype"] == "I8" and f"0.weight{SCALE}" in header(done.path)
    loaded = pl.load_int8(done.path, pl.demos.architecture("digits-cnn"))
    masks = p.masks()
    assert bool((loaded[0].weight[~masks["0.weight"]] == 0).all())  # pruned weights stay exactly zero
    assert type(loaded[8]).__name__ == "Linear" and "quantized" in type(loaded[8]).__module__  # int8 matmuls
    assert abs(accuracy(loaded, cnn_demo) - p.evaluate().accuracy) <= 0.01


def test_structured_state_is_cut_first_then_int8(mlp_demo_pruner, mlp_demo, tmp_path):
    p = mlp_demo_pruner.prune(0.3, granularity="structured")
    done = p.export(tmp_path / "m.safetensors", format="int8")
    plain = p.export(tmp_path / "s", format="structured")
    assert done.details["structured"] and done.details["units_removed"] == plain.details["units_removed"] > 0
    loaded = pl.load_int8(done.path, pl.demos.architecture("digits-mlp"))
    assert loaded[0].out_features == plain.details["units"]["0"][1]
    assert abs(accuracy(loaded, mlp_demo) - p.evaluate().accuracy) <= 0.01
    same, _ = int8_model(pl.load_structured(plain.path, pl.demos.architecture("digits-mlp")))
    x = mlp_demo.val.tensors[0]
    with torch.no_grad():  # the file and the in-memory rule give one network
        assert torch.equal(same(x), loaded(x))


def test_structured_int8_of_a_network_with_batchnorm_loads_back(cnn_demo_pruner, cnn_demo, tmp_path):
    # the structured cut folds BatchNorm into the convolution before it: the loader folds too
    p = cnn_demo_pruner.prune(0.3, granularity="structured")
    done = p.export(tmp_path / "m.safetensors", format="int8")
    assert done.details["structured"]
    loaded = pl.load_int8(done.path, pl.demos.architecture("digits-cnn"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    assert abs(accuracy(loaded, cnn_demo) - p.evaluate().accuracy) <= 0.02


def test_damaged_foreign_or_misfit_files_are_refused(mlp_demo_pruner, tmp_path):
    p = mlp_demo_pruner.prune(0.5)
    done = p.export(tmp_path / "m.safetensors", format="int8")
    other = p.export(tmp_path / "d.safetensors", format="state_dict")
    with pytest.raises(ValueError, match="load_state_dict"):
        pl.load_int8(other.path, pl.demos.architecture("digits-mlp"))
    data = bytearray(done.path.read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        pl.load_int8(tmp_path / "bad.safetensors", pl.demos.architecture("digits-mlp"))
    with pytest.raises(ValueError, match="fresh instance"):
        pl.load_int8(done.path, nn.Sequential(nn.Linear(64, 10)))


def test_compare_formats_measures_int8_and_structured_int8(cnn_demo_pruner):
    p = cnn_demo_pruner.prune(0.3, granularity="structured")
    report = pl.compare_formats(p, formats=("state_dict", "int8"), repeats=3, batch=64)
    rows = {r.format: r for r in report.rows}
    assert {"int8", "structured+int8"} <= set(rows)
    for label in ("int8", "structured+int8"):
        r = rows[label]
        assert r.error is None and r.latency is not None and r.latency.batch == 64
        assert abs(r.accuracy - report.accuracy["dense (masked)"]) <= 0.02
    assert rows["structured+int8"].bytes < rows["int8"].bytes < 0.3 * rows["state_dict"].bytes
    assert "structured+int8" in report.table() and "structured+int8" in report.sentence()
