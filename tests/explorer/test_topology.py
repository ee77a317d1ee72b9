"""The unit graph: columns per layer, edges mapped through flattening, additions and
concatenations, capped for legibility, measured from weights."""

import numpy as np
import torch
from torch import nn

import prunelab as pl
from prunelab.explorer.topology import INPUT, UnitGraph, layer_sources

from explorer_support import make_state


def test_convolutions_draw_channels_with_kernel_norms(cnn_demo_pruner):
    g = UnitGraph(cnn_demo_pruner.model, cnn_demo_pruner.layers, make_state(cnn_demo_pruner).reference.weights)
    assert [c.units for c in g.columns] == [1, 16, 32, 64, 10]
    # the Linear after Flatten sees 32 channels x 16 positions: one edge per channel pair
    assert g.edges["8"].groups == 32 and g.edges["8"].total == 64 * 32
    w = cnn_demo_pruner.layer("3").module.weight.detach()
    values, _ = g.measure({l.name: l.module.weight for l in cnn_demo_pruner.layers})
    e = g.edges["3"]
    offset = sum(len(g.edges[n].dst_unit) for n in ("0",))
    i = 5
    expected = w[e.dst_unit[i], e.src_unit[i]].norm().item()
    assert abs(values[offset + i] - expected) < 1e-5


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 6)
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 4)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        r = h + self.a(h)  # residual addition: b reads stem's and a's units, index for index
        return self.head(torch.cat([self.b(r), h], 1))  # concatenation: b's 4 units, then stem's 6


def test_skip_connections_and_concatenations_are_followed():
    model = Residual()
    layers = pl.Pruner(model, (torch.randn(20, 8), torch.randint(0, 3, (20,)))).layers
    assert layer_sources(model, layers) == {"stem": [INPUT], "a": ["stem"], "b": ["stem", "a"],
                                            "head": ["b", "stem"]}
    g = UnitGraph(model, layers, {l.name: l.module.weight.detach() for l in layers})
    assert g.edges["b"].groups == 6 and g.edges["b"].sources == [("stem", 0), ("a", 0)]
    assert g.edges["head"].groups == 10 and g.edges["head"].sources == [("b", 0), ("stem", 4)]
    head = g.edges["head"]
    from_stem = head.src_col == g.column_index["stem"]
    assert np.array_equal(head.group[from_stem], head.src_unit[from_stem] + 4)


def test_measure_finds_dead_units_and_removed_edges(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    g = UnitGraph(mlp_demo_pruner.model, mlp_demo_pruner.layers, make_state(mlp_demo_pruner).reference.weights,
                  max_edges=10_000)  # every edge drawn
    dense, alive = g.measure({l.name: l.module.weight for l in mlp_demo_pruner.layers})
    assert alive.all() and (dense > 0).all()
    mlp_demo_pruner.prune({"2": 0.3}, granularity="structured")  # 30 of layer 2's units go
    now, alive = g.measure({l.name: l.module.weight for l in mlp_demo_pruner.layers})
    layer2 = g.node_column == g.column_index["2"]
    assert (~alive[layer2]).sum() == 30
    e4 = slice(len(now) - len(g.edges["4"].dst_unit), len(now))  # the output layer's inputs went too
    assert (now[e4] == 0).sum() == 30 * 10
    mlp_demo_pruner.reset()
