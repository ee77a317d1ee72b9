"""The retraining panel: fine-tune, iterate toward a target, sensitivity curves, allocate.

The panel only shows settings and progress: what runs is the same job as the Python API's
(:class:`prunelab.retrain.FinetuneJob`, :class:`prunelab.retrain.IterateJob`,
:class:`prunelab.sensitivity.SensitivityJob`). Each is prepared on the kernel's main thread (its
checks, and a private copy of the model), run in a background thread (so it never races the
explorer's evaluations of the Pruner's own model), and applied on the main thread again with
``set_weights``/``set_plans``: the state hub then measures the change, and the explorer's sliders
and views (and this panel, observing ``revision``) follow as after any other change. Clicks and
the run's results reach the main thread through ``post``, the one helper the views use too. The
settings' defaults are those of :class:`prunelab.retrain.FinetuneSettings` and
:class:`prunelab.retrain.IterateSettings`.

Cancel stops the run between batches. A fine-tune then leaves the Pruner unchanged; an
iteration leaves it at its last completed step (each step is applied as it completes). A
fine-tune applies the masks it trained with, so a slider moved during the run is set back.
"""

from __future__ import annotations

import html
from typing import Callable

import ipywidgets as widgets

from ...reports import remember_iterate
from ...retrain import (OPTIMIZERS, SCHEDULES, VARIABLE_GRANULARITIES, FinetuneJob, FinetuneSettings, IterateJob,
                        IterateSettings, IterateStep, history_table, resolve_defaults)
from ...sensitivity import SensitivityTable
from ..bokeh_loader import load_bokehjs
from .base import Panel
from .runner import BackgroundRun
from .sensitivity import SensitivitySection, fraction_figure, layer_colours

INITIAL_TARGET = 0.9  # where the target slider starts (iterate has no default target)
EMPTY_HISTORY = ("<i style='color:#555'>Nothing run yet: run <b>Fine-tune</b> or <b>Iterate</b> to see the accuracy "
                 "they reach (Iterate's steps are plotted and tabled here).</i>")

__all__ = ["TrainingPanel", "layer_colours"]


class TrainingPanel(Panel):
    """Retrain and allocate, for ``pruner``: fine-tune, iterate toward a target sparsity (with a
    progress bar and a cancel button), the iteration history as a table and a curve, sensitivity
    curves per layer (each layer in its own colour) and an Allocate action.

    Args:
        pruner: the Pruner (train_data enables fine-tune and iterate).
        state: the explorer's state hub (default: the panel's own, following ``pruner``).
        post: runs work on the kernel's main thread (default: the panel's own Scheduler).
        executor: a concurrent.futures.Executor for the sensitivity analysis (e.g. a Dask
            ``client.get_executor()``); default: in the panel's thread.

    Returns:
        The panel (an ipywidgets widget, class ``prunelab-training``; its controls carry
        ``prunelab-training-finetune``, ``-iterate``, ``-cancel``, ``-progress``, ``-status`` and
        ``-allocate``).

    Example:
        >>> panel = TrainingPanel(pruner)                              # doctest: +SKIP
        >>> panel.epochs.value = 2; panel.finetune_button.click()      # doctest: +SKIP
        >>> panel.wait()                                               # doctest: +SKIP   (outside a kernel)
    """

    title = "Fine-tune"

    def __init__(self, pruner, state=None, post=None, *, executor=None):
        load_bokehjs()
        self.executor = executor
        self.history = history_table()
        super().__init__(pruner, state, post)
        for widget, name in ((self.finetune_button, "finetune"), (self.iterate_button, "iterate"),
                             (self.cancel_button, "cancel"), (self.progress, "progress"), (self.status, "status")):
            widget.add_class(f"prunelab-training-{name}")
        self._refresh_availability()

    def build(self) -> list[widgets.Widget]:
        """The fine-tune and iterate settings, the run's progress, the history and the sensitivity part."""
        pruner = self.pruner
        # Button clicks arrive on a subshell thread (JupyterLab 4.6, ipykernel 7): they are posted
        # to the main thread, and so is everything the background run hands back.
        self.runner = BackgroundRun(self.post)
        self.progress, self.status, self.cancel_button = self.runner.progress, self.runner.status, \
            self.runner.cancel_button
        _, granularity = resolve_defaults(pruner)
        if self.state.granularity in VARIABLE_GRANULARITIES:  # the explorer's choice, when iterate can take it
            granularity = self.state.granularity
        layout = widgets.Layout(width="150px")
        style = {"description_width": "70px"}
        fine, it = FinetuneSettings, IterateSettings  # the defaults, written once there

        # fine-tune
        self.epochs = widgets.BoundedIntText(fine.epochs, min=1, max=10_000, description="epochs", layout=layout,
                                             style=style)
        self.lr = widgets.BoundedFloatText(fine.lr, min=1e-7, max=10.0, step=1e-4, description="lr", layout=layout,
                                           style=style)
        self.optimizer = widgets.Dropdown(options=list(OPTIMIZERS), value=fine.optimizer, description="optimizer",
                                          layout=widgets.Layout(width="170px"), style=style)
        self.finetune_button = widgets.Button(description="Fine-tune", icon="play", button_style="primary",
                                              tooltip="retrain with the current masks held")
        # iterate
        self.target = widgets.FloatSlider(value=INITIAL_TARGET, min=0.05, max=0.99, step=0.01, description="target",
                                          readout_format=".0%", continuous_update=False, style=style)
        self.granularity = widgets.Dropdown(options=list(VARIABLE_GRANULARITIES), value=granularity,
                                            description="granularity", layout=widgets.Layout(width="230px"),
                                            style={"description_width": "80px"})
        self.schedule = widgets.Dropdown(options=list(SCHEDULES), value=it.schedule, description="schedule",
                                         layout=widgets.Layout(width="170px"), style=style)
        self.steps = widgets.BoundedIntText(it.steps, min=1, max=1000, description="steps", layout=layout, style=style)
        self.epochs_per_step = widgets.BoundedIntText(it.epochs_per_step, min=0, max=1000, description="epochs/step",
                                                      layout=widgets.Layout(width="165px"),
                                                      style={"description_width": "85px"})  # its label whole
        self.final_epochs = widgets.BoundedIntText(it.final_epochs, min=0, max=10_000, description="then",
                                                   layout=layout, style=style)
        self.regrow = widgets.FloatSlider(value=it.regrow, min=0.0, max=0.5, step=0.05, description="regrow",
                                          readout_format=".0%", continuous_update=False, style=style,
                                          tooltip="fraction of kept weights swapped each step for the pruned ones "
                                                  "with the largest gradients (RigL)")
        self.iterate_button = widgets.Button(description="Iterate", icon="forward", button_style="primary",
                                             tooltip="prune a little, fine-tune, repeat, up to the target")
        # history
        self.history_html = widgets.HTML(self.history._repr_html_())
        self.history_source, history_fig = self._history_figure()
        self.history_empty = widgets.HTML(EMPTY_HISTORY)  # what to do, instead of an empty plot and table
        self.history_empty.add_class("prunelab-training-empty")
        # sensitivity and allocation
        self.sensitivity = SensitivitySection(pruner, self.runner, self.granularity, post=self.post,
                                              watch=self.watch, executor=self.executor)

        from jupyter_bokeh.widgets import BokehModel

        self.history_plot = BokehModel(history_fig)
        self.finetune_button.on_click(lambda _: self.post("training:finetune", self.start_finetune))
        self.iterate_button.on_click(lambda _: self.post("training:iterate", self.start_iterate))
        self.runner.on_busy(self._refresh_availability)
        self.watch(self._follow_granularity, "granularity")

        row = lambda *c: widgets.HBox(list(c), layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        self.history_row = row(self.history_plot, self.history_html)
        self.history_row.layout.display = "none"  # shown with the first step
        section = lambda text: widgets.HTML(f"<b>{html.escape(text)}</b>")
        return [
            section("Fine-tune (masks held)"),
            row(self.epochs, self.lr, self.optimizer, self.finetune_button),
            section("Iterate toward a target"),
            row(self.target, self.granularity, self.schedule),
            row(self.steps, self.epochs_per_step, self.final_epochs, self.regrow, self.iterate_button),
            row(self.progress, self.cancel_button, self.status),
            self.history_empty, self.history_row,
            self.sensitivity,
        ]

    def _history_figure(self):
        from bokeh.models import ColumnDataSource

        source = ColumnDataSource(dict(step=[], sparsity=[], before=[], after=[]))
        fig = fraction_figure("accuracy per step", "sparsity", "accuracy")
        fig.line("sparsity", "after", source=source, color="#1f77b4", line_width=2, legend_label="after fine-tuning")
        fig.scatter("sparsity", "after", source=source, color="#1f77b4", size=6)
        fig.scatter("sparsity", "before", source=source, color="#d62728", marker="x", size=8,
                    legend_label="after pruning, before fine-tuning")
        fig.legend.location = "bottom_left"
        fig.legend.label_text_font_size = "8pt"
        return source, fig

    # ------------------------------------------------------------------ state

    def _follow_granularity(self, change):
        """Iterate prunes as the explorer does: its granularity follows the hub's (not 2:4, which
        has one sparsity only), unless a run is in progress."""
        if change["new"] in VARIABLE_GRANULARITIES and not self.busy:
            self.granularity.value = change["new"]

    @property
    def busy(self) -> bool:
        """True while a run is in progress (until its results are applied on the main thread)."""
        return self.runner.busy

    @property
    def last_error(self) -> BaseException | None:
        """The exception of the last failed run (None after a good one)."""
        return self.runner.last_error

    def _refresh_availability(self):
        for b in (self.finetune_button, self.iterate_button):
            b.disabled = self.busy
        if self.pruner.train_data is None:
            self.finetune_button.disabled = self.iterate_button.disabled = True
            self.finetune_button.tooltip = self.iterate_button.tooltip = \
                "needs training data: create the Pruner (or explorer) with train_data=..."

    def cancel(self) -> None:
        """Stop the run between two batches."""
        self.runner.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run finishes, then apply its results here (for scripts and tests: in a
        notebook they apply by themselves). Returns False on timeout."""
        return self.runner.wait(timeout)

    # ------------------------------------------------------------------ actions

    def start_finetune(self) -> None:
        """Fine-tune with the settings in the panel, in the background (one history step when done)."""
        self.runner.check_idle()
        settings = FinetuneSettings(epochs=self.epochs.value, lr=self.lr.value, optimizer=self.optimizer.value)
        job = FinetuneJob(self.pruner, settings)
        try:
            job.prepare()
        except (ValueError, TypeError) as e:
            self.runner.say(str(e), error=True)
            return

        def done(_):
            r = job.apply()
            return f"fine-tuned {r.epochs} epochs: accuracy {r.accuracy_before:.1%} -> {r.accuracy_after:.1%}"

        self.runner.start("fine-tuning", lambda hooks, send: job.run(hooks), done, job.total)

    def start_iterate(self) -> None:
        """Iterate toward the target with the settings in the panel, in the background (each
        completed step applied as one history step)."""
        self.runner.check_idle()
        settings = IterateSettings(target=self.target.value, steps=self.steps.value,
                                   epochs_per_step=self.epochs_per_step.value, schedule=self.schedule.value,
                                   granularity=self.granularity.value, regrow=self.regrow.value,
                                   final_epochs=self.final_epochs.value)
        job = IterateJob(self.pruner, settings)
        try:
            job.prepare()
        except (ValueError, TypeError) as e:
            self.runner.say(str(e), error=True)
            return
        self.history = history_table()
        self.history_html.value = self.history._repr_html_()
        self.history_source.data = dict(step=[], sparsity=[], before=[], after=[])

        def work(hooks, send):  # each step is applied on the main thread as it completes
            return job.run(hooks, on_step=lambda step: send(lambda: self._apply_step(job, step)))

        def done(history):
            remember_iterate(self.pruner, history)  # the Tables tab's "iterations" shows this run
            last = history[-1]
            return f"reached {last['sparsity']:.1%} sparsity, accuracy {last['accuracy_after']:.1%}"

        self.runner.start("iterating", work, done, job.total)

    def _apply_step(self, job: IterateJob, step: IterateStep):
        job.apply(step)
        row = step.row
        self.history.append(row)
        self.history_html.value = self.history._repr_html_()
        self.history_source.stream(dict(step=[row["step"]], sparsity=[row["sparsity"]],
                                        before=[row["accuracy_before"]], after=[row["accuracy_after"]]))
        self.history_empty.layout.display = "none"
        self.history_row.layout.display = None

    # ------------------------------------------------------------------ sensitivity (see .sensitivity)

    @property
    def sensitivity_table(self) -> SensitivityTable | None:
        """The curves shown, or None before the first analysis."""
        return self.sensitivity.table

    @property
    def sensitivity_marks(self) -> dict[str, dict]:
        """Per analysed layer: its colour and the highest measured sparsity within one point of
        accuracy, for marking the explorer's per-layer sliders."""
        return self.sensitivity.safe_marks

    def on_sensitivity(self, callback: Callable[[SensitivityTable], None]) -> None:
        """Call ``callback(table)`` whenever new sensitivity curves are shown."""
        self.sensitivity.on_sensitivity(callback)

    def close(self) -> None:
        """Cancel a run in progress, stop observing the state hub, and close the panel."""
        self.cancel()
        self.sensitivity.close()
        super().close()
