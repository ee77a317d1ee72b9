"""The Explorer: composition and wiring.

Data flows one way: a control builds an action and the Explorer runs it on the Pruner; the
Pruner tells its listeners; the Explorer measures the new state once (``refresh``), sets the
shared state, and the views, observing it, patch their data sources. Work that takes long
(attribution and Taylor scores, input attributions) runs in the background on a copy of the
model and lands in the shared state when done; what it shows is marked stale meanwhile.
"""

from __future__ import annotations

import dataclasses
import difflib
import html
import inspect
from typing import Callable

import ipywidgets as w
import torch
from torch import nn

from .. import demos
from ..core.evaluation import Metrics, classification_scores
from ..pruner import Pruner
from .analysis import Explainer, Shadow, snapshot, unit_and_weight_scores
from .background import Scheduler
from .bokeh_loader import load_bokehjs
from .controls import Controls
from .state import COMPARED, ExplorerState, dense_reference, magnitude_scores
from .views.connectivity import ConnectivityView
from .views.importance import ImportanceView
from .views.interpretability import InterpretabilityView
from .views.metrics import MetricsView
from .panels.export import ExportPanel
from .panels.training import TrainingPanel
from .views.weights import WeightsView

SETTLE_S = 0.4      # quiet time after the last change before attributions are recomputed
NEEDS_SCORING = ("taylor", "attribution")


class Explorer(w.VBox):
    """Interactive pruning of one Pruner: controls, live views, and panels in tabs.

    Made by :func:`explore`. ``explorer.pruner`` is the Pruner it drives (change it from Python
    and the views follow); ``explorer.add_panel(title, widget)`` adds a tab; ``explorer.wait()``
    blocks until background work is done (scripts and tests; notebooks need not call it).
    """

    def __init__(self, pruner: Pruner, *, title: str = "", image_shape: tuple[int, int] | None = None,
                 class_names: list[str] | None = None):
        super().__init__()
        load_bokehjs()
        self.pruner = pruner
        self.add_class("prunelab-explorer")
        self._scheduler = Scheduler(on_busy=self._show_busy)
        self._shadow: Shadow | None = None
        self._explainer: Explainer | None = None
        self._injected: set = set()              # (criterion, units, weights version) handed to the Pruner
        self._scoring: set = set()               # the same, being computed now
        self._pending: tuple[Callable[[], None], str] | None = None  # action waiting for scores

        layer = max(pruner.layers, key=lambda l: l.params).name
        self.state = ExplorerState(layer=layer)
        self._new_reference()
        self.state.metrics = pruner.evaluate()
        self.state.baseline = self._baseline()

        self.controls = Controls(pruner, self.state, self.apply, post=self._scheduler.post)
        post = self._scheduler.post
        self.views = {
            "connectivity": ConnectivityView(pruner, self.state, post=post),
            "weights": WeightsView(pruner, self.state, post=post),
            "importance": ImportanceView(pruner, self.state, post=post),
            "interpretability": InterpretabilityView(pruner, self.state, image_shape=image_shape,
                                                     class_names=class_names, post=post),
            "metrics": MetricsView(pruner, self.state, post=post),
        }
        interp = self.views["interpretability"]
        # widget messages arrive on a kernel subshell thread: act on the main thread
        interp.explain.on_click(lambda _: self._scheduler.post("explain", self.explain))
        interp.auto.observe(lambda c: c["new"] and self._scheduler.post("auto", self._schedule_explain), "value")

        self._busy_bar = w.FloatProgress(value=0, min=0, max=1, layout=w.Layout(width="140px", height="14px"))
        self._busy_label = w.HTML()
        self._busy = w.HBox([self._busy_label, self._busy_bar], layout=w.Layout(visibility="hidden",
                                                                              align_items="center"))
        self._busy.add_class("prunelab-progress")
        heading = w.HTML(f'<div style="font-size:14px; font-weight:600">prunelab · {html.escape(title)}</div>')
        inspect_tab = w.VBox([self.views[k].widget for k in ("connectivity", "weights", "importance",
                                                              "interpretability")])
        self.tabs = w.Tab(children=[inspect_tab], titles=("Inspect",))
        self.tabs.add_class("prunelab-tabs")
        left = w.VBox([self.controls.widget, self.views["metrics"].widget], layout=w.Layout(flex="0 0 auto"))
        self.children = [
            w.HBox([heading, self._busy], layout=w.Layout(justify_content="space-between", align_items="center")),
            self.views["metrics"].readout,
            w.HBox([left, self.tabs], layout=w.Layout(align_items="flex-start")),
        ]
        self._unsubscribe = pruner.on_change(self._on_change)
        self.state.observe(lambda _: self._prefetch(), ["criterion", "granularity", "mode"])
        self._mount_panels()
        self._score_in_background()
        self._schedule_explain()

    # -------------------------------------------------------------- panels

    def add_panel(self, title: str, widget: w.Widget) -> None:
        """Add a tab beside the Inspect views (fine-tuning, export, your own)."""
        if not isinstance(widget, w.Widget):
            raise TypeError(f"add_panel needs an ipywidgets widget, got {type(widget).__name__}.")
        self.tabs.children = (*self.tabs.children, widget)
        self.tabs.set_title(len(self.tabs.children) - 1, title)

    def _mount_panels(self):
        self.add_panel("Fine-tune", TrainingPanel(self.pruner))
        self.add_panel("Export", ExportPanel(self.pruner))

    # -------------------------------------------------------------- measuring

    def _on_change(self):
        self._scheduler.soon("refresh", self.refresh)

    def refresh(self) -> None:
        """Measure the Pruner's current state and let every view follow (runs after each change)."""
        if self.pruner.weights_version != self.state.reference.version:
            self._new_reference()
            self._score_in_background()
        self.state.metrics = self.pruner.evaluate()
        self.state.revision += 1  # the views patch themselves
        self.controls.sync()
        self.state.explanations_stale = True
        self._schedule_explain()

    def _new_reference(self):
        """Unmasked weights of the current weights version, and their magnitude scores."""
        self.state.scores = {"magnitude": magnitude_scores(self.pruner)}
        self.state.score_errors = {}
        self.state.reference = dense_reference(self.pruner)

    def _baseline(self) -> Metrics:
        """Metrics of the dense original model (measured on a copy when the Pruner has moved on)."""
        p = self.pruner
        if not p.plans and p.weights_version == 0:
            return p.evaluate()
        model = self.shadow().load({**snapshot(p.model), **p.original_weights})
        with torch.no_grad():
            out = torch.cat([model(x) for x in p.val_inputs.split(p.batch_size)])
        if p.metric is not None:
            acc = float(p.metric(out, p.val_targets))
            per_class = classification_scores(out, p.val_targets, p.classes)[2] if p.classification else ()
            loss = float(p.loss(out, p.val_targets)) if p.loss is not None else None
        else:
            acc, loss, per_class, _ = classification_scores(out, p.val_targets, p.classes)
        m = self.state.metrics
        return dataclasses.replace(m, accuracy=acc, loss=loss, per_class=per_class, nonzero_params=m.params,
                                   sparse_bytes=m.dense_bytes, nonzero_flops=m.flops, accuracy_interval=None)

    # -------------------------------------------------------------- actions

    def apply(self, action: Callable[[], None], label: str = "") -> None:
        """Run a control's action on the Pruner. When it prunes by a criterion whose scores are
        not ready, the scores are computed in the background first (latest action wins)."""
        needs = self._scores_needed(label)
        if needs is not None:
            self._pending = (action, label)
            self.controls.show_message(f"computing {needs[0]} scores in the background…")
            self._score(needs[0], units=needs[1])
            return
        self._pending = None
        try:
            action()
        except (ValueError, TypeError) as e:
            self.controls.show_message(str(e), error=True)
            self._scheduler.soon("refresh", self.refresh)  # put the controls back where the Pruner is
        else:
            self.controls.show_message("")

    def _prefetch(self):
        """Start computing the scores the chosen criterion will need before the first drag."""
        needs = self._scores_needed("")
        if needs is not None:
            self._score(needs[0], units=needs[1])

    def _scores_needed(self, label: str) -> tuple[str, bool] | None:
        crit = self.state.criterion
        if label in ("reset", "undo", "redo") or self.state.mode == "threshold" or crit not in NEEDS_SCORING:
            return None
        units = self.state.granularity == "structured"
        if (crit, units, self.pruner.weights_version) in self._injected:
            return None
        return crit, units

    # -------------------------------------------------------------- background work

    def shadow(self) -> Shadow:
        """The private copy of the model that background work runs on (made on first use)."""
        if self._shadow is None:
            self._shadow = Shadow(self.pruner.model)
        return self._shadow

    def _score_in_background(self):
        for crit in COMPARED:
            if crit in NEEDS_SCORING:
                self._score(crit, units=True)

    def _score(self, criterion: str, units: bool):
        """Compute a criterion's scores on the unmasked weights in the background, then hand them
        to the Pruner (so pruning by them is instant) and to the importance view."""
        p = self.pruner
        version = p.weights_version
        job = (criterion, units, version)
        if job in self._scoring or job in self._injected:
            return  # already on its way: a pending action runs when it lands
        try:
            shadow = self.shadow()
            ctx = p.scoring_context()
        except (RuntimeError, ValueError) as e:
            self.state.score_errors = {**self.state.score_errors, criterion: str(e)}
            return
        with p.dense():
            dense = snapshot(p.model)
        want_weights = not units

        def work(progress):
            return unit_and_weight_scores(shadow, dense, ctx, criterion, want_weights, progress)

        def done(result):
            self._scoring.discard(job)
            if p.weights_version != version:
                return  # the weights changed meanwhile; a new job is on its way
            p.add_scores(criterion, result["units"], units=True, weights_version=version)
            self._injected.add((criterion, True, version))
            if result["weights"] is not None:
                p.add_scores(criterion, result["weights"], units=False, weights_version=version)
                self._injected.add((criterion, False, version))
            self.state.scores = {**self.state.scores,
                                 criterion: {n: s.detach().cpu().numpy() for n, s in result["units"].items()}}
            if self._pending is not None and self._scores_needed(self._pending[1]) is None:
                action, label = self._pending
                self.apply(action, label)

        def failed(error):
            self._scoring.discard(job)
            self.state.score_errors = {**self.state.score_errors, criterion: str(error)}
            if self._pending is not None:
                self._pending = None
                self.controls.show_message(f"{criterion} scores failed: {error}", error=True)

        self._scoring.add(job)
        key = f"scores:{criterion}:{'units' if units else 'weights'}:{version}"
        self._scheduler.submit(key, f"{criterion} scores", work, done, failed)

    def _schedule_explain(self):
        if self.views["interpretability"].auto.value:
            self._scheduler.later("explain", SETTLE_S, self.explain)

    def explain(self) -> None:
        """Recompute the input attributions for the current state now (in the background)."""
        self._scheduler.cancel("explain")
        p = self.pruner
        try:
            if self._explainer is None:
                self._explainer = Explainer(self.shadow(), p.val_inputs, p.val_targets, p.classification)
        except RuntimeError as e:
            self.state.explain_error = str(e)
            return
        current = snapshot(p.model)
        original = {**current, **p.original_weights}
        revision, sparsity = self.state.revision, p.overall_sparsity()
        explainer = self._explainer

        def done(ex):
            self.state.explanations = ex
            self.state.explanations_stale = ex.revision != self.state.revision
            self.state.explain_error = ""

        def failed(error):
            self.state.explain_error = f"attributions failed: {error}"

        self._scheduler.submit("explain", "attributions",
                               lambda progress: explainer(original, current, revision, sparsity, progress),
                               done, failed)

    def _show_busy(self, labels: list[str], fraction: float | None):
        self._busy.layout.visibility = "visible" if labels else "hidden"
        self._busy_label.value = (f'<span style="font-size:11px; color:#555">computing {", ".join(labels)}…</span>'
                                  if labels else "")
        self._busy_bar.value = fraction or 0.0
        self.state.busy = ", ".join(labels)

    def wait(self, timeout: float = 120.0) -> "Explorer":
        """Block until pending background work is done and shown (for scripts and tests)."""
        self._scheduler.wait(timeout)
        return self

    def close(self):
        """Stop following the Pruner and close the widgets."""
        self._unsubscribe()
        self._scheduler.close()
        for view in self.views.values():
            view.widget.close()
            view.bokeh.close()
        super().close()


# ---------------------------------------------------------------------- explore()

_PRUNER_OPTIONS = [name for name, p in inspect.signature(Pruner).parameters.items() if p.kind == p.KEYWORD_ONLY]


def explore(model_or_demo, val_data=None, train_data=None, **pruner_options) -> Explorer:
    """Open the interactive explorer.

    Args:
        model_or_demo: a ``torch.nn.Module``; a demo name such as ``"digits-mlp"`` (see
            ``prunelab.demos.NAMES``) or a loaded Demo; or an existing Pruner.
        val_data: labelled data to measure on (a DataLoader, a Dataset, or an ``(inputs,
            targets)`` pair of tensors); required for a model, brought along by demos.
        train_data: data for Taylor/attribution scoring and fine-tuning (optional).
        **pruner_options: passed to :class:`prunelab.Pruner` (metric, loss, eval_samples,
            batch_size, seed).

    Returns an :class:`Explorer`: an ipywidgets widget that shows itself as a cell's output.
    """
    unknown = [k for k in pruner_options if k not in _PRUNER_OPTIONS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], _PRUNER_OPTIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"explore() got an unknown option {unknown[0]!r}.{hint} "
                        f"Options (passed to the Pruner): {_PRUNER_OPTIONS}.")
    image_shape, class_names = None, None
    if isinstance(model_or_demo, str):
        model_or_demo = demos.load(model_or_demo)
    if isinstance(model_or_demo, demos.Demo):
        demo = model_or_demo
        if val_data is not None or train_data is not None:
            raise ValueError(f"the demo {demo.name!r} brings its own data; call explore({demo.name!r}) without "
                             "val_data/train_data, or pass your model with your data.")
        pruner = Pruner(demo.model, demo.val, train_data=demo.train, **pruner_options)
        title, image_shape, class_names = f"{demo.name}: {demo.description}", demo.image_shape, demo.classes
    elif isinstance(model_or_demo, Pruner):
        if val_data is not None or train_data is not None or pruner_options:
            raise ValueError("a Pruner already holds its data and options; call explore(pruner) alone.")
        pruner = model_or_demo
        title = type(pruner.model).__name__
    elif isinstance(model_or_demo, nn.Module):
        if val_data is None:
            raise ValueError("explore(model) needs val_data: labelled data to measure the pruned model on "
                             "(a DataLoader, a Dataset, or an (inputs, targets) pair of tensors). "
                             "Or try a demo: explore('digits-mlp').")
        pruner = Pruner(model_or_demo, val_data, train_data=train_data, **pruner_options)
        title = type(model_or_demo).__name__
    else:
        raise TypeError(f"explore() takes a torch.nn.Module, a demo name (one of {list(demos.NAMES)}), a Demo "
                        f"or a Pruner; got {type(model_or_demo).__name__}.")
    return Explorer(pruner, title=title, image_shape=image_shape, class_names=class_names)
