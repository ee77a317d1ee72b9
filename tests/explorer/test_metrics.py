"""Metrics view: the measured numbers (accuracy as "NN.N%" in .prunelab-metrics) and the trace of
accuracy against sparsity of every state visited, streamed point by point."""

import re

from prunelab.explorer.state import measure
from prunelab.explorer.views.metrics import MetricsView, readout_html, si

from explorer_support import Sent, make_state


def test_readout_shows_every_number_of_the_state(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner)
    view = MetricsView(mlp_demo_pruner, state)
    assert "prunelab-metrics" in view.readout._dom_classes
    mlp_demo_pruner.prune(0.9)
    measure(mlp_demo_pruner, state)
    m = mlp_demo_pruner.evaluate()
    text = view.readout.value
    assert re.search(r"\d\d\.\d%", text)
    assert f"{m.accuracy:.1%}" in text and f"on {m.samples:,} validation samples" in text
    assert f"{m.nonzero_params:,}" in text and f"{m.params:,}" in text
    assert si(m.dense_bytes, "B").replace(" ", "\u00a0") in text  # a number and its unit never wrap apart
    assert si(m.sparse_bytes, "B").replace(" ", "\u00a0") in text and f"{si(m.flops)} " not in text
    assert f"{m.theoretical_speedup:.2f}×" in text and "90.0%" in text  # sparsity of prunable weights
    assert f"{(m.accuracy - state.baseline.accuracy) * 100:+.1f} pts" in text
    mlp_demo_pruner.reset()


def test_trace_streams_one_point_per_new_state(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner)
    view = MetricsView(mlp_demo_pruner, state)
    sent = Sent(view.bokeh)
    assert view.visited == 1  # the dense state
    for amount in (0.5, 0.8):
        mlp_demo_pruner.prune(amount)
        measure(mlp_demo_pruner, state)
    mlp_demo_pruner.prune(0.8, criterion="random")
    measure(mlp_demo_pruner, state)
    mlp_demo_pruner.undo()  # back to a state already on the trace: no new point
    measure(mlp_demo_pruner, state)
    assert view.visited == 4
    magnitude, _ = view.points["magnitude"]
    random, renderer = view.points["random"]
    assert [round(x, 3) for x in magnitude.data["sparsity"]] == [0.0, 0.5, 0.8]
    assert len(random.data["sparsity"]) == 1 and renderer.visible
    streamed = [e for e in sent.events() if e["kind"] == "ColumnsStreamed"]
    assert len(streamed) == 3  # points are streamed, never resent
    assert not sent.full_data_sends(magnitude) and not sent.rerendered()
    assert view.base_line.location == state.baseline.accuracy
    mlp_demo_pruner.reset()


def test_custom_metric_is_named_and_not_a_percentage(mlp_demo_pruner):
    state = make_state(mlp_demo_pruner)
    import dataclasses
    m = dataclasses.replace(state.metrics, metric_name="f1", accuracy=0.8734)
    assert "0.8734" in readout_html(m, None, 0.0) and "f1" in readout_html(m, None, 0.0)
