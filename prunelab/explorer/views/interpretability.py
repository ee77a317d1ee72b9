"""Interpretability: what the model looks at, before and after pruning.

captum IntegratedGradients attributions for a few validation samples (the first of each class,
six at most), the original model beside the current pruned one: 2-D inputs as images, 1-D and
tabular inputs as bars. The drift score says how far the explanations moved; per-class accuracy change says
where the accuracy went. Attributions are recomputed when changes settle (or on request) and
marked stale meanwhile; per-class accuracy is measured with every change.
"""

from __future__ import annotations

import html

import ipywidgets as w
import numpy as np
from bokeh.layouts import row
from bokeh.models import ColumnDataSource, FactorRange, HoverTool, LinearColorMapper, Range1d
from bokeh.palettes import RdBu11, Greys256
from bokeh.plotting import figure

from ..analysis import Explanations
from .pacing import Pacer
from .sizes import MAX_WIDTH
from .base import FONT, View, update_columns

MAX_FEATURES = 32     # bars shown per sample for 1-D inputs (the largest attributions)
DIVERGING = tuple(reversed(RdBu11))  # positive attribution red, negative blue


def as_images(x: np.ndarray, image_shape: tuple[int, int] | None) -> np.ndarray | None:
    """(n, H, W) view of per-sample arrays, summing leading channels; None for 1-D inputs."""
    if image_shape is not None and int(np.prod(x.shape[1:])) == image_shape[0] * image_shape[1]:
        return x.reshape(len(x), *image_shape)
    if x.ndim >= 3:
        return x.reshape(len(x), -1, *x.shape[-2:]).sum(1)
    return None


class InterpretabilityView(View):
    """Rows: the input, the original model's attribution, the pruned model's; one column per
    sample. Each sample's two attributions share one colour scale (its original's largest
    |attribution|), so they compare directly."""

    title = "Interpretability"

    def __init__(self, pruner, state, image_shape: tuple[int, int] | None = None, class_names=None,
                 width: int = 620, height: int = 250, post=None, later=None):
        self.size = (width, height)
        self.image_shape = image_shape
        self.class_names = class_names
        self.explain = w.Button(description="Explain now", icon="refresh", tooltip="recompute the attributions now",
                                layout=w.Layout(width="128px", min_width="128px", height="26px"))
        self.explain.add_class("prunelab-explain")
        self.auto = w.Checkbox(value=state.auto_explain, description="when changes settle", indent=False,
                               layout=w.Layout(width="160px", min_width="160px"))
        self.auto.add_class("prunelab-auto-explain")
        super().__init__(pruner, state, post)
        self.caption.layout.flex = "1 1 auto"
        # The checkbox shows state.auto_explain; a click (on a subshell thread) sets it on the main thread.
        send = post or (lambda key, fn: fn())
        self.auto.observe(lambda c: send("auto", lambda: setattr(state, "auto_explain", c["new"])), "value")
        state.observe(lambda c: setattr(self.auto, "value", c["new"]), "auto_explain")
        state.observe(self._show, ["explanations", "explanations_stale", "explain_error", "auto_explain"])
        self.pacer = Pacer(self._per_class, later, "per-class", ready=self.page_ready)  # drawn when a drag pauses (pacing.py)
        state.observe(self.pacer.request, ["metrics", "baseline"])
        self._show()
        self._per_class()
        self.mount(header=w.HBox([self.caption, self.explain, self.auto], layout=w.Layout(align_items="center")))

    def build(self):
        self.tiles = figure(width=int(self.size[0] * 0.7), height=self.size[1], tools="save", toolbar_location=None,
                            x_axis_location=None, y_axis_location=None, outline_line_color=None, min_border=2,
                            x_range=Range1d(0, 1), y_range=Range1d(0, 1))
        self.tiles.grid.visible = False
        self.input_mapper = LinearColorMapper(palette=tuple(Greys256), low=0, high=1)
        self.attr_mapper = LinearColorMapper(palette=DIVERGING, low=-1, high=1)
        self.inputs_src = ColumnDataSource(dict(image=[], x=[], y=[], dw=[], dh=[]))
        self.attr_src = ColumnDataSource(dict(image=[], x=[], y=[], dw=[], dh=[]))
        self.tiles.image("image", x="x", y="y", dw="dw", dh="dh", source=self.inputs_src,
                         color_mapper=self.input_mapper)
        attr = self.tiles.image("image", x="x", y="y", dw="dw", dh="dh", source=self.attr_src,
                                color_mapper=self.attr_mapper)
        self.tiles.add_tools(HoverTool(renderers=[attr], tooltips=[("attribution / sample max", "@image{+0.00}")]))
        self.bars_src = ColumnDataSource(dict(x=[], y=[], height=[], color=[], label=[]))
        bars = self.tiles.rect(x="x", y="y", width=0.4, height="height", source=self.bars_src, fill_color="color",
                               line_color=None)
        self.tiles.add_tools(HoverTool(renderers=[bars], tooltips=[("", "@label")]))
        self.text_src = ColumnDataSource(dict(x=[], y=[], text=[], color=[]))
        self.tiles.text("x", "y", text="text", source=self.text_src, text_font_size="10px", text_align="center",
                        text_baseline="middle", text_color="color")

        self.classes = figure(width=int(self.size[0] * 0.3), height=self.size[1], tools="save",
                              sizing_mode="stretch_width", min_width=150, max_width=480,
                              toolbar_location=None, title="Δ accuracy per class (pts)",
                              x_range=Range1d(-1, 1), y_range=FactorRange(), min_border=4)
        self.classes.title.text_font_size = "11px"
        self.classes.title.text_font_style = "normal"
        self.class_src = ColumnDataSource(dict(cls=[], delta=[], color=[], now=[], before=[]))
        cls = self.classes.hbar(y="cls", right="delta", height=0.7, source=self.class_src, fill_color="color",
                                line_color=None)
        self.classes.add_tools(HoverTool(renderers=[cls], tooltips=[("class", "@cls"), ("dense", "@before{0.0%}"),
                                                                    ("now", "@now{0.0%}"), ("change", "@delta{+0.0} pts")])
                               )
        self.classes.ygrid.visible = False
        return row(self.tiles, self.classes, sizing_mode="stretch_width", max_width=MAX_WIDTH)

    # -------------------------------------------------------------- attributions

    def _show(self, change=None):
        ex: Explanations | None = self.state.explanations
        if ex is not None and (change is None or change.name == "explanations"):
            images = as_images(ex.inputs, self.image_shape)
            if images is not None:
                self._images(ex, images)
            else:
                self._bars(ex)
        self._caption(ex)

    def _labels(self, ex: Explanations, i: int) -> str:
        names = self.class_names or []
        name = lambda c: names[c] if c < len(names) else str(c)  # noqa: E731
        return name(int(ex.targets[i])), name(int(ex.predicted_original[i])), name(int(ex.predicted_pruned[i]))

    def _images(self, ex: Explanations, inputs: np.ndarray):
        orig = as_images(ex.original, self.image_shape)
        pruned = as_images(ex.pruned, self.image_shape)
        n, h, wd = inputs.shape
        gap = max(2, wd // 3)
        xs = np.arange(n) * (wd + gap)
        scale = np.abs(orig).reshape(n, -1).max(1)
        scale = np.where(scale > 0, scale, 1)
        lo, hi = float(inputs.min()), float(inputs.max())
        self.input_mapper.update(low=lo, high=hi if hi > lo else lo + 1)
        step = h + gap  # each row: a line of text above a tile
        rows_y = [2 * step + gap, step + gap, gap]
        # bokeh draws image row 0 at the bottom: flip so images read top-down
        update_columns(self.inputs_src, image=[np.flipud(im).astype(np.float32) for im in inputs],
                       x=xs.tolist(), y=[rows_y[0]] * n, dw=[wd] * n, dh=[h] * n)
        tiles = [np.flipud(a / s).astype(np.float32) for a, s in zip(orig, scale)] + \
                [np.flipud(a / s).astype(np.float32) for a, s in zip(pruned, scale)]
        update_columns(self.attr_src, image=tiles, x=xs.tolist() * 2, y=[rows_y[1]] * n + [rows_y[2]] * n,
                       dw=[wd] * (2 * n), dh=[h] * (2 * n))
        update_columns(self.bars_src, x=[], y=[], height=[], color=[], label=[])
        text_x, text_y, text, colour = [], [], [], []
        above = [y + h + gap * 0.45 for y in rows_y]
        for i in range(n):
            true, before, after = self._labels(ex, i)
            text_x += [xs[i] + wd / 2] * 4
            text_y += [above[0], above[1], above[2], gap * 0.4]
            text += [f"class {true}", f"→ {before}", f"→ {after}", f"{ex.drift[i]:.2f}"]
            colour += ["#333", "#333" if before == true else "#c0392b", "#333" if after == true else "#c0392b", "#555"]
        left = -wd * 0.9
        text_x += [left] * 4
        text_y += [rows_y[0] + h / 2, rows_y[1] + h / 2, rows_y[2] + h / 2, gap * 0.4]
        text += ["input", "original", "pruned", "drift"]
        colour += ["#555"] * 4
        update_columns(self.text_src, x=text_x, y=text_y, text=text, color=colour)
        self._fit(left - wd * 0.9, float(xs[-1] + wd + gap / 2), 0.0, float(above[0] + gap * 0.6))

    def _fit(self, x0: float, x1: float, y0: float, y1: float):
        """Show the box with square data units (images keep their aspect)."""
        px_w, px_h = self.tiles.width, self.tiles.height
        per_px = max((x1 - x0) / px_w, (y1 - y0) / px_h)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        self.tiles.x_range.update(start=cx - per_px * px_w / 2, end=cx + per_px * px_w / 2)
        self.tiles.y_range.update(start=cy - per_px * px_h / 2, end=cy + per_px * px_h / 2)

    def _bars(self, ex: Explanations):
        """1-D inputs: per sample, the largest attributions as bars (grey original, red/blue pruned)."""
        n = len(ex.original)
        orig = ex.original.reshape(n, -1)
        pruned = ex.pruned.reshape(n, -1)
        features = np.argsort(-np.abs(orig).mean(0))[:MAX_FEATURES]
        features.sort()
        scale = np.abs(orig).max(1)
        scale = np.where(scale > 0, scale, 1)
        x, y, height, color, label = [], [], [], [], []
        for i in range(n):
            base = (n - 1 - i) * 2.4
            for k, f in enumerate(features):
                for dx, value, tint in ((-0.2, orig[i, f], "#9aa4ad"), (0.2, pruned[i, f], None)):
                    v = float(value / scale[i])
                    x.append(k + dx)
                    y.append(base + v / 2)
                    height.append(abs(v))
                    color.append(tint or ("#c0392b" if v >= 0 else "#2e6db4"))
                    label.append(f"sample {ex.samples[i]}, feature {f}: {'original' if tint else 'pruned'} {v:+.2f}")
        update_columns(self.inputs_src, image=[], x=[], y=[], dw=[], dh=[])
        update_columns(self.attr_src, image=[], x=[], y=[], dw=[], dh=[])
        update_columns(self.bars_src, x=x, y=y, height=height, color=color, label=label)
        tx = [-2.0] * n
        ty = [(n - 1 - i) * 2.4 for i in range(n)]
        labels = [f"#{ex.samples[i]} · drift {ex.drift[i]:.2f}" for i in range(n)]
        update_columns(self.text_src, x=tx, y=ty, text=labels, color=["#333"] * n)
        self.tiles.x_range.update(start=-4, end=len(features))
        self.tiles.y_range.update(start=-1.3, end=(n - 1) * 2.4 + 1.3)

    def _caption(self, ex: Explanations | None):
        if self.state.explain_error:
            self.set_caption(f'<span style="color:#c0392b">{html.escape(self.state.explain_error)}</span>')
            return
        if ex is None:
            self.set_caption('<span style="color:#666">IntegratedGradients attributions of a few validation '
                             "samples will appear here.</span>", status="computing…")
            return
        detail = (f'<span style="color:#666">{ex.method} toward the true class (red supports it); '
                  f"explanation drift <b>{ex.mean_drift:.3f}</b> (mean 1 − cosine similarity, original vs "
                  f"pruned at {ex.sparsity:.1%} sparsity)</span>")
        status = ""
        if self.state.explanations_stale:
            status = "stale: updates when changes settle" if self.state.auto_explain else "stale: press Explain now"
        self.set_caption(detail, status=status)

    # -------------------------------------------------------------- per class

    def _per_class(self, change=None):
        m, base = self.state.metrics, self.state.baseline
        if m is None or base is None or not m.per_class:
            return
        names = self.class_names or [str(i) for i in range(len(m.per_class))]
        before, now = np.array(base.per_class), np.array(m.per_class)
        delta = (now - before) * 100
        labels = [names[i] if i < len(names) else str(i) for i in range(len(now))]
        if list(self.class_src.data["cls"]) != labels:
            self.classes.y_range.factors = labels
        update_columns(self.class_src, cls=labels, delta=delta, now=now, before=before,
                       color=["#c0392b" if d < 0 else "#3a9a5b" for d in delta])
        # the axis in steps (1, 2, 5, 10, 20, 50, 100 pts): a drag rarely moves it, so the page
        # rarely re-lays out its ticks
        need = float(np.abs(delta).max()) * 1.1
        span = next((s for s in (1, 2, 5, 10, 20, 50) if s >= need), 100.0)
        self.classes.x_range.update(start=-span, end=span * 0.35 if delta.max() <= 0 else span)
