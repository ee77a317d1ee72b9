"""Connectivity view: a layered unit graph whose edges and units fade as pruning removes them,
sent to the browser as column patches."""

import numpy as np

from prunelab.explorer.state import measure
from prunelab.explorer.topology import INPUT, MAX_EDGES
from prunelab.explorer.views.connectivity import ConnectivityView

from explorer_support import Sent, make_state


def test_graph_has_a_column_per_layer_and_caps_big_layers(mlp_demo_pruner):
    view = ConnectivityView(mlp_demo_pruner, make_state(mlp_demo_pruner))
    g = view.graph
    assert [c.name for c in g.columns] == [INPUT, "0", "2", "4"]
    assert [c.units for c in g.columns] == [64, 300, 100, 10]
    # one edge per nonzero weight of these Linear layers, the strongest ones where there are more
    nonzero = {l.name: int((l.module.weight != 0).sum()) for l in mlp_demo_pruner.layers}
    assert [len(g.edges[n].dst_unit) for n in nonzero] == [min(MAX_EDGES, n) for n in nonzero.values()]
    capped = [n for n, count in nonzero.items() if count > MAX_EDGES]
    assert capped  # the fixture has layers over the cap
    for n in capped:
        assert f"{n}: the {MAX_EDGES:,} strongest of {nonzero[n]:,} edges" in view.caption.value
    assert len(view.nodes.data_source.data["x"]) == 64 + 300 + 100 + 10


def test_pruning_sends_only_opacity_columns_and_fades_pruned_edges(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner)
    view = ConnectivityView(mlp_demo_pruner, state)
    sent = Sent(view.bokeh)
    mlp_demo_pruner.prune(0.8, criterion="random")  # magnitude would spare the strongest edges drawn
    measure(mlp_demo_pruner, state)
    assert sent.columns(view.edges.data_source) <= {"alpha", "now", "cut"}
    assert not sent.full_data_sends(view.edges.data_source) and not sent.rerendered()
    data = view.edges.data_source.data
    gone = np.asarray(data["now"]) == 0
    # between Linear layers an edge is one weight: it fades exactly when that weight is masked
    edges = [view.graph.edges[l.name] for l in mlp_demo_pruner.layers]
    expected = np.concatenate([~mlp_demo_pruner.mask(e.layer)[e.dst_unit, e.group].numpy() for e in edges])
    assert np.array_equal(gone, expected) and 0 < gone.mean() < 1
    assert np.all(np.asarray(data["cut"])[gone] == 1) and np.all(np.asarray(data["cut"])[~gone] == 0)
    assert np.all(np.asarray(data["alpha"])[~gone] > 0)
    mlp_demo_pruner.reset()


def test_structured_pruning_fades_removed_units(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner)
    view = ConnectivityView(mlp_demo_pruner, state)
    sent = Sent(view.bokeh)
    mlp_demo_pruner.prune({"0": 0.5}, granularity="structured")
    measure(mlp_demo_pruner, state)
    nodes = view.nodes.data_source.data
    in_layer0 = np.asarray(nodes["layer"]) == "0"
    dead = np.asarray(nodes["state"]) == "pruned"
    assert dead[in_layer0].sum() == 150
    assert np.all(np.asarray(nodes["alpha"])[dead] < 0.5)
    assert sent.columns(view.nodes.data_source) == {"alpha", "state"}
    mlp_demo_pruner.reset()


def test_unit_colour_follows_the_criterion_scores(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner)
    view = ConnectivityView(mlp_demo_pruner, state)
    before = np.asarray(view.nodes.data_source.data["score"]).copy()
    taylor = {n: np.arange(l.units, dtype=float) for n, l in ((l.name, l) for l in mlp_demo_pruner.layers)}
    state.scores = {**state.scores, "taylor": taylor}
    state.criterion = "taylor"
    after = np.asarray(view.nodes.data_source.data["score"])
    layer2 = np.asarray(view.nodes.data_source.data["layer"]) == "2"
    assert np.array_equal(after[layer2], np.arange(100))
    assert not np.array_equal(before[layer2], after[layer2])
    assert "taylor importance" in view.caption.value


def test_a_page_that_opens_late_gets_the_current_picture(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner)
    view = ConnectivityView(mlp_demo_pruner, state)
    ready = {"event": "jsevent", "kind": "MessageSent", "msg_type": "bokeh_event",
             "msg_data": {"type": "event", "name": "document_ready", "values": {"type": "map"}}}
    bundle = view.bokeh.render_bundle
    view.bokeh._sync_model(view.bokeh, dict(ready), [])
    assert view.bokeh.render_bundle is bundle  # nothing changed since it was drawn: no resend
    mlp_demo_pruner.prune(0.5)
    measure(mlp_demo_pruner, state)
    view.bokeh._sync_model(view.bokeh, dict(ready), [])
    assert view.bokeh.render_bundle is not bundle  # patches it may have missed: resent whole, once
    # the page's echo of a patch is ignored: Python's data stay whole
    echo = {"event": "jsevent", "kind": "ModelChanged", "model": {"id": view.edges.data_source.id},
            "attr": "data", "new": {"type": "map", "entries": []}}
    view.bokeh._sync_model(view.bokeh, echo, [])
    assert len(view.edges.data_source.data["x0"]) == sum(len(e.dst_unit) for e in view.graph.edges.values())
    mlp_demo_pruner.reset()
