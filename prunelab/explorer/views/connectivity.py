"""Connectivity: units per layer as a layered graph. Per layer the strongest edges by dense |w|
are drawn (their number stated in the caption), dark by strength while kept and red once pruning
cut them; units are coloured and sized by importance; under each column, how much of the layer
is cut, so every pruning step shows even when the strongest edges survive it."""

from __future__ import annotations

import numpy as np
from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from ..state import DenseReference
from ..slider_values import short_name
from ..topology import INPUT, UnitGraph
from .pacing import Pacer
from .sizes import MAX_WIDTH
from .base import View, update_columns

EDGE_COLOR = "#2b4a6b"
CUT_COLOR = "#d62728"   # an edge pruning removed entirely
CUT_ALPHA = 0.45


class ConnectivityView(View):
    """Nodes are units (channels for convolutions), coloured and sized by importance under the
    current criterion. Per layer the strongest ``graph.max_edges`` edges by dense norm are drawn;
    a kept edge's opacity follows the norm of the weights joining two units, relative to the
    layer's strongest, and drops with what pruning removed; an edge pruning removed entirely is
    drawn red (cut). Dead units (no weight in or out left) fade. Under each layer's column: the
    share of its weights cut."""

    title = "Connectivity"

    def __init__(self, pruner, state, width: int = 620, height: int = 380, post=None, later=None):
        self.size = (width, height)
        self._graph: UnitGraph | None = None
        super().__init__(pruner, state, post)
        state.observe(self._rebuild, "reference")
        self.pacer = Pacer(self._refresh, later, "connectivity", ready=self.page_ready)  # drawn when a drag pauses (pacing.py)
        state.observe(self.pacer.request, "revision")
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
        self.cut_mapper = LinearColorMapper(palette=[EDGE_COLOR, CUT_COLOR], low=0, high=1)
        edges.data["cut"] = []
        self.edges = self.fig.segment("x0", "y0", "x1", "y1", source=edges, line_alpha="alpha", line_width=1.0,
                                      line_color={"field": "cut", "transform": self.cut_mapper})
        self.mapper = LinearColorMapper(palette=Viridis256, low=0, high=1, nan_color="#9aa4ad")
        nodes = ColumnDataSource(dict(x=[], y=[], importance=[], alpha=[], layer=[], unit=[], score=[], state=[],
                                      size=[]))
        self.nodes = self.fig.scatter("x", "y", source=nodes, size="size", line_color="#ffffff", line_width=0.5,
                                      fill_color={"field": "importance", "transform": self.mapper},
                                      fill_alpha="alpha", line_alpha="alpha")
        self.fig.add_tools(
            HoverTool(renderers=[self.nodes], tooltips=[("unit", "@layer [@unit]"), ("importance", "@score{0.000}"),
                                                        ("", "@state")]),
            HoverTool(renderers=[self.edges], tooltips=[("weight", "@name"), ("|w| dense", "@dense{0.0000}"),
                                                        ("|w| now", "@now{0.0000}")], line_policy="interp"),
        )
        self.labels = self.fig.text("x", "y", text="text", source=ColumnDataSource(dict(x=[], y=[], text=[])),
                                    text_font_size="10px", text_color="#444", text_align="center",
                                    text_baseline="bottom", text_line_height=1.1)
        # under each layer's column: how much of it pruning cut (changes with every step)
        self.cut_labels = self.fig.text("x", "y", text="text", source=ColumnDataSource(dict(x=[], y=[], text=[])),
                                        text_font_size="10px", text_color=CUT_COLOR, text_align="center",
                                        text_baseline="top")
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
        self._meanings = edge_meanings(self.pruner.layers, g)
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
            text=[f"input\n({c.units})" if c.name == INPUT else f"{short_name(c.name, 14)}\n{kinds[c.name]} ({c.units})"
                  for c in g.columns])
        self._layer_weights = {l.name: l.module.weight.numel() for l in self.pruner.layers}
        self.cut_labels.data_source.data = dict(x=label_x[1:], y=np.full(len(label_x) - 1, -1.04),
                                                text=[""] * (len(label_x) - 1))
        self.fig.y_range.start, self.fig.y_range.end = -1.16, 1.2
        self.fig.x_range.start, self.fig.x_range.end = -0.45, len(g.columns) - 0.55
        self.edges.data_source.data = dict(**self._edge_static, alpha=self._base_alpha, now=dense,
                                           cut=np.zeros(len(dense)))
        self.nodes.data_source.data = dict(**self._node_static, importance=np.full(len(g.node_x), np.nan),
                                           alpha=np.ones(len(g.node_x)), score=np.full(len(g.node_x), np.nan),
                                           state=[""] * len(g.node_x), size=np.full(len(g.node_x), 6.0))
        self._recolour()
        self._refresh()

    def _refresh(self, change=None):
        """After each change of the Pruner: patch edge opacity and unit state only."""
        g = self._graph
        if g is None:
            return
        now, alive = g.measure({l.name: l.weight for l in self.pruner.layers})
        ratio = np.divide(now, self._dense, out=np.zeros_like(now), where=self._dense > 0)
        cut = (now == 0) & (self._dense > 0)
        # float32: half the bytes to send, decode and echo of float64, and nothing a screen can show lost
        update_columns(self.edges.data_source, alpha=np.where(cut, CUT_ALPHA, self._base_alpha * ratio).astype(np.float32),
                       now=now.astype(np.float32), cut=cut.astype(np.float32))
        zeros = self.pruner.sparsity()
        update_columns(self.cut_labels.data_source,
                       text=[f"cut {zeros.get(c.name, 0.0):.0%}" if zeros.get(c.name, 0.0) > 0 else ""
                             for c in g.columns[1:]])
        update_columns(self.nodes.data_source, alpha=np.where(alive, 1.0, 0.12).astype(np.float32),
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
        size = np.where(np.isnan(importance), 5.0, 4.0 + 6.0 * np.abs(np.nan_to_num(importance)))
        update_columns(self.nodes.data_source, importance=importance, score=raw, size=size)
        self._set_caption()

    def _set_caption(self):
        g = self._graph
        caps = g.caps()
        pending = self.state.criterion if self._colour_by != self.state.criterion and \
            self.state.criterion != "random" else ""
        colour = f"units: colour and size by {self._colour_by} importance (per layer, yellow = highest)"
        if pending:
            colour += f"; {pending} scores computing…"
        detail = (f'<span style="color:#666">{colour}. Edges: the {g.max_edges:,} strongest per layer by dense |w|, '
                  f'dark by |w| relative to the layer\'s strongest; <span style="color:{CUT_COLOR}">red: cut by '
                  f'pruning</span>. {"; ".join(self._meanings)}.')
        if caps:
            detail += " Left out for legibility: " + "; ".join(caps) + "."
        self.set_caption(detail + "</span>")


def edge_meanings(layers, graph: UnitGraph) -> list[str]:
    """What one edge aggregates, per kind of layer, in words for the caption: one weight between
    two features (Linear), the norm of a kernel joining two channels (Conv), or the norm over all
    positions of a channel flattened into a Linear layer.

    Args:
        layers: the Pruner's layers. graph: the unit graph drawn.

    Returns:
        Distinct phrases, e.g. ``["0, 2, 4: an edge is one weight"]``.

    Example:
        >>> edge_meanings(pruner.layers, view.graph)
        ['0, 2, 4: an edge is one weight']
    """
    by_meaning: dict[str, list[str]] = {}
    for l in layers:
        e = graph.edges[l.name]
        if not e.groups:
            continue
        per_edge = l.module.weight[0].numel() // e.groups if l.module.weight.dim() > 1 else 1
        kernel = tuple(l.module.weight.shape[2:])
        if per_edge <= 1:
            meaning = "an edge is one weight"
        elif kernel and per_edge == int(np.prod(kernel)):
            meaning = f"an edge is the L2 norm of a {'×'.join(map(str, kernel))} kernel joining two channels"
        else:
            meaning = f"an edge is the L2 norm of the {per_edge} weights joining a channel's positions to a unit"
        by_meaning.setdefault(meaning, []).append(l.name)
    return [f"{', '.join(short_name(n, 14) for n in names)}: {m}" for m, names in by_meaning.items()]
