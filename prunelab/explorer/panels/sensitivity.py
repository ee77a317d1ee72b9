"""The Fine-tune panel's sensitivity part: curves per layer (each layer in its own colour), marks
for the layers' sliders, and an Allocate action.

The analysis is :class:`prunelab.sensitivity.SensitivityJob`, the same job as
``pruner.sensitivity()``: prepared on the main thread, run in the panel's background run (with its
executor), applied on the main thread (the table goes into the Pruner's cache).
"""

from __future__ import annotations

import html
from typing import Callable

import ipywidgets as widgets

from ...core.tables import Table, percent
from ...retrain import resolve_defaults
from ...sensitivity import DEFAULT_SPARSITIES, SensitivityJob, SensitivityTable, allocate
from ..views.metrics import points
from .runner import BackgroundRun

SAFE_DROP = 0.01  # a layer is marked safe up to the highest sparsity within one point of accuracy
# What Allocate aims at: mode -> (button, allocate()'s keyword, slider min, max, step, start, readout format)
TARGETS = {"target": ("sparsity", "target_sparsity", 0.0, 0.99, 0.01, 0.9, ".0%"),
           "flops": ("FLOPs kept", "target_flops", 0.05, 1.0, 0.01, 0.5, ".0%"),
           "params": ("params kept", "target_params", 0.02, 1.0, 0.01, 0.3, ".0%"),
           "drop": ("max drop", "max_drop", 0.0, 0.2, 0.001, 0.01, ".1%")}


def layer_colours(layer_names: list[str]) -> dict[str, str]:
    """A colour per layer, fixed by the layer's position in the model (so a layer keeps its
    colour in every view, whichever layers a view shows).

    Args:
        layer_names: the Pruner's layer names, in order.

    Returns:
        ``{layer: "#rrggbb"}``: Category10 for up to ten layers, else evenly along Turbo256.

    Example:
        >>> layer_colours(["a", "b"])
        {'a': '#1f77b4', 'b': '#ff7f0e'}
    """
    from bokeh.palettes import Category10_10, Turbo256

    if len(layer_names) <= 10:
        palette = list(Category10_10)
    else:
        palette = [Turbo256[int(i * 255 / (len(layer_names) - 1))] for i in range(len(layer_names))]
    return {name: palette[i % len(palette)] for i, name in enumerate(layer_names)}


def fraction_figure(title: str, x_label: str, y_label: str):
    """A small bokeh figure with both axes in percent (x from 0 to 100%).

    Returns:
        A bokeh ``figure``.
    """
    from bokeh.models import NumeralTickFormatter
    from bokeh.plotting import figure

    fig = figure(height=260, width=460, title=title, x_axis_label=x_label, y_axis_label=y_label,
                 toolbar_location=None, x_range=(0, 1))
    fig.xaxis.formatter = NumeralTickFormatter(format="0%")
    fig.yaxis.formatter = NumeralTickFormatter(format="0%")
    return fig


class SensitivitySection(widgets.VBox):
    """Sensitivity curves and allocation for ``pruner``, inside the Fine-tune panel.

    Args:
        pruner: the Pruner.
        runner: the panel's :class:`~prunelab.explorer.panels.runner.BackgroundRun`.
        granularity: the panel's granularity dropdown (shared with iterate).
        post: the panel's ``post(key, fn)`` (clicks run on the kernel's main thread).
        watch: the panel's ``watch(handler, names)`` on its state hub (the marks go stale when the
            weights move; the panel stops watching when it closes).
        executor: a concurrent.futures.Executor for the analysis (e.g. a Dask
            ``client.get_executor()``); default: in the panel's thread.

    Returns:
        The section, an ipywidgets VBox.

    Example:
        >>> section = SensitivitySection(pruner, runner, granularity_dropdown,   # doctest: +SKIP
        ...                              post=panel.post, watch=panel.watch)
        >>> section.start_sensitivity(); runner.wait(); section.table           # doctest: +SKIP
    """

    def __init__(self, pruner, runner: BackgroundRun, granularity: widgets.Dropdown, *,
                 post: Callable[[str, Callable[[], None]], None], watch: Callable[[Callable, str], None],
                 executor=None):
        from bokeh.models import ColumnDataSource
        from jupyter_bokeh.widgets import BokehModel

        self.pruner, self.runner, self.granularity, self.executor = pruner, runner, granularity, executor
        self.colours = layer_colours(pruner.layer_names)
        self.table: SensitivityTable | None = None
        self._table_version: int | None = None
        self._listeners: list[Callable[[SensitivityTable], None]] = []
        style = {"description_width": "70px"}
        self.sparsities = widgets.Text(", ".join(f"{s:g}" for s in DEFAULT_SPARSITIES), description="sparsities",
                                       layout=widgets.Layout(width="360px"), style=style)
        self.button = widgets.Button(description="Analyse sensitivity", icon="line-chart",
                                     layout=widgets.Layout(width="180px"))
        self.marks = widgets.HTML("")
        fig = fraction_figure("accuracy with one layer pruned", "sparsity of that layer", "accuracy")
        self.sources = {}  # layer -> the ColumnDataSource of its curve
        for name, colour in self.colours.items():
            src = ColumnDataSource(dict(sparsity=[], accuracy=[]))
            label = name or "(model)"
            fig.line("sparsity", "accuracy", source=src, color=colour, line_width=2, legend_label=label)
            fig.scatter("sparsity", "accuracy", source=src, color=colour, size=5)
            self.sources[name] = src
        fig.legend.location = "bottom_left"
        fig.legend.label_text_font_size = "8pt"
        self.plot = BokehModel(fig)
        self.plot.layout.display = "none"  # shown with the first curves; until then, what to do
        self.empty = widgets.HTML("<i style='color:#555'>Press <b>Analyse sensitivity</b> to see one accuracy "
                                  "curve per layer (each layer pruned alone), then Allocate from them.</i>")
        self.allocate_mode = widgets.ToggleButtons(options=[(label, mode) for mode, (label, *_r) in TARGETS.items()],
                                                   value="target", style={"button_width": "104px"})  # "params kept" whole
        self.allocate_value = widgets.FloatSlider(value=0.9, min=0.0, max=0.99, step=0.01, readout_format=".0%",
                                                  continuous_update=False)
        self.allocate_button = widgets.Button(description="Allocate", icon="sliders", disabled=True,
                                              tooltip="choose per-layer sparsities from the curves and apply them")
        self.allocate_button.add_class("prunelab-training-allocate")
        self.allocation_html = widgets.HTML("")
        self.why_disabled = widgets.HTML("")  # why Allocate cannot run now, beside it
        self.why_disabled.add_class("prunelab-training-allocate-why")
        self.button.on_click(lambda _: post("training:sensitivity", self.start_sensitivity))
        self.allocate_button.on_click(lambda _: post("training:allocate", self.allocate))
        self.allocate_mode.observe(self._on_allocate_mode, "value")
        runner.on_busy(self.refresh_availability)
        watch(self._on_revision, "revision")
        row = lambda *c: widgets.HBox(list(c), layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        super().__init__([
            widgets.HTML("<b>Sensitivity per layer</b>"),
            row(self.sparsities, self.button),
            row(self.empty, self.plot,
                widgets.VBox([self.marks, self.allocate_mode, row(self.allocate_value, self.allocate_button),
                              self.why_disabled, self.allocation_html])),
        ])
        self.refresh_availability()

    def refresh_availability(self) -> None:
        """Enable the buttons that can run now (none while the panel is busy)."""
        self.button.disabled = self.runner.busy
        self.allocate_button.disabled = self.runner.busy or self.table is None
        why = (f"Allocate waits: {self.runner.job} is running." if self.runner.busy else
               "Allocate needs sensitivity curves: press Analyse sensitivity first." if self.table is None else "")
        self.allocate_button.tooltip = why or "choose per-layer sparsities from the curves and apply them"
        self.why_disabled.value = f"<span style='color:#555; font-size:11px'>{html.escape(why)}</span>" if why else ""

    def _on_revision(self, _change):
        if self.table is not None and self._table_version != self.pruner.weights_version:
            self.marks.value = self._marks_html(stale=True)

    def _on_allocate_mode(self, change):
        _label, _keyword, low, high, step, value, fmt = TARGETS[change["new"]]
        slider = self.allocate_value
        slider.min, slider.max = 0.0, 1.0  # widen first, so the new range always fits the old value
        slider.step, slider.value, slider.min, slider.max = step, value, low, high
        slider.readout_format = fmt

    def start_sensitivity(self) -> None:
        """Measure the sensitivity curves in the background (with the panel's executor), for the
        criterion in effect and the panel's granularity."""
        self.runner.check_idle()
        try:
            sparsities = [float(v) for v in self.sparsities.value.replace(";", ",").split(",") if v.strip()]
            criterion = resolve_defaults(self.pruner)[0]
            job = SensitivityJob(self.pruner, sparsities, None, criterion, self.granularity.value,
                                 self.executor).prepare()
        except ValueError as e:
            self.runner.say(f"sensitivity: {e}" if "could not convert" not in str(e) else
                            "sensitivity: sparsities must be fractions separated by commas, e.g. 0.5, 0.8, 0.9",
                            error=True)
            return

        def done(_):
            self.show_sensitivity(job.apply(), job.version)
            return f"sensitivity of {len(job.layers)} layers measured"

        self.runner.start("sensitivity analysis", lambda hooks, post: job.run(hooks), done, len(job.layers))

    def show_sensitivity(self, table: SensitivityTable, version: int | None = None) -> None:
        """Draw a sensitivity table (one curve per layer, in the layer's colour) and mark layers.

        Args:
            table: the curves.
            version: the Pruner's ``weights_version`` they were measured at (default: now).
        """
        self.table = table
        self._table_version = self.pruner.weights_version if version is None else version
        for name, src in self.sources.items():
            if name in table.layers:
                s, _ = table.curve(name)
                acc = [r["accuracy"] for r in sorted((r for r in table if r["layer"] == name),
                                                      key=lambda r: r["sparsity"])]
                src.data = dict(sparsity=[0.0] + s, accuracy=[table.baseline] + acc)
            else:
                src.data = dict(sparsity=[], accuracy=[])
        self.marks.value = self._marks_html()
        self.empty.layout.display = "none"
        self.plot.layout.display = None
        self.refresh_availability()
        for cb in list(self._listeners):
            cb(table)

    @property
    def safe_marks(self) -> dict[str, dict]:
        """Per analysed layer: its colour and the highest measured sparsity within one point of
        accuracy, for marking the explorer's per-layer sliders."""
        if self.table is None:
            return {}
        safe = self.table.tolerable(SAFE_DROP)
        return {n: dict(colour=self.colours[n], safe_sparsity=s) for n, s in safe.items()}

    def on_sensitivity(self, callback: Callable[[SensitivityTable], None]) -> None:
        """Call ``callback(table)`` whenever new sensitivity curves are shown."""
        self._listeners.append(callback)

    def _marks_html(self, stale: bool = False) -> str:
        items = []
        for name, mark in self.safe_marks.items():
            swatch = f"<span style='display:inline-block;width:10px;height:10px;background:{mark['colour']}'></span>"
            items.append(f"<li>{swatch} <b>{html.escape(name)}</b>: within 1 pt up to {mark['safe_sparsity']:.0%}</li>")
        note = "<p><i>measured before the last weight change; analyse again</i></p>" if stale else ""
        return f"<ul style='margin:0;padding-left:1em'>{''.join(items)}</ul>{note}"

    def allocate(self):
        """Apply per-layer sparsities chosen from the curves (on the main thread: cheap).

        Returns:
            The :class:`prunelab.sensitivity.Allocation`, or None when it could not run (said in
            the status line).
        """
        if self.table is None:
            self.runner.say("analyse sensitivity first", error=True)
            return None
        value = self.allocate_value.value
        try:
            keyword = TARGETS[self.allocate_mode.value][1]
            result = allocate(self.pruner, table=self.table, **{keyword: value})
        except ValueError as e:
            self.runner.say(f"allocate: {e}", error=True)
            return None
        self.allocation_html.value = allocation_html(result)
        kept = "".join(f"; {what} kept {v:.1%}" for what, v in (("FLOPs", result.flops_kept),
                                                               ("params", result.params_kept)) if v is not None)
        self.runner.say(f"allocated: accuracy {result.accuracy:.1%} measured jointly ({points(-result.drop)} vs dense); "
                        f"the single-layer changes sum to {points(-result.predicted_drop)}{kept}")
        return result


def allocation_html(result) -> str:
    """An Allocation as HTML with accuracy changes in the explorer's one format (``points``:
    "-28.9 pts", negative for accuracy lost), as the readout shows them.

    Args:
        result: a :class:`prunelab.sensitivity.Allocation`.

    Returns:
        The table and a line with the joint measurement.
    """
    rows = [dict(layer=n, sparsity=s, change=-result.single_drops[n]) for n, s in result.sparsities.items()]
    table = Table(("layer", "sparsity", "change"), rows, title="allocation",
                  headers={"change": "accuracy change, that layer alone"},
                  formats={"sparsity": percent(1), "change": points})
    return table._repr_html_() + (
        f"<p>single-layer changes sum to {points(-result.predicted_drop)}; measured jointly: accuracy "
        f"{result.accuracy:.2%} ({points(-result.drop)} vs dense {result.baseline:.2%}) at "
        f"{result.overall_sparsity:.1%} overall sparsity</p>")
