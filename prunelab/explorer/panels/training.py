"""The retraining panel: fine-tune, iterate toward a target, sensitivity curves, allocate.

Long work runs in a background thread on a private copy of the model (a Snapshot taken on the
kernel's main thread when the run starts), so it never races the explorer's evaluations of the
Pruner's own model. Results come back to the main thread through the asyncio loop captured there
(``loop.call_soon_threadsafe``) and are applied with ``set_weights``/``set_plans``: the Pruner's
listeners (the explorer's sliders and views) then update as after any other change.

Cancel stops the run between batches. A fine-tune then leaves the Pruner unchanged; an
iteration leaves it at its last completed step (each step is applied as it completes). A
fine-tune applies the masks it trained with, so a slider moved during the run is set back.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Callable

import ipywidgets as widgets

from ..background import MainThread
from ..bokeh_loader import load_bokehjs
from ...sensitivity import DEFAULT_SPARSITIES, SensitivityTable, analysed_layers, allocate, cache_key, measure
from ...retrain.training import (SCHEDULES, Batches, Cancelled, Hooks, IterateSettings, Snapshot, check_optimizer,
                         finetune_snapshot, history_table, resolve_defaults, run_iterate)

PROGRESS_INTERVAL = 0.1  # seconds between progress updates sent to the browser


def layer_colours(layer_names: list[str]) -> dict[str, str]:
    """A colour per layer, fixed by the layer's position in the model (so a layer keeps its
    colour in every view, whichever layers a view shows)."""
    from bokeh.palettes import Category10_10, Turbo256

    if len(layer_names) <= 10:
        palette = list(Category10_10)
    else:
        palette = [Turbo256[int(i * 255 / (len(layer_names) - 1))] for i in range(len(layer_names))]
    return {name: palette[i % len(palette)] for i, name in enumerate(layer_names)}


def _figure(title: str, x_label: str, y_label: str):
    from bokeh.models import NumeralTickFormatter
    from bokeh.plotting import figure

    fig = figure(height=260, width=460, title=title, x_axis_label=x_label, y_axis_label=y_label,
                 toolbar_location=None, x_range=(0, 1))
    fig.xaxis.formatter = NumeralTickFormatter(format="0%")
    fig.yaxis.formatter = NumeralTickFormatter(format="0%")
    return fig


class TrainingPanel(widgets.VBox):
    """Retrain and allocate, for ``pruner``: fine-tune, iterate toward a target sparsity (with a
    progress bar and a cancel button), the iteration history as a table and a curve, sensitivity
    curves per layer (each layer in its own colour) and an Allocate action.

    ``executor``: a concurrent.futures.Executor for the sensitivity analysis (e.g. a Dask
    ``client.get_executor()``); default: in the panel's thread.
    """

    def __init__(self, pruner, *, executor=None):
        load_bokehjs()
        self.pruner = pruner
        self.executor = executor
        self.colours = layer_colours(pruner.layer_names)
        self.history = history_table()
        self.sensitivity_table: SensitivityTable | None = None
        self._table_version: int | None = None
        self._sensitivity_listeners: list[Callable[[SensitivityTable], None]] = []
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        # Built here, in the cell that made the panel: the kernel's main thread. Button clicks
        # arrive on a subshell thread (JupyterLab 4.6, ipykernel 7) and are posted through it.
        self._main = MainThread()
        self._last_progress = 0.0
        self._job = ""
        self.last_error: BaseException | None = None
        _, granularity = resolve_defaults(pruner, None, None)
        layout = widgets.Layout(width="150px")
        style = {"description_width": "70px"}

        # fine-tune
        self.epochs = widgets.BoundedIntText(5, min=1, max=10_000, description="epochs", layout=layout, style=style)
        self.lr = widgets.BoundedFloatText(1e-3, min=1e-7, max=10.0, step=1e-4, description="lr", layout=layout,
                                           style=style)
        self.optimizer = widgets.Dropdown(options=["adam", "adamw", "sgd"], value="adam", description="optimizer",
                                          layout=widgets.Layout(width="170px"), style=style)
        self.finetune_button = widgets.Button(description="Fine-tune", icon="play", button_style="primary",
                                              tooltip="retrain with the current masks held")
        # iterate
        self.target = widgets.FloatSlider(value=0.9, min=0.05, max=0.99, step=0.01, description="target",
                                          readout_format=".0%", continuous_update=False, style=style)
        self.granularity = widgets.Dropdown(options=["unstructured", "structured"],
                                            value=granularity if granularity == "structured" else "unstructured",
                                            description="granularity", layout=widgets.Layout(width="230px"),
                                            style={"description_width": "80px"})
        self.schedule = widgets.Dropdown(options=list(SCHEDULES), value="agp", description="schedule",
                                         layout=widgets.Layout(width="170px"), style=style)
        self.steps = widgets.BoundedIntText(10, min=1, max=1000, description="steps", layout=layout, style=style)
        self.epochs_per_step = widgets.BoundedIntText(4, min=0, max=1000, description="epochs/step", layout=layout,
                                                      style=style)
        self.final_epochs = widgets.BoundedIntText(10, min=0, max=10_000, description="then", layout=layout,
                                                   style=style)
        self.regrow = widgets.FloatSlider(value=0.0, min=0.0, max=0.5, step=0.05, description="regrow",
                                          readout_format=".0%", continuous_update=False, style=style,
                                          tooltip="fraction of kept weights swapped each step for the pruned ones "
                                                  "with the largest gradients (RigL)")
        self.iterate_button = widgets.Button(description="Iterate", icon="forward", button_style="primary",
                                             tooltip="prune a little, fine-tune, repeat, up to the target")
        # progress
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="", layout=widgets.Layout(width="300px"))
        self.status = widgets.HTML("")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        # history
        self.history_html = widgets.HTML(self.history._repr_html_())
        self._history_source, history_fig = self._history_figure()
        # sensitivity and allocation
        self.sparsities = widgets.Text(", ".join(f"{s:g}" for s in DEFAULT_SPARSITIES), description="sparsities",
                                       layout=widgets.Layout(width="360px"), style=style)
        self.sensitivity_button = widgets.Button(description="Analyse sensitivity", icon="line-chart",
                                                 layout=widgets.Layout(width="180px"))
        self.marks = widgets.HTML("")
        self._sensitivity_sources, sensitivity_fig = self._sensitivity_figure()
        self.allocate_mode = widgets.ToggleButtons(options=[("target sparsity", "target"), ("max drop", "drop")],
                                                   value="target", style={"button_width": "110px"})
        self.allocate_value = widgets.FloatSlider(value=0.9, min=0.0, max=0.99, step=0.01, readout_format=".0%",
                                                  continuous_update=False)
        self.allocate_button = widgets.Button(description="Allocate", icon="sliders", disabled=True,
                                              tooltip="choose per-layer sparsities from the curves and apply them")
        self.allocation_html = widgets.HTML("")

        from jupyter_bokeh.widgets import BokehModel

        self.history_plot = BokehModel(history_fig)
        self.sensitivity_plot = BokehModel(sensitivity_fig)
        self.finetune_button.on_click(lambda _: self._main.post(lambda: self.start_finetune()))
        self.iterate_button.on_click(lambda _: self._main.post(lambda: self.start_iterate()))
        self.sensitivity_button.on_click(lambda _: self._main.post(lambda: self.start_sensitivity()))
        self.allocate_button.on_click(lambda _: self._main.post(lambda: self.allocate()))
        self.cancel_button.on_click(lambda _: self._main.post(lambda: self.cancel()))
        self.allocate_mode.observe(self._on_allocate_mode, "value")
        self._unsubscribe = pruner.on_change(self._on_pruner_change)

        row = lambda *c: widgets.HBox(list(c), layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        section = lambda text: widgets.HTML(f"<b>{html.escape(text)}</b>")
        self._run_buttons = [self.finetune_button, self.iterate_button, self.sensitivity_button]
        super().__init__([
            section("Fine-tune (masks held)"),
            row(self.epochs, self.lr, self.optimizer, self.finetune_button),
            section("Iterate toward a target"),
            row(self.target, self.granularity, self.schedule),
            row(self.steps, self.epochs_per_step, self.final_epochs, self.regrow, self.iterate_button),
            row(self.progress, self.cancel_button, self.status),
            row(self.history_plot, self.history_html),
            section("Sensitivity per layer"),
            row(self.sparsities, self.sensitivity_button),
            row(self.sensitivity_plot, widgets.VBox([self.marks, self.allocate_mode,
                                                     row(self.allocate_value, self.allocate_button),
                                                     self.allocation_html])),
        ])
        self.add_class("prunelab-training")
        for widget, name in ((self.finetune_button, "finetune"), (self.iterate_button, "iterate"),
                             (self.cancel_button, "cancel"), (self.progress, "progress"), (self.status, "status"),
                             (self.allocate_button, "allocate")):
            widget.add_class(f"prunelab-training-{name}")
        self._refresh_availability()

    # ------------------------------------------------------------------ figures

    def _history_figure(self):
        from bokeh.models import ColumnDataSource

        source = ColumnDataSource(dict(step=[], sparsity=[], before=[], after=[]))
        fig = _figure("accuracy per step", "sparsity", "accuracy")
        fig.line("sparsity", "after", source=source, color="#1f77b4", line_width=2, legend_label="after fine-tuning")
        fig.scatter("sparsity", "after", source=source, color="#1f77b4", size=6)
        fig.scatter("sparsity", "before", source=source, color="#d62728", marker="x", size=8,
                    legend_label="after pruning, before fine-tuning")
        fig.legend.location = "bottom_left"
        fig.legend.label_text_font_size = "8pt"
        return source, fig

    def _sensitivity_figure(self):
        from bokeh.models import ColumnDataSource

        fig = _figure("accuracy with one layer pruned", "sparsity of that layer", "accuracy")
        sources = {}
        for name, colour in self.colours.items():
            src = ColumnDataSource(dict(sparsity=[], accuracy=[]))
            label = name or "(model)"
            fig.line("sparsity", "accuracy", source=src, color=colour, line_width=2, legend_label=label)
            fig.scatter("sparsity", "accuracy", source=src, color=colour, size=5)
            sources[name] = src
        fig.legend.location = "bottom_left"
        fig.legend.label_text_font_size = "8pt"
        return sources, fig

    # ------------------------------------------------------------------ state

    @property
    def busy(self) -> bool:
        """True while a run is in progress (until its results are applied on the main thread)."""
        return bool(self._job)

    def _refresh_availability(self):
        no_data = self.pruner.train_data is None
        for b in self._run_buttons:
            b.disabled = self.busy
        if no_data:
            self.finetune_button.disabled = self.iterate_button.disabled = True
            self.finetune_button.tooltip = self.iterate_button.tooltip = \
                "needs training data: create the Pruner (or explorer) with train_data=..."
        self.cancel_button.disabled = not self.busy
        self.allocate_button.disabled = self.busy or self.sensitivity_table is None

    def _on_pruner_change(self):
        if self.sensitivity_table is not None and self._table_version != self.pruner.weights_version:
            self.marks.value = self._marks_html(stale=True)

    def _on_allocate_mode(self, change):
        if change["new"] == "target":
            self.allocate_value.max, self.allocate_value.step, self.allocate_value.value = 0.99, 0.01, 0.9
            self.allocate_value.readout_format = ".0%"
        else:
            self.allocate_value.max, self.allocate_value.step, self.allocate_value.value = 0.2, 0.001, 0.01
            self.allocate_value.readout_format = ".1%"

    def _say(self, text: str, error: bool = False):
        colour = "#b00020" if error else "inherit"
        self.status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    # ------------------------------------------------------------------ running in the background

    def _start(self, job: str, work: Callable[[Hooks, Callable], object], done: Callable[[object], str], total: int):
        """Run ``work(hooks, post)`` in a thread (``post(fn)`` runs ``fn`` on the main thread);
        ``done(result)`` then runs on the main thread and returns the message to show."""
        if self.busy:
            raise RuntimeError(f"the panel is busy ({self._job}); cancel it or wait.")
        main = self._main
        self._cancel = threading.Event()
        self._job = job
        self.last_error = None
        self.progress.max, self.progress.value, self.progress.bar_style = max(total, 1), 0, "info"
        self._say(f"{job}...")
        self._refresh_availability()
        hooks = Hooks(progress=self._progress_from_thread, cancel=self._cancel)

        def run():
            try:
                result = work(hooks, main.post)
            except Cancelled:
                main.post(lambda: self._finish(f"{job} cancelled", "warning"))
            except BaseException as e:  # shown in the panel; the thread must not die silently
                main.post(lambda e=e: self._fail(job, e))
            else:
                main.post(lambda: self._complete(job, done, result))

        self._thread = threading.Thread(target=run, name=f"prunelab {job}", daemon=True)
        self._thread.start()

    def _progress_from_thread(self, done: int, total: int, what: str):
        now = time.monotonic()
        if done < total and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        self._main.post(lambda: self._show_progress(done, total, what))

    def _show_progress(self, done: int, total: int, what: str):
        if self.busy:
            self.progress.max, self.progress.value = max(total, 1), done
            self._say(what)

    def _complete(self, job, done, result):
        try:
            message = done(result)
        except BaseException as e:
            self._fail(job, e)
            return
        self._finish(message or f"{job} done", "success")

    def _fail(self, job: str, error: BaseException):
        self.last_error = error
        self._finish(f"{job} failed: {error}", "danger", error=True)

    def _finish(self, message: str, style: str, error: bool = False):
        self._job = ""
        self.progress.bar_style = style
        if style == "success":
            self.progress.value = self.progress.max
        self._say(message, error=error)
        self._refresh_availability()

    def cancel(self):
        """Stop the run between two batches."""
        self._cancel.set()
        if self.busy:
            self._say(f"cancelling {self._job}...")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run finishes, then apply its results here (for scripts and tests: in a
        notebook they apply by themselves). Returns False on timeout."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        if self._main is not None:
            self._main.drain()
        return True

    # ------------------------------------------------------------------ actions

    def start_finetune(self):
        """Fine-tune with the settings in the panel, in the background."""
        epochs, lr, optimizer = self.epochs.value, self.lr.value, self.optimizer.value
        try:
            check_optimizer(optimizer, lr)
            snap = Snapshot.of(self.pruner)
            total = epochs * len(Batches(snap.train_data, 32, self.pruner.device))
        except (ValueError, TypeError) as e:
            self._say(str(e), error=True)
            return
        before = self.pruner.evaluate().accuracy

        def work(hooks, post):
            return finetune_snapshot(snap, epochs, lr=lr, optimizer=optimizer, batch_size=32, hooks=hooks)

        def done(result):
            weights, _ = result
            self.pruner.set_plans(snap.all_plans(), weights=weights)
            after = self.pruner.evaluate().accuracy
            return f"fine-tuned {epochs} epochs: accuracy {before:.1%} -> {after:.1%}"

        self._start("fine-tuning", work, done, total)

    def start_iterate(self):
        """Iterate toward the target with the settings in the panel, in the background."""
        criterion, _ = resolve_defaults(self.pruner, None, None)
        settings = IterateSettings(self.target.value, self.steps.value, self.epochs_per_step.value,
                                   self.schedule.value, criterion, self.granularity.value, self.regrow.value,
                                   self.final_epochs.value, 1e-3, "adam", 32)
        try:
            settings.check(self.pruner.layer_names)
            snap = Snapshot.of(self.pruner)
            total = settings.total_epochs * len(Batches(snap.train_data, 32, self.pruner.device))
        except (ValueError, TypeError) as e:
            self._say(str(e), error=True)
            return
        self.history = history_table()
        self.history_html.value = self.history._repr_html_()
        self._history_source.data = dict(step=[], sparsity=[], before=[], after=[])

        def work(hooks, post):
            def apply(plans, weights, row):  # called in the thread; applied on the main thread
                post(lambda: self._apply_step(plans, weights, row))

            return run_iterate(snap.pruner(), settings, apply, hooks, snap.layer_names,
                               on_start=lambda row: apply(None, None, row))

        def done(history):
            last = history[-1]
            return f"reached {last['sparsity']:.1%} sparsity, accuracy {last['accuracy_after']:.1%}"

        self._start("iterating", work, done, total)

    def _apply_step(self, plans, weights, row):
        if weights is not None:
            self.pruner.set_plans(plans, weights=weights)
        self.history.append(row)
        self.history_html.value = self.history._repr_html_()
        self._history_source.stream(dict(step=[row["step"]], sparsity=[row["sparsity"]],
                                         before=[row["accuracy_before"]], after=[row["accuracy_after"]]))

    def start_sensitivity(self):
        """Measure the sensitivity curves in the background (with the panel's executor)."""
        try:
            sparsities = [float(v) for v in self.sparsities.value.replace(";", ",").split(",") if v.strip()]
            granularity = self.granularity.value
            layers = analysed_layers(self.pruner, None, granularity)
            from ...sensitivity import _check_sparsities

            sparsities = _check_sparsities(sparsities)
        except ValueError as e:
            self._say(f"sensitivity: {e}" if "could not convert" not in str(e) else
                      "sensitivity: sparsities must be fractions separated by commas, e.g. 0.5, 0.8, 0.9", error=True)
            return
        criterion = resolve_defaults(self.pruner, None, None)[0]
        key = cache_key(self.pruner, sparsities, layers, criterion, granularity)
        version = self.pruner.weights_version
        snap = Snapshot.of(self.pruner)

        def work(hooks, post):
            return measure(snap, sparsities, layers, criterion, granularity, self.executor, hooks)

        def done(table):
            from ...sensitivity import _cache

            _cache(self.pruner)[key] = table
            self.show_sensitivity(table, version)
            return f"sensitivity of {len(layers)} layers measured"

        self._start("sensitivity analysis", work, done, len(layers))

    def show_sensitivity(self, table: SensitivityTable, version: int | None = None):
        """Draw a sensitivity table (one curve per layer, in the layer's colour) and mark layers."""
        self.sensitivity_table = table
        self._table_version = self.pruner.weights_version if version is None else version
        for name, src in self._sensitivity_sources.items():
            if name in table.layers:
                s, _ = table.curve(name)
                acc = [r["accuracy"] for r in sorted((r for r in table if r["layer"] == name),
                                                      key=lambda r: r["sparsity"])]
                src.data = dict(sparsity=[0.0] + s, accuracy=[table.baseline] + acc)
            else:
                src.data = dict(sparsity=[], accuracy=[])
        self.marks.value = self._marks_html()
        self._refresh_availability()
        for cb in list(self._sensitivity_listeners):
            cb(table)

    @property
    def sensitivity_marks(self) -> dict[str, dict]:
        """Per analysed layer: its colour and the highest measured sparsity within one point of
        accuracy, for marking the explorer's per-layer sliders."""
        if self.sensitivity_table is None:
            return {}
        safe = self.sensitivity_table.tolerable(0.01)
        return {n: dict(colour=self.colours[n], safe_sparsity=s) for n, s in safe.items()}

    def on_sensitivity(self, callback: Callable[[SensitivityTable], None]) -> None:
        """Call ``callback(table)`` whenever new sensitivity curves are shown."""
        self._sensitivity_listeners.append(callback)

    def _marks_html(self, stale: bool = False) -> str:
        items = []
        for name, mark in self.sensitivity_marks.items():
            swatch = f"<span style='display:inline-block;width:10px;height:10px;background:{mark['colour']}'></span>"
            items.append(f"<li>{swatch} <b>{html.escape(name)}</b>: within 1 pt up to {mark['safe_sparsity']:.0%}</li>")
        note = "<p><i>measured before the last weight change; analyse again</i></p>" if stale else ""
        return f"<ul style='margin:0;padding-left:1em'>{''.join(items)}</ul>{note}"

    def allocate(self):
        """Apply per-layer sparsities chosen from the curves (on the main thread: cheap)."""
        if self.sensitivity_table is None:
            self._say("analyse sensitivity first", error=True)
            return None
        value = self.allocate_value.value
        try:
            kwargs = {"target_sparsity": value} if self.allocate_mode.value == "target" else {"max_drop": value}
            result = allocate(self.pruner, table=self.sensitivity_table, **kwargs)
        except ValueError as e:
            self._say(f"allocate: {e}", error=True)
            return None
        self.allocation_html.value = result._repr_html_()
        self._say(f"allocated: accuracy {result.accuracy:.1%} measured jointly; the single-layer drops sum to "
                  f"{100 * result.predicted_drop:+.1f} pt")
        return result

    def close(self):
        self.cancel()
        self._unsubscribe()
        super().close()
