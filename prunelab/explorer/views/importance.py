"""Importance of each unit of the selected layer under several criteria, side by side, and how far
they agree (Spearman rank correlation)."""

from __future__ import annotations

import itertools

import numpy as np
from bokeh.models import ColumnDataSource, FixedTicker, HoverTool, Range1d
from bokeh.plotting import figure

from ..analysis import rank_correlation
from ..state import COMPARED
from .pacing import Pacer
from .sizes import MAX_WIDTH
from .base import CRITERION_COLOURS as COLOURS, View, update_columns

BAND = 1.3  # vertical space per criterion; bars reach 1


class ImportanceView(View):
    """Bars: each unit's score, over the layer's highest, one band per criterion (scores on the
    unmasked weights). A bar's opacity is the share of the unit's weights still kept."""

    title = "Importance"

    def __init__(self, pruner, state, width: int = 620, height: int = 230, post=None, later=None):
        self.size = (width, height)
        self._layer = None
        super().__init__(pruner, state, post)
        state.observe(self._select, ["layer", "scores", "score_errors", "reference"])
        self.pacer = Pacer(self._refresh, later, "importance", ready=self.page_ready)  # drawn when a drag pauses (pacing.py)
        state.observe(self.pacer.request, "revision")
        self._select()
        self.mount()

    def build(self):
        self.src = ColumnDataSource(dict(unit=[], alpha=[], **{f"{c}_top": [] for c in COMPARED},
                                         **{c: [] for c in COMPARED}))
        self.fig = figure(width=self.size[0], height=self.size[1], sizing_mode="stretch_width", max_width=MAX_WIDTH, tools="xpan,xwheel_zoom,reset,save",
                          toolbar_location="above", x_axis_label="unit", min_border=4,
                          x_range=Range1d(-0.5, 0.5))  # fixed per layer: a redraw does not re-fit the axes
        self.fig.toolbar.logo = None
        self.fig.ygrid.visible = False
        bars = []
        for i, c in enumerate(COMPARED):
            bottom = (len(COMPARED) - 1 - i) * BAND
            bars.append(self.fig.vbar(x="unit", bottom=bottom, top=f"{c}_top", width=0.85, source=self.src,
                                      fill_color=COLOURS[c], line_color=None, fill_alpha="alpha"))
        self.fig.add_tools(HoverTool(renderers=bars, tooltips=[("unit", "@unit"), *[(c, f"@{c}{{0.0000}}")
                                                                                       for c in COMPARED]]))
        ticks = [(len(COMPARED) - 1 - i) * BAND + 0.5 for i in range(len(COMPARED))]
        self.fig.yaxis.ticker = FixedTicker(ticks=ticks)
        self.fig.yaxis.major_label_overrides = {t: c for t, c in zip(ticks, COMPARED)}
        self.fig.y_range.start, self.fig.y_range.end = 0, len(COMPARED) * BAND - 0.2
        return self.fig

    def _select(self, change=None):
        if not self.state.layer:
            return
        self._layer = layer = self.pruner.layer(self.state.layer)
        cols = {"unit": np.arange(layer.units)}
        self.fig.x_range.update(start=-0.5, end=layer.units - 0.5)
        self._have = []
        for i, c in enumerate(COMPARED):
            s = self.state.scores.get(c, {}).get(layer.name)
            bottom = (len(COMPARED) - 1 - i) * BAND
            if s is None:
                raw = np.full(layer.units, np.nan)
                top = np.full(layer.units, bottom)
            else:
                raw = np.asarray(s, dtype=np.float64)
                peak = np.abs(raw).max()
                top = bottom + (raw / peak if peak > 0 else raw * 0)
                self._have.append(c)
            cols[c], cols[f"{c}_top"] = raw, top
        update_columns(self.src, **cols, alpha=self._alpha(layer))
        self._caption(layer)

    def _alpha(self, layer) -> np.ndarray:
        keep = layer.rows(self.pruner.mask(layer.name)).float().mean(1).cpu().numpy()
        return (0.15 + 0.85 * keep).astype(np.float32)

    def _refresh(self, change=None):
        if self._layer is not None:
            update_columns(self.src, alpha=self._alpha(self._layer))

    def agreement(self) -> dict[tuple[str, str], float]:
        """Spearman rank correlation between each pair of available criteria on this layer."""
        data = self.src.data
        return {(a, b): rank_correlation(data[a], data[b]) for a, b in itertools.combinations(self._have, 2)}

    def _caption(self, layer):
        missing = [c for c in COMPARED if c not in self._have]
        rho = " · ".join(f"{a}–{b} <b>{r:+.2f}</b>" for (a, b), r in self.agreement().items())
        detail = (f'<span style="color:#666">layer <b>{layer.name}</b>, {layer.units} units; bars: score / layer '
                  f"maximum, faded by the share of the unit's weights pruned. ")
        if rho:
            detail += f"Spearman ρ: {rho}. "
        errors = self.state.score_errors
        for c in missing:
            if c in errors:
                detail += f"{c}: unavailable ({errors[c]}). "
        pending = [c for c in missing if c not in errors]
        self.set_caption(detail + "</span>", status=f"{', '.join(pending)}: computing…" if pending else "")
