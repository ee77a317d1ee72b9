"""Weight magnitudes of the selected layer: a histogram of |w| (kept over all, with the |w|
threshold in effect) and a heatmap of the dense weights under a veil where they are pruned."""

from __future__ import annotations

import math

import numpy as np
import torch
from bokeh.layouts import row
from bokeh.models import ColumnDataSource, CustomJSHover, HoverTool, LinearColorMapper, Range1d, Span
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from .pacing import Pacer
from .sizes import MAX_WIDTH
from .base import View, update_columns

BINS = 60
MAX_SIDE, MAX_CELLS = 512, 65536  # heatmap size; bigger layers are shown as blocks
KEPT, PRUNED = "#3b6ea5", "#d9dde3"
VEIL_LEVELS = 8  # the pruned share of a heatmap cell, in steps: 0 none (clear) ... 7 all (pale, opaque)
VEIL = tuple(f"#f4f4f4{round(255 * k / (VEIL_LEVELS - 1)):02x}" for k in range(VEIL_LEVELS))


def heatmap_matrix(weight: torch.Tensor) -> np.ndarray:
    """(out, in) magnitudes: |w| for Linear, the kernel's L2 norm for convolutions."""
    w = weight.detach().float()
    if w.dim() == 2:
        return w.abs().cpu().numpy()
    return w.reshape(w.shape[0], w.shape[1], -1).norm(dim=2).cpu().numpy()


def block_factors(rows: int, cols: int, side: int = MAX_SIDE, cells: int = MAX_CELLS) -> tuple[int, int]:
    """Block size that brings a rows x cols matrix within ``side`` cells a side and ``cells`` in all."""
    fr, fc = math.ceil(rows / side), math.ceil(cols / side)
    while math.ceil(rows / fr) * math.ceil(cols / fc) > cells:
        if math.ceil(rows / fr) >= math.ceil(cols / fc):
            fr += 1
        else:
            fc += 1
    return fr, fc


def pruned_share(mask: torch.Tensor, block: tuple[int, int]) -> np.ndarray:
    """(out, in) share of the weights pruned per heatmap cell (a kernel for convolutions, a
    ``block`` of cells for big layers), as veil levels: uint8 0 (nothing pruned) to
    ``VEIL_LEVELS - 1`` (all), any pruned weight at least level 1.

    Example:
        >>> pruned_share(torch.tensor([[True, False]]), (1, 1)).tolist()
        [[0, 7]]
    """
    gone = (~mask.bool()).float()
    gone = (gone.reshape(gone.shape[0], gone.shape[1], -1).mean(2) if gone.dim() > 2 else gone).cpu().numpy()
    if block != (1, 1):
        gone = _blocks(gone, block).sum(axis=(1, 3)) / _blocks(np.ones_like(gone), block).sum(axis=(1, 3))
    return np.ceil(gone * (VEIL_LEVELS - 1)).astype(np.uint8)


def _blocks(m: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """``m`` zero-padded to whole blocks, as (block rows, fr, block columns, fc)."""
    fr, fc = block
    rows, cols = math.ceil(m.shape[0] / fr) * fr, math.ceil(m.shape[1] / fc) * fc
    padded = np.zeros((rows, cols), dtype=np.float64)
    padded[: m.shape[0], : m.shape[1]] = m
    return padded.reshape(rows // fr, fr, cols // fc, fc)


def block_reduce(m: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Shrink ``m`` to a displayable size: each cell the RMS of the nonzero entries of its block,
    NaN where all are zero (pruned). Returns the image and the block size."""
    fr, fc = block_factors(*m.shape)
    if fr == 1 and fc == 1:
        return np.where(m > 0, m, np.nan).astype(np.float32), (1, 1)
    blocks = _blocks(m, (fr, fc))
    nonzero = (blocks > 0).sum(axis=(1, 3))
    sq = (blocks ** 2).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        img = np.where(nonzero > 0, np.sqrt(sq / np.maximum(nonzero, 1)), np.nan)
    return img.astype(np.float32), (fr, fc)


class WeightsView(View):
    """For the selected layer: how |w| is distributed and which weights are gone."""

    title = "Weight magnitudes"

    def __init__(self, pruner, state, width: int = 620, height: int = 240, post=None, later=None):
        self.size = (width, height)
        self._layer = None
        super().__init__(pruner, state, post)
        state.observe(self._select, ["layer", "reference"])
        self.pacer = Pacer(self._refresh, later, "weights", ready=self.page_ready)  # drawn when a drag pauses (pacing.py)
        state.observe(self.pacer.request, "revision")
        self._select()
        self.mount()

    def build(self):
        w, h = self.size
        # fixed ranges (set per layer): a redraw during a drag does not re-fit the axes
        self.hist = figure(width=w // 2 - 10, height=h, sizing_mode="stretch_width", tools="xpan,xwheel_zoom,reset,save", toolbar_location="above",
                           x_axis_label="|w|", y_axis_label="weights", min_border=4,
                           x_range=Range1d(0, 1), y_range=Range1d(0, 1))
        self.hist.toolbar.logo = None
        self.hist_src = ColumnDataSource(dict(left=[], right=[], total=[], kept=[]))
        total = self.hist.quad(left="left", right="right", bottom=0, top="total", source=self.hist_src,
                               fill_color=PRUNED, line_color=None)
        self.hist.quad(left="left", right="right", bottom=0, top="kept", source=self.hist_src,
                       fill_color=KEPT, line_color=None)
        self.hist.add_tools(HoverTool(renderers=[total], tooltips=[("|w|", "@left{0.0000} – @right{0.0000}"),
                                                                  ("kept", "@kept of @total")]))
        self.threshold = Span(location=0, dimension="height", line_color="#c0392b", line_width=2,
                              line_dash="dashed", visible=False)
        self.hist.add_layout(self.threshold)

        self.heat = figure(width=w // 2 + 10, height=h, sizing_mode="stretch_width", tools="pan,wheel_zoom,reset,save", toolbar_location="above",
                           x_axis_label="input", y_axis_label="output unit", min_border=4,
                           x_range=Range1d(0, 1), y_range=Range1d(1, 0))
        self.heat.toolbar.logo = None
        self.heat.grid.visible = False
        self.mapper = LinearColorMapper(palette=Viridis256, low=0, high=1, nan_color="#f4f4f4")
        # the dense magnitudes, sent once per layer; over them a veil, pale where pruned: a move
        # sends one byte a cell (the veil), not the four of a float image
        self.heat_src = ColumnDataSource(dict(image=[], dw=[], dh=[]))
        image = self.heat.image(image="image", x=0, y=0, dw="dw", dh="dh", source=self.heat_src,
                                color_mapper=self.mapper)
        self.veil_src = ColumnDataSource(dict(image=[], dw=[], dh=[]))
        self.heat.image(image="image", x=0, y=0, dw="dw", dh="dh", source=self.veil_src,
                        color_mapper=LinearColorMapper(palette=VEIL, low=0, high=VEIL_LEVELS - 1))
        floor = CustomJSHover(code="return String(Math.floor(value))")
        self.heat.add_tools(HoverTool(renderers=[image], tooltips=[("out", "$y{custom}"), ("in", "$x{custom}"),
                                                                   ("|w| dense", "@image{0.0000}")],
                                      formatters={"$x": floor, "$y": floor}))
        return row(self.hist, self.heat, sizing_mode="stretch_width", max_width=MAX_WIDTH)

    # -------------------------------------------------------------- data

    def _select(self, change=None):
        """A new layer (or new dense weights): bins and heatmap geometry change."""
        ref = self.state.reference
        if ref is None or not self.state.layer:
            return
        self._layer = layer = self.pruner.layer(self.state.layer)
        dense = ref.abs_flat(layer.name)
        top = float(dense.max()) if dense.size else 1.0
        self._edges = np.linspace(0, top if top > 0 else 1.0, BINS + 1)
        self._bin = np.clip(np.searchsorted(self._edges, dense, side="right") - 1, 0, BINS - 1)
        self._dense_abs = dense
        total = np.bincount(self._bin, minlength=BINS)
        self.hist_src.data = dict(left=self._edges[:-1], right=self._edges[1:], total=total, kept=total)
        self.hist.x_range.update(start=0, end=float(self._edges[-1]))
        self.hist.y_range.update(start=0, end=float(max(total.max(), 1)) * 1.05)
        m = heatmap_matrix(ref.weights[layer.name])
        self.mapper.high = float(np.nanmax(m)) if m.size and np.nanmax(m) > 0 else 1.0
        rows, cols = m.shape
        self.heat.x_range.update(start=0, end=cols)
        self.heat.y_range.update(start=rows, end=0)
        self.heat.xaxis.axis_label = "input channel" if layer.kind.startswith("Conv") else "input"
        image, self._block = block_reduce(m)
        self.heat_src.data = dict(image=[image], dw=[cols], dh=[rows])
        self.veil_src.data = dict(image=[np.zeros(image.shape, np.uint8)], dw=[cols], dh=[rows])
        self._refresh()

    def _refresh(self, change=None):
        layer = self._layer
        if layer is None:
            return
        mask = self.pruner.mask(layer.name)
        keep = mask.reshape(-1).cpu().numpy()
        update_columns(self.hist_src, kept=np.bincount(self._bin[keep], minlength=BINS))
        update_columns(self.veil_src, image=[pruned_share(mask, self._block)])
        line = self._threshold(keep)
        self.threshold.visible = line is not None
        if line is not None:
            self.threshold.location = line
        pruned = 1 - keep.mean() if keep.size else 0.0
        detail = (f'<span style="color:#666">layer <b>{layer.name}</b> ({layer.kind} {"×".join(map(str, layer.shape))}, '
                  f'{layer.params:,} weights): {pruned:.1%} pruned. Histogram: <b style="color:{KEPT}">kept</b>, '
                  f'<b style="color:#9aa0a8">pruned</b>')
        if line is not None:
            detail += f", |w| &lt; {line:.4g} removed (red line)"
        elif pruned > 0:
            detail += " (no single |w| threshold for this criterion or granularity)"
        if self._block != (1, 1):
            detail += f". Heatmap cells are RMS of {self._block[0]}×{self._block[1]} blocks of the dense weights, paler by the share pruned"
        if layer.kind.startswith("Conv"):
            detail += ". Heatmap: kernel norms per output × input channel"
        self.set_caption(detail + ". Pale cells: pruned.</span>")

    def _threshold(self, keep: np.ndarray) -> float | None:
        """The |w| below which this layer's weights are removed, when pruning works that way."""
        plan = self.pruner.plans.get(self._layer.name)
        if plan is None or plan.granularity != "unstructured" or plan.criterion != "magnitude":
            return None
        if plan.threshold is not None:
            return float(plan.threshold)
        dropped = self._dense_abs[~keep]
        return float(dropped.max()) if dropped.size else None
