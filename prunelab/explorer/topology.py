"""Which units connect to which: the layered unit graph the connectivity view draws.

Columns are the model's input and each prunable layer's output units (channels for convolutions).
A layer's edges run from the units of the layers that feed it (found by tracing the model with
torch.fx, so residual additions and concatenations are followed) to its own units. An edge's
weight is the norm of the weights joining the two units: |w| for Linear-to-Linear, the kernel's
norm for convolutions, and the norm over all positions of a channel when a convolution's output
is flattened into a Linear layer.

Big layers are capped: at most ``max_units`` (MAX_UNITS) units per column (the largest by weight
norm) and ``max_edges`` (MAX_EDGES) edges per layer: the strongest by dense norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from torch import fx, nn

from ..core.layers import Layer
from ..core.tracing import symbolic_trace

INPUT = "input"
MAX_UNITS = 512    # units drawn per column at most (the largest by weight norm)
MAX_EDGES = 400    # edges drawn per layer at most (the strongest by dense norm)


@dataclass
class Column:
    """One column of units: the model input or a layer's outputs."""

    name: str
    units: int
    shown: np.ndarray  # unit indices drawn, ascending


@dataclass
class LayerEdges:
    """How a layer's weight maps onto edges. ``sources`` are (column, offset) pairs: unit ``j``
    of a source is input group ``offset + j`` of this layer."""

    layer: str
    sources: list[tuple[str, int]]
    groups: int                      # input groups (source units) the weight is split into
    note: str = ""                   # why edges are missing, when they are
    src_col: np.ndarray = field(default_factory=lambda: np.zeros(0, int))   # drawn edges: source column index
    src_unit: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # source unit
    dst_unit: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # this layer's unit
    group: np.ndarray = field(default_factory=lambda: np.zeros(0, int))     # input group of each edge
    total: int = 0                   # edges before capping


def layer_sources(model: nn.Module, layers: list[Layer]) -> dict[str, list[str]]:
    """For each layer, the layers (or ``"input"``) whose outputs reach it without passing through
    another prunable layer, in the order their units appear in its input (a concatenation lists
    its parts in order). Untraceable models are taken as a chain in module order."""
    return traced_sources(model, layers)[0]


# Operations after which a channel is no longer its source's unit of the same index (a split,
# a slice, a shuffle by view/transpose/reshape); a convolution after one is not drawn.
_REMAPPING = {"chunk", "split", "tensor_split", "narrow", "view", "reshape", "transpose", "permute", "flatten",
              "unflatten", "getitem", "movedim", "swapaxes", "roll", "index_select", "gather"}


def traced_sources(model: nn.Module, layers: list[Layer]) -> tuple[dict[str, list[str]], set[str]]:
    """:func:`layer_sources`, and the layers whose input passes through a split, slice or reshape
    on the way from those sources (its channels then do not follow the sources' units in order).

    Returns:
        ``({layer: sources}, {layers whose inputs are remapped})``.

    Example:
        >>> sources, remapped = traced_sources(model, pruner.layers)  # doctest: +SKIP
    """
    names = [l.name for l in layers]
    chain = {n: [names[i - 1] if i else INPUT] for i, n in enumerate(names)}
    try:
        graph = symbolic_trace(model).graph
    except Exception:  # data-dependent control flow: fall back to module order
        return chain, set()
    reaches: dict[fx.Node, list[str]] = {}
    remapped: dict[fx.Node, bool] = {}
    found: dict[str, list[str]] = {}
    moved: set[str] = set()
    wanted = set(names)
    for node in graph.nodes:
        if node.op == "placeholder":
            reaches[node], remapped[node] = [INPUT], False
            continue
        if _is_cat(node) and node.args and isinstance(node.args[0], (list, tuple)):
            upstream = [s for part in node.args[0] if isinstance(part, fx.Node) for s in reaches.get(part, [])]
        else:
            upstream = list(dict.fromkeys(s for a in node.all_input_nodes for s in reaches.get(a, [])))
        target = getattr(node.target, "__name__", node.target) if node.op != "call_module" else None
        mixed = any(remapped.get(a, False) for a in node.all_input_nodes) or target in _REMAPPING
        if node.op == "call_module" and node.target in wanted:
            found.setdefault(node.target, upstream)
            if mixed:
                moved.add(node.target)
            reaches[node], remapped[node] = [node.target], False
        else:
            reaches[node], remapped[node] = upstream, mixed
    return {n: found[n] if found.get(n) else chain[n] for n in names}, moved & set(found)


def _is_cat(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (torch.cat, torch.concat, torch.concatenate)) or \
        (node.op == "call_method" and node.target in ("cat", "concat"))


def in_groups(layer: Layer) -> int:
    """Input width of a layer: features (Linear) or channels (Conv)."""
    m = layer.module
    return m.in_channels if isinstance(m, nn.modules.conv._ConvNd) else layer.row_length


def edge_norms(weight: torch.Tensor, layer: Layer, groups: int) -> np.ndarray:
    """(units, groups) matrix of the norm of the weights joining each unit to each input group."""
    w = weight.detach() if layer.out_dim == 0 else layer.rows(weight.detach())
    out = w.shape[0]
    conv_groups = getattr(layer.module, "groups", 1)
    if conv_groups == 1:
        return w.reshape(out, groups, -1).float().norm(dim=2).cpu().numpy()
    # grouped convolution: output o sees only the input channels of its group
    per_group_in = w.shape[1]
    if groups != per_group_in * conv_groups:
        raise ValueError(f"layer {layer.name} is a convolution of {per_group_in * conv_groups} input channels in "
                         f"{conv_groups} groups; its edges cannot be split into {groups} input groups.")
    norms = w.reshape(out, per_group_in, -1).float().norm(dim=2).cpu().numpy()
    full = np.zeros((out, groups), dtype=np.float32)
    first = (np.arange(out) // (out // conv_groups)) * per_group_in
    for j in range(per_group_in):
        full[np.arange(out), first + j] = norms[:, j]
    return full


class UnitGraph:
    """The layered unit graph of a model: columns, capped edges, and node positions."""

    def __init__(self, model: nn.Module, layers: list[Layer], dense: dict[str, torch.Tensor],
                 max_units: int = MAX_UNITS, max_edges: int = MAX_EDGES, seed: int = 0):
        self.layers = layers
        self.max_units, self.max_edges = max_units, max_edges
        sources, self.remapped = traced_sources(model, layers)
        first_input = next((l for l in layers if INPUT in sources[l.name]), layers[0])
        units = {INPUT: in_groups(first_input), **{l.name: l.units for l in layers}}
        self.edges: dict[str, LayerEdges] = {}
        for l in layers:
            self.edges[l.name] = self._map_inputs(l, sources[l.name], units)
        # Shown units per column: all, or the largest by dense weight norm.
        self.dense_norms = {l.name: edge_norms(dense[l.name], l, self.edges[l.name].groups)
                            if self.edges[l.name].groups else None for l in layers}
        self.columns = [Column(INPUT, units[INPUT], self._shown_inputs(units[INPUT]))]
        for l in layers:
            self.columns.append(Column(l.name, l.units, self._top(l.rows(dense[l.name]).abs().sum(1))))
        self.column_index = {c.name: i for i, c in enumerate(self.columns)}
        rng = np.random.default_rng(seed)
        for l in layers:
            self._choose_edges(self.edges[l.name], rng)
        self._layout()

    # -------------------------------------------------------------- building

    def _map_inputs(self, layer: Layer, sources: list[str], units: dict[str, int]) -> LayerEdges:
        width = in_groups(layer)
        sizes = [units[s] for s in sources]
        conv = isinstance(layer.module, nn.modules.conv._ConvNd)
        if len(sources) > 1 and sum(sizes) == width and not (conv and layer.name in self.remapped):  # a concat
            offsets = np.cumsum([0] + sizes[:-1]).tolist()
            return LayerEdges(layer.name, list(zip(sources, offsets)), width)
        # one source (maybe flattened into a Linear), or a sum; a convolution's input channels are
        # its sources' units one to one (a split or a shuffle in between maps them otherwise)
        if len(set(sizes)) == 1 and width % sizes[0] == 0 and (not conv or sizes[0] == width
                                                              and layer.name not in self.remapped):
            return LayerEdges(layer.name, [(s, 0) for s in dict.fromkeys(sources)], sizes[0])
        return LayerEdges(layer.name, [], 0, note=f"inputs of {layer.name} ({width}) do not map onto "
                                                  f"the units of {', '.join(sources)} (a split or reshape "
                                                  "in between): its edges are not drawn")

    def _top(self, strength: torch.Tensor) -> np.ndarray:
        if len(strength) <= self.max_units:
            return np.arange(len(strength))
        return np.sort(torch.topk(strength.float(), self.max_units).indices.cpu().numpy())

    def _shown_inputs(self, n: int) -> np.ndarray:
        if n <= self.max_units:
            return np.arange(n)
        strength = np.zeros(n)
        for e in self.edges.values():
            for col, off in e.sources:
                if col == INPUT:
                    strength += self.dense_norms[e.layer][:, off:off + n].sum(0)
        return np.sort(np.argsort(-strength)[: self.max_units])

    def _choose_edges(self, e: LayerEdges, rng: np.random.Generator):
        if not e.groups:
            return
        dense = self.dense_norms[e.layer]
        dst_shown = self.columns[self.column_index[e.layer]].shown
        cols, srcs, dsts, grps = [], [], [], []
        for col, off in e.sources:
            ci = self.column_index[col]
            src_shown = self.columns[ci].shown
            src_shown = src_shown[src_shown + off < e.groups] if col == INPUT else src_shown
            d, s = np.meshgrid(dst_shown, src_shown, indexing="ij")
            d, s = d.ravel(), s.ravel()
            keep = dense[d, s + off] > 0  # weights that are exactly zero draw nothing
            cols.append(np.full(int(keep.sum()), ci))
            srcs.append(s[keep]), dsts.append(d[keep]), grps.append(s[keep] + off)
        col, src, dst, grp = (np.concatenate(a) for a in (cols, srcs, dsts, grps))
        e.total = len(col)
        if len(col) > self.max_edges:  # the strongest (dense norm), in their original order
            pick = np.sort(np.argpartition(-dense[dst, grp], self.max_edges - 1)[: self.max_edges])
            col, src, dst, grp = col[pick], src[pick], dst[pick], grp[pick]
        e.src_col, e.src_unit, e.dst_unit, e.group = col, src, dst, grp

    def _layout(self):
        """Node positions: networkx's multipartite layout, one column per layer."""
        g = nx.DiGraph()
        for ci, c in enumerate(self.columns):
            g.add_nodes_from(((ci, int(u)) for u in c.shown), column=ci)
        for e in self.edges.values():
            dst_col = self.column_index[e.layer]
            g.add_edges_from(zip(zip(e.src_col.tolist(), e.src_unit.tolist()),
                                 zip([dst_col] * len(e.dst_unit), e.dst_unit.tolist())))
        self.graph = g
        pos = nx.multipartite_layout(g, subset_key="column", align="vertical", scale=1.0)
        self.node_column = np.concatenate([np.full(len(c.shown), ci) for ci, c in enumerate(self.columns)])
        self.node_unit = np.concatenate([c.shown for c in self.columns])
        xy = np.array([pos[(int(c), int(u))] for c, u in zip(self.node_column, self.node_unit)])
        # networkx orders the columns along x; spread them evenly, and each column's units over
        # the full height in unit order (the joint rescaling squeezes x and short columns).
        column_x = np.unique(xy[:, 0])
        self.node_x = np.searchsorted(column_x, xy[:, 0]).astype(float)
        self.node_y = np.zeros(len(xy))
        start = 0
        for c in self.columns:
            n = len(c.shown)
            self.node_y[start:start + n] = np.linspace(1, -1, n) if n > 1 else 0.0
            start += n
        self.node_index = {(int(c), int(u)): i for i, (c, u) in enumerate(zip(self.node_column, self.node_unit))}

    # -------------------------------------------------------------- queries

    def edge_endpoints(self) -> tuple[np.ndarray, np.ndarray]:
        """Node indices (source, destination) of every drawn edge, layer by layer."""
        src, dst = [], []
        for e in self.edges.values():
            dc = self.column_index[e.layer]
            src.append([self.node_index[(int(c), int(u))] for c, u in zip(e.src_col, e.src_unit)])
            dst.append([self.node_index[(dc, int(u))] for u in e.dst_unit])
        return np.array(sum(src, []), dtype=int), np.array(sum(dst, []), dtype=int)

    def measure(self, weights: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """(norm of every drawn edge, whether every drawn unit is alive) for the given layer
        weights. A unit is alive while it has a nonzero incoming weight and, when other layers
        read it, a nonzero outgoing one."""
        values = []
        alive_in = {}
        alive_out: dict[str, np.ndarray] = {}
        for l in self.layers:
            e = self.edges[l.name]
            w = weights[l.name].detach()
            alive_in[l.name] = l.rows(w).ne(0).any(1).cpu().numpy()
            if not e.groups:
                continue
            norms = edge_norms(w, l, e.groups)
            values.append(norms[e.dst_unit, e.group])
            used = norms.any(0)
            for col, off in e.sources:
                n = self.columns[self.column_index[col]].units
                seen = alive_out.setdefault(col, np.zeros(n, dtype=bool))
                part = used[off:off + n]
                seen[:len(part)] |= part
        alive = []
        for c in self.columns:
            ok = np.ones(c.units, dtype=bool)
            if c.name in alive_in:
                ok &= alive_in[c.name]
            if c.name in alive_out:
                ok &= alive_out[c.name]
            alive.append(ok[c.shown])
        return (np.concatenate(values) if values else np.zeros(0)), np.concatenate(alive)

    def caps(self) -> list[str]:
        """What was left out, in words, for the view's caption."""
        notes = [f"{c.name}: {len(c.shown):,} of {c.units:,} units (largest |w|)"
                 for c in self.columns if len(c.shown) < c.units]
        notes += [f"{e.layer}: the {len(e.dst_unit):,} strongest of {e.total:,} edges"
                  for e in self.edges.values() if e.total > len(e.dst_unit)]
        notes += [e.note for e in self.edges.values() if e.note]
        return notes
