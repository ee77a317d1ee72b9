"""Metrics: the measured numbers of the current state, and the accuracy/sparsity trace of every
state visited in this session, with the dense baseline."""

from __future__ import annotations

import html

import ipywidgets as w
from bokeh.models import ColumnDataSource, HoverTool, Label, Legend, LegendItem, NumeralTickFormatter, Range1d, Span
from bokeh.plotting import figure

from ...core.checks import GRANULARITIES
from ...core.metrics import Metrics
from ...core.tables import points  # the one format for drops (re-exported for the panels)
from .base import CRITERION_COLOURS, FONT, View, update_columns
from .pacing import READOUT_S, Pacer

COLOURS = {**CRITERION_COLOURS, "mixed": "#7f7f7f"}  # a state whose layers differ is "mixed"
MARKERS = {**dict(zip(GRANULARITIES, ("circle", "square", "triangle", "inverted_triangle"))), "mixed": "diamond"}


def si(n: float, unit: str = "") -> str:
    """A number with an SI prefix, 3 significant digits (the readout's and the controls' sizes).

    Args:
        n: the number. unit: appended after the prefix ("B" for bytes).

    Returns:
        The text, e.g. ``'1.23 MB'``.

    Example:
        >>> si(1234567, "B")
        '1.23 MB'
    """
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


def format_value(m: Metrics, value: float) -> str:
    return f"{value:.1%}" if m.metric_name == "accuracy" else f"{value:.4g}"


def measured_on(m: Metrics) -> str:
    """What ``m`` was measured on, e.g. ``'on 24 of 1,000 validation samples, refining'`` for a
    first answer (``m.complete`` False), ``'on 1,000 validation samples'`` once complete.

    Example:
        >>> measured_on(pruner.evaluate(time_budget=0.15))   # a big model's first answer
        'on 24 of 1,000 validation samples, refining'
    """
    if m.complete:
        return f"on {m.samples:,} {m.data} samples"
    data = m.data.replace(f" (subset of {m.of})", "")  # part of the samples is said as "N of M"
    return f"on {m.samples:,} of {m.of:,} {data} samples, refining"


def nb(text: str) -> str:
    """``text`` with non-breaking spaces: "100 k" never wraps between the number and its prefix."""
    return text.replace(" ", "\u00a0")


def readout_html(m: Metrics, baseline: Metrics | None, sparsity: float) -> str:
    """The numbers of one state, densely: accuracy first (as "NN.N%"), what it was measured on
    (a first answer on part of the samples says so, and is drawn lighter until complete)."""
    acc = format_value(m, m.accuracy)
    where = html.escape(measured_on(m))
    if not m.complete:
        where = f'<span class="prunelab-refining">{where}</span>'
    if m.accuracy_interval is not None:
        lo, hi = m.accuracy_interval
        where = f"95% CI {lo:.1%}–{hi:.1%}, " + where
    delta = ""
    if baseline is not None:
        d = m.accuracy - baseline.accuracy
        pts = points(d) if m.metric_name == "accuracy" else f"{d:+.4g}"
        colour = "#c0392b" if d < -1e-9 else ("#3a9a5b" if d > 1e-9 else "#666")
        partial = "" if baseline.complete else f" ({baseline.samples:,} of {baseline.of:,} samples so far)"
        delta = (f' · <span style="color:{colour}">{pts}</span> vs dense '
                 f"{format_value(baseline, baseline.accuracy)}{partial}")
    loss = f"{m.loss:.4f}" if m.loss is not None else "–"
    cell = 'style="padding:0 14px 0 0; vertical-align:top"'
    small = 'style="color:#666; font-size:11px"'
    return (
        f'<div style="{FONT}"><table style="border-collapse:collapse"><tr>'
        f'<td {cell}><span style="font-size:22px; font-weight:600{"" if m.complete else "; color:#777"}" '
        f'class="prunelab-accuracy">{acc}</span> '
        f'{html.escape(m.metric_name)}<br><span {small}>{where}{delta}</span></td>'
        f"<td {cell}>loss <b>{loss}</b><br><span {small}>sparsity <b>{sparsity:.1%}</b> of prunable weights</span></td>"
        f"<td {cell}>params <b>{m.nonzero_params:,}</b> nonzero of {m.params:,}<br>"
        f"<span {small}>{m.compression_ratio:.2f}× compression</span></td>"
        f"<td {cell}>memory <b>{nb(si(m.dense_bytes, 'B'))}</b> dense → <b>{nb(si(m.sparse_bytes, 'B'))}</b> sparse<br>"
        f"<span {small}>fp32 values + 1-bit mask</span></td>"
        f"<td {cell}>FLOPs <b>{nb(si(m.flops))}</b> → <b>{nb(si(m.nonzero_flops))}</b> per sample<br>"
        f"<span {small}><b>{m.theoretical_speedup:.2f}×</b> theoretical speedup</span></td>"
        "</tr></table></div>"
    )


def state_kind(plans) -> tuple[str, str]:
    """(criterion, granularity) of a pruning state, 'mixed' where layers differ."""
    crits = {p.criterion for p in plans.values()}
    grans = {p.granularity for p in plans.values()}
    pick = lambda s, default: next(iter(s)) if len(s) == 1 else ("mixed" if s else default)  # noqa: E731
    return pick(crits, "magnitude"), pick(grans, "unstructured")


class MetricsView(View):
    """``readout`` is the numbers (an HTML widget with the class prunelab-metrics); ``widget`` is
    the trace of accuracy against sparsity over every state visited."""

    title = "Accuracy vs sparsity (every state visited)"
    slug = "trace"  # .prunelab-metrics belongs to the readout alone

    def __init__(self, pruner, state, width: int = 330, height: int = 380, post=None, later=None):
        self.size = (width, height)
        self.readout = w.HTML()
        self.readout.add_class("prunelab-metrics")
        self._seen: set = set()
        self._new_points: dict[str, list] = {}  # states visited since the trace last drew
        super().__init__(pruner, state, post)
        # The readout follows the measurement itself, before the views patch on "revision": the
        # page handles messages in order, so the numbers show without waiting for the plots.
        # During a drag it shows the latest state at most twenty times a second; the trace (every
        # state visited is kept, drawn in one go) draws when the drag pauses, like the heavy views.
        self.readout_pacer = Pacer(self._update_readout, later, "readout", interval=READOUT_S, settle=0.0)
        self.pacer = Pacer(self._draw, later, "trace", ready=self.page_ready)
        state.observe(self.readout_pacer.request, "metrics")
        state.observe(self._update, ["revision", "metrics"])  # a first answer, then each refinement
        state.observe(self._baseline, "baseline")
        self._baseline()
        self._update()
        self.mount()

    def build(self):
        # sparsity lies in 0..1: a fixed x range (a little room for the ring at 0%) the page never re-fits
        self.fig = figure(width=self.size[0], height=self.size[1], tools="pan,wheel_zoom,box_zoom,reset,save",
                          toolbar_location="above", x_axis_label="sparsity (prunable weights)",
                          y_axis_label="accuracy", min_border=4, x_range=Range1d(-0.04, 1.02))
        self.fig.toolbar.logo = None
        self.fig.xaxis.formatter = NumeralTickFormatter(format="0%")
        self.fig.yaxis.formatter = NumeralTickFormatter(format="0.0%")
        self.base_line = Span(location=0, dimension="width", line_color="#555", line_dash="dotted", line_width=1.5,
                              visible=False)
        self.base_label = Label(x=0, y=0, x_offset=10, y_offset=1, text="", text_font_size="10px", text_color="#555",
                                visible=False)  # right of the ring at 0%, above the line
        self.fig.add_layout(self.base_line)
        self.fig.add_layout(self.base_label)
        self.points = {}
        renderers = []
        for crit, colour in COLOURS.items():
            src = ColumnDataSource(dict(sparsity=[], accuracy=[], marker=[], granularity=[], criterion=[]))
            r = self.fig.scatter("sparsity", "accuracy", marker="marker", source=src, size=7, fill_color=colour,
                                 line_color=colour, fill_alpha=0.55, visible=False)
            self.points[crit] = (src, r)
            renderers.append(r)
        self.legend = Legend(items=[], location="bottom_left", label_text_font_size="10px",
                             background_fill_alpha=0.6, click_policy="hide")
        self.fig.add_layout(self.legend)
        self.fig.add_tools(HoverTool(renderers=renderers, tooltips=[("sparsity", "@sparsity{0.0%}"),
                                                                    ("accuracy", "@accuracy{0.0%}"),
                                                                    ("", "@criterion · @granularity")]))
        self.current = ColumnDataSource(dict(sparsity=[], accuracy=[], low=[], high=[]))
        self.fig.segment("sparsity", "low", "sparsity", "high", source=self.current, line_color="#111", line_width=2)
        self.fig.scatter("sparsity", "accuracy", source=self.current, size=13, fill_color=None, line_color="#111",
                         line_width=2)
        return self.fig

    def _baseline(self, change=None):
        base = self.state.baseline
        if base is None:
            return
        self.base_line.update(location=base.accuracy, visible=True)
        self.base_label.update(y=base.accuracy, text=f"dense {format_value(base, base.accuracy)}", visible=True)
        if base.metric_name != "accuracy":
            self.fig.yaxis.axis_label = base.metric_name
            self.fig.yaxis.formatter.format = "0.000"

    def _update_readout(self, change=None):
        if self.state.metrics is not None:
            self.readout.value = readout_html(self.state.metrics, self.state.baseline, self.pruner.overall_sparsity())

    def _update(self, change=None):
        """A new state or a fuller measurement of it: the current marker follows (with its 95%
        interval); the state is noted as visited once measured whole (every one, however fast they
        come; a first answer dropped by a newer move is not), drawn paced."""
        m = self.state.metrics
        if m is None:
            return
        sparsity = self.pruner.overall_sparsity()
        self.readout_pacer.request()
        crit, gran = state_kind(self.pruner.plans)
        key = (round(sparsity, 6), round(m.accuracy, 6), crit, gran)
        if m.complete and key not in self._seen:
            self._seen.add(key)
            self._new_points.setdefault(crit, []).append((sparsity, m.accuracy, gran))
        lo, hi = m.accuracy_interval or (m.accuracy, m.accuracy)
        self._current = dict(sparsity=[sparsity], accuracy=[m.accuracy], low=[lo], high=[hi])
        self.pacer.request()

    def _draw(self):
        """Stream the states visited since the last draw (one patch per criterion) and move the
        marker of the current state."""
        points, self._new_points = self._new_points, {}
        for crit, rows in points.items():
            src, r = self.points[crit]
            sparsity, accuracy, gran = zip(*rows)
            src.stream(dict(sparsity=list(sparsity), accuracy=list(accuracy), marker=[MARKERS[g] for g in gran],
                            granularity=list(gran), criterion=[crit] * len(rows)))
            if not r.visible:  # the legend lists the criteria that have points
                r.visible = True
                self.legend.items = [*self.legend.items, LegendItem(label=crit, renderers=[r])]
        if getattr(self, "_current", None) is not None:
            update_columns(self.current, **self._current)

    @property
    def visited(self) -> int:
        """Number of distinct states on the trace."""
        return len(self._seen)
