"""Connectivity: units per layer as a layered graph, edges weighted by |w|, fading as they go."""

from __future__ import annotations

import numpy as np
from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from ..state import DenseReference
from ..topology import INPUT, UnitGraph
from .sizes import MAX_WIDTH
from .base import View, update_columns

EDGE_COLOR = "#2b4a6b"


class ConnectivityView(View):
    """Nodes are units (channels for convolutions), coloured by importance under the current
    criterion; an edge's opacity follows the norm of the weights joining two units, relative to
    the layer's strongest, and drops with what pruning removed. Dead units (no weight in or out
    left) fade."""

    title = "Connectivity"

    def __init__(self, pruner, state, width: int = 620, height: int = 380, post=None):
        self.size = (width, height)
        self._graph: UnitGraph | None = None
        super().__init__(pruner, state, post)
        state.observe(self._rebuild, "reference")
        state.observe(self._refresh, "revision")
        state.observe(self._recolour, ["scores", "criterion"])
        self._rebuild()
        self.mount()

    @property
    def graph(self) -> UnitGraph | None:
        """The unit graph drawn (columns, capped edges, positions); None before the first reference."""
        return self._graph

    def build(self):
        self.fig = figure(width=self.size[0], height=self.size[1], sizing_mode="stretch_width", max_width=MAX_WIDTH, tools="pan,wheel_zoom,reset,save",
                          toolbar_location="right", x_axis_location=None, y_axis_location=None,
                          outline_line_color=None, min_border=4)
        self.fig.grid.visible = False
        self.fig.toolbar.logo = None
        edges = ColumnDataSource(dict(x0=[], y0=[], x1=[], y1=[], alpha=[], name=[], dense=[], now=[]))
        self.edges = self.fig.segment("x0", "y0", "x1", "y1", source=edges, line_color=EDGE_COLOR,
                                      line_alpha="alpha", line_width=1.0)
        self.mapper = LinearColorMapper(palette=Viridis256, low=0, high=1, nan_color="#9aa4ad")
        nodes = ColumnDataSource(dict(x=[], y=[], importance=[], alpha=[], layer=[], unit=[], score=[], state=[]))
        self.nodes = self.fig.scatter("x", "y", source=nodes, size=7, line_color="#ffffff", line_width=0.5,
                                      fill_color={"field": "importance", "transform": self.mapper},
                                      fill_alpha="alpha", line_alpha="alpha")
        self.fig.add_tools(
            HoverTool(renderers=[self.nodes], tooltips=[("unit", "@layer [@unit]"), ("importance", "@score{0.000}"),
                                                        ("", "@state")]),
            HoverTool(renderers=[self.edges], tooltips=[("weight", "@name"), ("|w| dense", "@dense{0.0000}"),
                                                        ("|w| now", "@now{0.0000}")], line_policy="interp"),
        )
        self.labels = self.fig.text("x", "y", text="text", source=ColumnDataSource(dict(x=[], y=[], text=[])),
                                    text_font_size="11px", text_color="#444", text_align="center",
                                    text_baseline="bottom")
        return self.fig

    # -------------------------------------------------------------- data

    def _rebuild(self, change=None):
        """New dense weights: rebuild the graph (at open, and after fine-tuning)."""
        ref: DenseReference | None = self.state.reference
        if ref is None:
            return
        g = self._graph = UnitGraph(self.pruner.model, self.pruner.layers, ref.weights)
        src, dst = g.edge_endpoints()
        self._src, self._dst = src, dst
        dense, _ = g.measure(ref.weights)
        layer_max = np.zeros(len(dense))
        start = 0
        for e in g.edges.values():
            n = len(e.dst_unit)
            if n:
                layer_max[start:start + n] = dense[start:start + n].max() or 1.0
            start += n
        self._dense = dense
        self._base_alpha = 0.06 + 0.6 * dense / np.where(layer_max > 0, layer_max, 1)
        names = [f"{g.columns[int(c)].name}[{int(su)}] → {e.layer}[{int(du)}]"
                 for e in g.edges.values() for c, su, du in zip(e.src_col, e.src_unit, e.dst_unit)]
        layer_of = [c.name for c in g.columns for _ in c.shown]
        self._edge_static = dict(x0=g.node_x[src], y0=g.node_y[src], x1=g.node_x[dst], y1=g.node_y[dst],
                                 name=names, dense=dense)
        self._node_static = dict(x=g.node_x, y=g.node_y, layer=layer_of, unit=g.node_unit)
        label_x = np.arange(len(g.columns), dtype=float)
        kinds = {l.name: l.kind for l in self.pruner.layers}
        self.labels.data_source.data = dict(
            x=label_x, y=np.full(len(label_x), 1.03),
            text=[f"input ({c.units})" if c.name == INPUT else f"{c.name} {kinds[c.name]} ({c.units})"
                  for c in g.columns])
        self.fig.y_range.start, self.fig.y_range.end = -1.08, 1.12
        self.fig.x_range.start, self.fig.x_range.end = -0.45, len(g.columns) - 0.55
        self.edges.data_source.data = dict(**self._edge_static, alpha=self._base_alpha, now=dense)
        self.nodes.data_source.data = dict(**self._node_static, importance=np.full(len(g.node_x), np.nan),
                                           alpha=np.ones(len(g.node_x)), score=np.full(len(g.node_x), np.nan),
                                           state=[""] * len(g.node_x))
        self._recolour()
        self._refresh()

    def _refresh(self, change=None):
        """After each change of the Pruner: patch edge opacity and unit state only."""
        g = self._graph
        if g is None:
            return
        now, alive = g.measure({l.name: l.module.weight for l in self.pruner.layers})
        ratio = np.divide(now, self._dense, out=np.zeros_like(now), where=self._dense > 0)
        update_columns(self.edges.data_source, alpha=self._base_alpha * ratio, now=now)
        update_columns(self.nodes.data_source, alpha=np.where(alive, 1.0, 0.12),
                       state=np.where(alive, "", "pruned").tolist())
        self._set_caption()

    def _recolour(self, change=None):
        """Colour units by the current criterion's scores (magnitude until others arrive)."""
        g = self._graph
        if g is None:
            return
        scores, used = self.state.scores.get(self.state.criterion), self.state.criterion
        if not scores or self.state.criterion == "random":
            scores, used = self.state.scores.get("magnitude", {}), "magnitude"
        self._colour_by = used
        importance = np.full(len(g.node_x), np.nan)
        raw = np.full(len(g.node_x), np.nan)
        start = 0
        for c in g.columns:
            n = len(c.shown)
            s = scores.get(c.name)
            if s is not None:
                s = np.asarray(s, dtype=np.float64)[c.shown]
                raw[start:start + n] = s
                top = np.abs(s).max()
                importance[start:start + n] = s / top if top > 0 else 0.0
            start += n
        update_columns(self.nodes.data_source, importance=importance, score=raw)
        self._set_caption()

    def _set_caption(self):
        g = self._graph
        caps = g.caps()
        pending = self.state.criterion if self._colour_by != self.state.criterion and \
            self.state.criterion != "random" else ""
        colour = f"colour: {self._colour_by} importance (per layer, yellow = highest)"
        if pending:
            colour += f"; {pending} scores computing…"
        detail = f'<span style="color:#666">{colour}. Edge opacity: |w| relative to the layer\'s strongest.'
        if caps:
            detail += " Capped for legibility: " + "; ".join(caps) + "."
        self.set_caption(detail + "</span>")
