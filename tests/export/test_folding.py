"""The structured export folds eval-mode BatchNorm into the layer before it: the exported network
has no BatchNorm left, gives the unfolded outputs within 1e-5, says how many it folded, and loads
back (into a fresh instance of the class, or as the .pt2 program) to the same network."""

import pytest
import torch
from torch import nn

from prunelab import Pruner, load_structured
from prunelab.export.folding import fold_batchnorms, foldable_pairs, refold


class BnNet(nn.Module):
    """conv(no bias)-bn-relu, conv(bias)-bn-relu, a residual conv-bn, linear-bn1d, a BN after a ReLU."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.after_relu = nn.BatchNorm2d(8)
        self.fc, self.b4 = nn.Linear(8, 16), nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(self.b2(self.c2(h)))
        h = h + self.b3(self.c3(h))
        h = self.after_relu(torch.relu(h))
        h = h.mean((2, 3))
        return self.head(torch.relu(self.b4(self.fc(h))))


def trained_statistics(model):
    """Non-trivial running statistics and affine parameters in every BatchNorm."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def build():
    torch.manual_seed(0)
    return trained_statistics(BnNet())


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(40, 3, 8, 8, generator=gen), torch.arange(40) % 4


def test_only_a_batchnorm_right_after_a_conv_or_linear_is_folded():
    pairs = foldable_pairs(build())
    assert pairs == [("b1", "c1"), ("b2", "c2"), ("b3", "c3"), ("b4", "fc")]  # not the one after a ReLU


def test_folding_keeps_the_outputs_and_removes_the_batchnorms(data):
    model, (x, _) = build(), data
    with torch.no_grad():
        before = model(x)
        folded, folds = fold_batchnorms(model, lambda m: True)
        after = folded(x)
    assert len(folds) == 4 and sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 1
    assert (after - before).abs().max() <= 1e-5 * max(1.0, float(before.abs().max()))
    assert isinstance(model.b1, nn.BatchNorm2d)  # the original is untouched
    assert folded.c1.bias is not None


def test_nothing_is_folded_when_the_check_refuses(data):
    model = build()
    folded, folds = fold_batchnorms(model, lambda m: False)
    assert folded is model and folds == []


def test_a_layer_called_twice_is_not_folded():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x)

    assert foldable_pairs(Twice().eval()) == []
    assert foldable_pairs(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()) == []  # training mode


def test_the_structured_export_folds_says_so_and_loads_back(tmp_path, data):
    x, y = data
    pruner = Pruner(build(), (x, y))
    pruner.prune(0.5, granularity="structured")
    reference = pruner.outputs()
    done = pruner.export(tmp_path / "small", format="structured")
    assert done.details["batchnorms_folded"] == 4
    assert [b for b, _ in done.details["folded"]] == ["b1", "b2", "b3", "b4"]
    fresh = load_structured(tmp_path / "small", BnNet())
    assert isinstance(fresh.b1, nn.Identity) and isinstance(fresh.after_relu, nn.BatchNorm2d)
    assert fresh.c1.out_channels < 8
    with torch.no_grad():
        assert torch.allclose(fresh(x), reference, atol=1e-5 * max(1.0, float(reference.abs().max())))
        program = load_structured(tmp_path / "small.pt2")
        assert torch.allclose(program(x), reference, atol=1e-5 * max(1.0, float(reference.abs().max())))


def test_the_shrunk_network_runs_fewer_operations(data):
    from prunelab.export.structured import shrink

    x, y = data
    pruner = Pruner(build(), (x, y))
    pruner.prune(0.3, granularity="structured")
    shrunk = shrink(pruner)
    assert len(shrunk.folded) == 4
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in shrunk.model.modules()) == 1


def test_refold_refuses_a_fold_the_model_cannot_take():
    model = BnNet()
    with pytest.raises(ValueError, match="cannot take"):
        refold(model, [["nope", "c1"]], {})
    assert isinstance(model.b1, nn.BatchNorm2d)  # nothing changed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_folding_on_cuda_keeps_the_outputs(data):
    x, _ = data
    model = build().cuda()
    with torch.no_grad():
        folded, folds = fold_batchnorms(model, lambda m: True)
        assert len(folds) == 4
        before, after = model(x.cuda()), folded(x.cuda())
    assert folded.c1.weight.device.type == "cuda"
    assert torch.allclose(after, before, atol=1e-4)
