"""Topology on the shapes real models have: ShuffleNetV2's channel split (chunk), concatenation,
channel shuffle and depthwise convolutions, written here in plain torch. The explorer builds on
it; a view that cannot draw shows a message inside the explorer while the rest works; a failed
build leaves nothing whose close() crashes."""

import gc
import sys

import numpy as np
import pytest
import torch
from torch import nn

import prunelab as pl
from prunelab.explorer.topology import UnitGraph

from explorer_support import make_state


def channel_shuffle(x, groups=2):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2's basic unit: split the channels in half, run one half through
    1x1 -> depthwise 3x3 -> 1x1, concatenate with the other half, shuffle."""

    def __init__(self, channels):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], 1))


class DownBlock(nn.Module):
    """The stride-2 unit: both branches see every channel (one depthwise first), then concat."""

    def __init__(self, cin, cout):
        super().__init__()
        half = cout // 2
        self.left = nn.Sequential(nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                  nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                                   nn.Conv2d(half, half, 3, 2, 1, groups=half, bias=False), nn.BatchNorm2d(half),
                                   nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.stages = nn.Sequential(DownBlock(8, 16), ShuffleBlock(16), ShuffleBlock(16), DownBlock(16, 32),
                                    ShuffleBlock(32))
        self.head = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.head(self.stages(self.stem(x))).mean((2, 3)))


def shufflenet_data():
    torch.manual_seed(0)
    return ShuffleNetV2().eval(), (torch.randn(16, 1, 16, 16), torch.randint(0, 4, (16,)))


def test_the_unit_graph_of_a_shufflenet_builds_and_its_edges_are_real_weights():
    model, data = shufflenet_data()
    pruner = pl.Pruner(model, data)
    g = UnitGraph(pruner.model, pruner.layers, make_state(pruner).reference.weights)
    assert [c.name for c in g.columns][1:] == pruner.layer_names
    values, alive = g.measure({l.name: l.module.weight for l in pruner.layers})
    assert len(values) == sum(len(e.dst_unit) for e in g.edges.values()) and alive.all()
    start = 0
    for name, e in g.edges.items():  # every drawn edge is the norm of the weights it stands for
        w = pruner.layer(name).module.weight.detach()
        conv_groups = getattr(pruner.layer(name).module, "groups", 1)
        for i in range(len(e.dst_unit)):
            o, group = int(e.dst_unit[i]), int(e.group[i])
            col = group - (o // (w.shape[0] // conv_groups)) * w.shape[1] if conv_groups > 1 else group
            assert abs(values[start + i] - float(w[o, col].norm())) < 1e-5
        start += len(e.dst_unit)
    depthwise = g.edges["stages.1.branch.3"]  # groups == channels: one edge per unit
    assert depthwise.total == 8 and np.array_equal(depthwise.dst_unit, depthwise.group)
    # what cannot be mapped (a conv after the channel split) is said, not drawn wrongly
    assert any("stages.1.branch.0" in note for note in g.caps())


def test_explore_builds_on_a_shufflenet_and_follows_pruning():
    model, data = shufflenet_data()
    ex = pl.explore(model, data)
    try:
        assert not any(v.failed for v in ex.views.values())
        ex.pruner.prune(0.5)
        ex.wait()
        assert ex.state.metrics.nonzero_params < ex.state.baseline.nonzero_params
    finally:
        ex.close()


def test_a_view_that_cannot_draw_shows_a_message_and_the_rest_works(monkeypatch):
    from prunelab.explorer.views import connectivity

    def broken(*args, **kwargs):
        raise IndexError("index 8 is out of bounds for axis 1 with size 8")

    monkeypatch.setattr(connectivity, "UnitGraph", broken)
    model, data = shufflenet_data()
    ex = pl.explore(model, data)
    try:
        view = ex.views["connectivity"]
        assert "IndexError" in view.failed and view.bokeh is None
        message = view.widget.children[0].value
        assert "Connectivity</b> cannot be drawn" in message and "index 8 is out of bounds" in message
        assert all(not v.failed for k, v in ex.views.items() if k != "connectivity")
        ex.pruner.prune(0.5)  # the failed view stays quiet; the others follow
        ex.wait()
        assert view.widget.children[0].value == message
        assert ex.state.metrics.nonzero_params < ex.state.baseline.nonzero_params
    finally:
        ex.close()


def test_a_failed_build_leaves_nothing_that_crashes_at_close(monkeypatch):
    from prunelab.explorer import app

    def broken(*args, **kwargs):
        raise RuntimeError("controls could not be built")

    monkeypatch.setattr(app, "Controls", broken)
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(info))
    model, data = shufflenet_data()
    with pytest.raises(RuntimeError, match="controls could not be built"):
        pl.explore(model, data)
    gc.collect()
    assert not [s for s in seen if "_unsubscribe" in str(s.exc_value) or "NoneType" in str(s.exc_value)]


def test_the_structured_refusal_of_a_shufflenet_names_the_channel_shuffle():
    model, data = shufflenet_data()
    pruner = pl.Pruner(model, data)
    reasons = set(pruner.structured_blocked.values())
    assert len(reasons) == 1 and "channel shuffle" in reasons.pop()
    with pytest.raises(ValueError, match="channel shuffle"):
        pruner.prune(0.5, granularity="structured")
    assert pruner.plans == {}
