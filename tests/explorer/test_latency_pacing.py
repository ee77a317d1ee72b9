"""What keeps a drag live in the page: a view's changes of one turn go out as one patch message,
the readout and the trace follow a burst paced (latest state wins, every visited state kept), the
controls do not pull the dragged slider back, and views in a hidden tab do not redraw."""

from __future__ import annotations

import json
import time

import numpy as np

from prunelab.explorer.actions import Action
from prunelab.explorer.state import measure
from prunelab.explorer.views.base import BokehWidget
from prunelab.explorer.views.metrics import MetricsView
from prunelab.explorer.views.pacing import Pacer
from prunelab.explorer.views.weights import WeightsView

from explorer_support import Sent, make_state
from test_pacing import Clock


class Posted:
    """A main-thread queue that runs when told (as the kernel's loop would, one turn later)."""

    def __init__(self):
        self.queue = []

    def __call__(self, key, fn):
        self.queue.append(fn)

    def run(self):
        while self.queue:
            self.queue.pop(0)()


def patch_messages(sent: Sent) -> list[dict]:
    """The PATCH-DOC contents a widget sent (one per patch message)."""
    docs = []
    for call in sent.mock.call_args_list:
        payload = call.args[0].get("payload")
        if isinstance(payload, str) and payload.startswith('{"events"'):
            docs.append(json.loads(payload))
    return docs


def test_a_redraw_goes_to_the_page_as_one_patch_message_with_the_latest_values(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner, layer="2")
    view = WeightsView(mlp_demo_pruner, state)
    posted = Posted()
    view.bokeh._post = posted  # deferred, as in a kernel
    sent = Sent(view.bokeh)
    for amount in (0.3, 0.5, 0.7):  # three changes before the loop turns
        mlp_demo_pruner.prune({"2": amount})
        measure(mlp_demo_pruner, state)
    assert patch_messages(sent) == []  # nothing sent until the turn ends
    posted.run()
    docs = patch_messages(sent)
    assert len(docs) == 1  # one message, however many properties and columns changed
    kinds = [e["kind"] for e in docs[0]["events"]]
    assert kinds.count("ColumnDataChanged") == 2  # hist kept, heatmap image: each once, not three times
    assert sum(view.hist_src.data["kept"]) == 9000  # and what it carries is the latest state
    mlp_demo_pruner.reset()


def test_a_hidden_view_does_not_redraw_and_draws_the_latest_state_when_shown():
    clock, drawn, value = Clock(), [], {"v": 0}
    pacer = Pacer(lambda: drawn.append(value["v"]), later=clock.later, clock=clock)
    pacer.show(False)
    for i in range(1, 6):
        value["v"] = i
        pacer.request()
        clock.advance(0.5)
    assert drawn == []
    pacer.show(True)
    assert drawn == [5]
    pacer.show(True)  # nothing new: no redraw
    assert drawn == [5]


def test_a_trailing_redraw_due_while_hidden_waits_for_the_view_to_show():
    clock, drawn = Clock(), []
    pacer = Pacer(lambda: drawn.append(clock.now), later=clock.later, clock=clock)
    pacer.request()
    pacer.request()  # a redraw is on its way
    pacer.show(False)
    clock.advance(1.0)
    assert drawn == []
    pacer.show(True)
    assert len(drawn) == 1


def test_the_trace_keeps_every_state_of_a_burst_and_draws_them_in_few_patches(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner)
    clock = Clock()
    view = MetricsView(mlp_demo_pruner, state, later=clock.later)
    clock.now = time.monotonic() + 1.0  # the pacers drew the first state on the real clock
    view.pacer.clock = view.readout_pacer.clock = clock
    view.pacer.ready = lambda: True  # a page that keeps up (no page here echoes)
    sent = Sent(view.bokeh)
    readouts = []
    view.readout.observe(lambda c: readouts.append(c["new"]), "value")
    amounts = np.round(np.arange(0.05, 0.95, 0.05), 2)
    for a in amounts:  # one state every 20 ms
        mlp_demo_pruner.prune(float(a))
        measure(mlp_demo_pruner, state)
        clock.advance(0.02)
    clock.advance(1.0)  # released
    assert view.visited == 1 + len(amounts)
    streamed = [e for e in sent.events() if e["kind"] == "ColumnsStreamed"]
    assert 1 <= len(streamed) <= 3  # paced: not one patch per state
    assert sum(len(view.points[c][0].data["sparsity"]) for c in view.points) == 1 + len(amounts)
    assert len(readouts) < len(amounts)  # the readout skipped states in between...
    assert f"{mlp_demo_pruner.overall_sparsity():.1%}" in view.readout.value  # ...and shows the last
    mlp_demo_pruner.reset()


def test_paced_controls_leave_the_dragged_global_slider_where_the_person_put_it(explorer):
    ex = explorer
    clock = Clock()
    ex.controls._sync_pacer = Pacer(lambda: ex.controls.sync(ex.controls._origin), later=clock.later,
                                    key="controls", clock=clock)
    slider = ex.controls.global_slider
    for value in (0.2, 0.4, 0.6):
        slider.value = value
        ex.wait()
    clock.advance(1.0)  # the trailing sync runs after the gesture's action was cleared
    assert slider.value == 0.6
    assert abs(ex.pruner.overall_sparsity() - 0.6) < 0.01
    ex.apply(Action(kind="reset", run=ex.pruner.reset))
    ex.wait()
    clock.advance(1.0)
    assert slider.value == 0.0


def test_views_in_a_hidden_tab_do_not_redraw_until_the_tab_is_shown(explorer):
    ex = explorer
    connectivity = ex.views["connectivity"]
    ex.tabs.selected_index = 1
    before = connectivity.pacer.calls
    ex.pruner.prune(0.5)
    ex.wait()
    assert connectivity.pacer.calls == before  # nothing drawn behind the Export tab
    ex.tabs.selected_index = 0
    ex.wait()
    assert connectivity.pacer.calls == before + 1  # shown: the latest state, once
    assert any(t.startswith("cut ") for t in connectivity.cut_labels.data_source.data["text"])  # the pruned state
    ex.pruner.reset()
    ex.wait()


def test_a_bokeh_widget_without_a_loop_sends_each_change_at_once(mlp_demo_pruner):
    state = make_state(mlp_demo_pruner, layer="2")
    view = WeightsView(mlp_demo_pruner, state)
    assert isinstance(view.bokeh, BokehWidget)
    sent = Sent(view.bokeh)
    mlp_demo_pruner.prune({"2": 0.4})
    measure(mlp_demo_pruner, state)
    assert patch_messages(sent)  # sent during measure(), with nothing to wait for
    assert sum(view.hist_src.data["kept"]) == 18000
    mlp_demo_pruner.reset()


def test_a_paced_view_waits_for_a_busy_page_and_still_draws_the_final_state():
    clock, drawn, value, page = Clock(), [], {"v": 0}, {"ready": True}
    pacer = Pacer(lambda: drawn.append(value["v"]), later=clock.later, clock=clock, interval=0.3,
                  ready=lambda: page["ready"])
    value["v"] = 1
    pacer.request()
    clock.advance(pacer.settle)
    assert drawn == [1]
    page["ready"] = False  # the page is still painting state 1
    for i in range(2, 12):
        value["v"] = i
        pacer.request()
        clock.advance(0.1)
    assert drawn == [1]  # no state queued behind the one the page works on
    page["ready"] = True
    clock.advance(0.2)
    assert drawn == [1, 11]  # then the latest


def test_a_bokeh_widget_is_caught_up_once_the_page_echoes_what_it_applied(mlp_demo_pruner):
    state = make_state(mlp_demo_pruner, layer="2")
    view = WeightsView(mlp_demo_pruner, state)
    Sent(view.bokeh)
    assert view.bokeh.caught_up()
    mlp_demo_pruner.prune({"2": 0.4})
    measure(mlp_demo_pruner, state)
    assert not view.bokeh.caught_up() and not view.page_ready()
    assert view.bokeh.caught_up(timeout=0.0)  # a page that never answers does not stop the view
    view.bokeh._sync_model(view.bokeh, {"event": "jsevent", "kind": "ColumnDataChanged"}, [])
    assert view.bokeh.caught_up() and view.page_ready()
    mlp_demo_pruner.reset()
