"""Helpers for the explorer tests: bare view state, and a recorder of what the bokeh widgets would
send to the browser."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

from prunelab.explorer.state import ExplorerState, dense_reference, magnitude_scores


def make_state(pruner, layer: str | None = None) -> ExplorerState:
    """What the Explorer sets up before building views (without its background work)."""
    state = ExplorerState(layer=layer or pruner.layers[0].name)
    state.scores = {"magnitude": magnitude_scores(pruner)}
    state.reference = dense_reference(pruner)
    state.metrics = state.baseline = pruner.evaluate()
    return state


class Sent:
    """Records what a jupyter_bokeh widget sends to the browser (STACK.md: BokehModel.send)."""

    def __init__(self, bokeh_widget):
        self.widget = bokeh_widget
        self.mock = MagicMock()
        bokeh_widget.send = self.mock
        self.bundle = bokeh_widget.render_bundle

    def events(self) -> list[dict]:
        out = []
        for call in self.mock.call_args_list:
            content = call.args[0]
            payload = content.get("payload")
            if isinstance(payload, str) and payload.startswith("{"):
                doc = json.loads(payload)
                out.extend(doc.get("events", []))
        return out

    def columns(self, source) -> set[str]:
        """Columns of ``source`` sent as ColumnDataChanged events."""
        cols = set()
        for e in self.events():
            if e.get("kind") == "ColumnDataChanged" and e["model"]["id"] == source.id:
                cols.update(e["cols"])
        return cols

    def full_data_sends(self, source) -> list[dict]:
        """Events that replaced the whole ``data`` of ``source`` (a re-render of the source)."""
        return [e for e in self.events() if e.get("kind") == "ModelChanged" and e["model"]["id"] == source.id
                and e.get("attr") == "data"]

    def rerendered(self) -> bool:
        return self.widget.render_bundle is not self.bundle

    def reset(self):
        self.mock.reset_mock()
