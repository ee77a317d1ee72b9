"""The connectivity view explains: the strongest edges per layer (k stated), pruned edges drawn
cut, units sized by importance, and what an aggregated edge stands for."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import prunelab as pl
from prunelab.explorer.state import measure
from prunelab.explorer.topology import MAX_EDGES
from prunelab.explorer.views.connectivity import CUT_ALPHA, ConnectivityView

from explorer_support import Sent, make_state


def test_the_edges_drawn_are_each_layers_strongest_and_the_caption_says_how_many(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    view = ConnectivityView(mlp_demo_pruner, make_state(mlp_demo_pruner))
    g = view.graph
    for l in mlp_demo_pruner.layers:
        e = g.edges[l.name]
        w = l.module.weight.detach().abs().numpy()
        drawn = w[e.dst_unit, e.group]
        if e.total > len(e.dst_unit):
            # every weight drawn is at least as strong as every weight left out
            assert len(e.dst_unit) == MAX_EDGES
            assert drawn.min() >= np.sort(w.ravel())[-MAX_EDGES]
    assert f"the {MAX_EDGES:,} strongest per layer by dense |w|" in view.caption.value
    assert "an edge is one weight" in view.caption.value


def test_pruned_edges_are_drawn_cut_not_hidden_and_each_column_says_how_much_is_cut(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner)
    view = ConnectivityView(mlp_demo_pruner, state)
    sent = Sent(view.bokeh)
    mlp_demo_pruner.prune(0.03)  # magnitude: the strongest edges all survive...
    measure(mlp_demo_pruner, state)
    labels = view.cut_labels.data_source.data["text"]
    assert all(t.startswith("cut ") for t in labels), labels  # ...yet every column shows the step
    assert sent.columns(view.cut_labels.data_source) == {"text"}
    mlp_demo_pruner.prune(0.9, criterion="random")
    measure(mlp_demo_pruner, state)
    data = view.edges.data_source.data
    cut = np.asarray(data["cut"]) == 1
    assert 0.8 < cut.mean() < 1.0
    assert np.all(np.asarray(data["alpha"])[cut] == CUT_ALPHA)  # visible, in the cut colour
    assert not sent.full_data_sends(view.edges.data_source)
    mlp_demo_pruner.reset()


def test_units_are_sized_by_importance(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    view = ConnectivityView(mlp_demo_pruner, make_state(mlp_demo_pruner))
    nodes = view.nodes.data_source.data
    size, importance = np.asarray(nodes["size"]), np.asarray(nodes["importance"])
    known = ~np.isnan(importance)
    assert known.any() and np.ptp(size[known]) > 2
    order = np.argsort(importance[known])
    assert size[known][order[-1]] > size[known][order[0]]


def test_a_convolution_edge_says_it_is_a_kernel_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,))
    pruner = pl.Pruner(model, (x, y))
    view = ConnectivityView(pruner, make_state(pruner))
    caption = view.caption.value
    assert "an edge is the L2 norm of a 3×3 kernel joining two channels" in caption
    assert "an edge is the L2 norm of the 36 weights" in caption
