"""The structured export stores convolution weights channels-last (the layout oneDNN computes in),
says so, keeps the outputs, and both loaders give the model back that way."""

import torch
from torch import nn

from core_models import make_bn_cnn, random_data
import prunelab as pl
from prunelab.export.structured import shrink


def pruned_cnn():
    model = make_bn_cnn().eval()
    data = random_data((1, 8, 8), n=32)
    pruner = pl.Pruner(model, data)
    pruner.prune({"0": 0.5}, granularity="structured")
    return pruner, data


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_the_shrunk_network_is_channels_last_and_gives_the_masked_outputs():
    pruner, (x, _) = pruned_cnn()
    small = shrink(pruner)
    assert small.channels_last
    weights = [c.weight for c in convs(small.model)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert any(not w.is_contiguous() for w in weights)  # (one input channel is both layouts at once)
    with torch.no_grad():
        assert torch.allclose(small.model(x), pruner.model(x), atol=1e-5)
    assert all(p.is_contiguous() for p in pruner.model.parameters())  # the user's model is left as it was


def test_the_export_says_so_and_both_loaders_run_channels_last(tmp_path):
    pruner, (x, _) = pruned_cnn()
    exported = pruner.export(tmp_path / "small", format="structured")
    assert exported.details["channels_last"] is True
    with_class = pl.load_structured(tmp_path / "small", make_bn_cnn())
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs(with_class))
    program = pl.load_structured(tmp_path / "small.pt2")
    with torch.no_grad():
        expected = pruner.model(x)
        assert torch.allclose(with_class(x), expected, atol=1e-5)
        assert torch.allclose(program(x), expected, atol=1e-5)


def test_a_network_without_2d_convolutions_is_left_in_its_layout():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    pruner = pl.Pruner(model, random_data((8,), n=32, classes=3))
    pruner.prune({"0": 0.5}, granularity="structured")
    assert not shrink(pruner).channels_last
