"""The Explorer: composition and wiring.

Data flows one way: a control builds a typed Action and the Explorer runs it on the Pruner; the
Pruner's one bridge into the state hub (``state.follow``) has the Explorer measure the new state
once (``refresh``); the controls, views and panels, observing the hub, follow. Work that takes
long (attribution and Taylor scores, input attributions) runs in the background on a copy of the
model and lands in the hub when done; what it shows is marked stale meanwhile. All of it runs on
the kernel's main thread through one Scheduler, shared by the controls, the views and the panels.
"""

from __future__ import annotations

import dataclasses
import html

import ipywidgets as w

from ..core.checks import check_count
from ..core.scores import scoring_context, scoring_samples
from ..pruner import Pruner
from .actions import Action
from ..core.copies import ModelCopy, model_state
from .analysis import Explainer, score_subset, unit_and_weight_scores
from .background import Scheduler, counting
from .bokeh_loader import RERUN, load_bokehjs
from .controls import Controls
from .state import (COMPARED, DENSE_CHUNK, NEEDS_SCORING, ExplorerState, LiveMeasure, dense_metrics,
                    dense_reference, follow, follow_baseline, is_dense, magnitude_scores)
from .views.connectivity import ConnectivityView
from .views.importance import ImportanceView
from .views.interpretability import InterpretabilityView
from .views.metrics import MetricsView
from .panels.beyond import beyond_panels
from .panels.export import ExportPanel
from .panels.tables import TablesPanel
from .panels.training import TrainingPanel
from .views.sizes import TAB_CSS, reflowing
from .views.weights import WeightsView

SETTLE_S = 0.4      # quiet time after the last change before attributions are recomputed


class Explorer(w.VBox):
    """Interactive pruning of one Pruner: controls, live views, and panels in tabs.

    Made by :func:`explore`. ``explorer.pruner`` is the Pruner it drives (change it from Python
    and the views follow); ``explorer.state`` the state hub the controls, views and panels observe;
    ``explorer.add_panel(title, widget)`` adds a tab; ``explorer.wait()`` blocks until background
    work is done (scripts and tests; notebooks need not call it).

    Args:
        pruner: the Pruner to drive. title: shown in the heading.
        image_shape: (height, width) to draw 1-D inputs as images. class_names: labels of the classes.
        score_samples: how many samples Taylor and attribution scores are computed on (in the background);
            None: the Pruner's (up to 2,048), or 64 for a big model (:func:`.analysis.score_subset`).

    Example:
        >>> ex = Explorer(pl.Pruner(model, val_data), title="my model")
        >>> ex.pruner.prune(0.5); ex.wait().state.metrics.sparsity > 0
        True
    """

    def __init__(self, pruner: Pruner, *, title: str = "", image_shape: tuple[int, int] | None = None,
                 class_names: list[str] | None = None, score_samples: int | None = None):
        super().__init__()
        self.score_samples = check_count(score_samples, "score_samples", allow_none=True)
        self._score_ctx = None
        load_bokehjs()
        self.pruner = pruner
        self.add_class("prunelab-explorer")
        self._scheduler = Scheduler(on_busy=self._show_busy)
        self._shadow: ModelCopy | None = None
        self._explainer: Explainer | None = None
        self._injected: set = set()              # (criterion, units, weights version) handed to the Pruner
        self._scoring: set = set()               # the same, being computed now
        self._shown: dict = {}                   # (criterion, weights version) -> unit scores shown
        self._pending: Action | None = None      # the action waiting for scores

        layer = max(pruner.layers, key=lambda l: l.params).name
        self.state = ExplorerState(layer_names=tuple(pruner.layer_names), layer=layer)
        self.state.scores = {"magnitude": magnitude_scores(pruner)}
        self.state.reference = dense_reference(pruner)
        # measured in slices on the main thread: a first answer now, the rest while widgets answer
        self.live = LiveMeasure(pruner, self.state, self._scheduler.later,
                                on_slice=lambda m: follow_baseline(pruner, self.state, m))
        self.live.start()
        self._baseline()

        post = self._scheduler.post
        later = self._scheduler.later if self._scheduler.live else None  # views and controls paced during a drag
        self.controls = Controls(pruner, self.state, self.apply, post=post, later=later)
        self.views = {
            "connectivity": ConnectivityView(pruner, self.state, post=post, later=later),
            "weights": WeightsView(pruner, self.state, post=post, later=later),
            "importance": ImportanceView(pruner, self.state, post=post, later=later),
            "interpretability": InterpretabilityView(pruner, self.state, image_shape=image_shape,
                                                     class_names=class_names, post=post, later=later),
            "metrics": MetricsView(pruner, self.state, post=post, later=later),
        }
        # widget messages arrive on a kernel subshell thread: act on the main thread
        self.views["interpretability"].explain.on_click(lambda _: post("explain", self.explain))

        self._busy_bar = w.FloatProgress(value=0, min=0, max=1, layout=w.Layout(width="140px", height="14px"))
        self._busy_label = w.HTML()
        self.progress = w.HBox([self._busy_label, self._busy_bar], layout=w.Layout(visibility="hidden", align_items="center"))
        self.progress.add_class("prunelab-progress")
        heading = w.HTML(f'<style>{TAB_CSS}</style><div style="font-size:14px; font-weight:600">prunelab · '
                         f'{html.escape(title)}</div>')
        inspect_tab = w.VBox([self.views[k].widget for k in ("connectivity", "weights", "importance",
                                                              "interpretability")])
        self.tabs = w.Tab(children=[inspect_tab], titles=("Inspect",))
        self.tabs.add_class("prunelab-tabs")
        # the Inspect views redraw only while their tab is shown (a click arrives on a subshell thread)
        self.tabs.observe(lambda _: post("tab", self._show_inspect), "selected_index")
        self.children = [
            w.HBox([heading, self.progress], layout=w.Layout(justify_content="space-between", align_items="center")),
            self.views["metrics"].readout,
            reflowing(w.VBox([self.controls.widget, self.views["metrics"].widget]), self.tabs),
        ]
        # Dependent work follows the hub: scores for a new criterion or new weights, explanations.
        self.state.observe(lambda _: self._prefetch(), ["criterion", "granularity", "mode"])
        self.state.observe(lambda _: self._score_in_background(), "reference")
        self.state.observe(lambda _: self._schedule_explain(), "revision")
        self.state.observe(lambda c: c["new"] and self._schedule_explain(), "auto_explain")
        self._unsubscribe = follow(pruner, self._scheduler.soon, self.refresh)  # the one bridge
        self.panels = {"Fine-tune": TrainingPanel(pruner, self.state, post),
                       "Export": ExportPanel(pruner, self.state, post),
                       "Tables": TablesPanel(pruner, self.state, post), **beyond_panels(self, self._scheduler)}
        for title, panel in self.panels.items():
            self.add_panel(title, panel)
        self._score_in_background()
        self._schedule_explain()

    def _repr_mimebundle_(self, **kwargs):
        """The widget, with a text and HTML line for where it cannot show (a notebook saved and
        opened elsewhere, untrusted, or rendered without a kernel): run the cell again."""
        data = super()._repr_mimebundle_(**kwargs)
        if data:
            data["text/plain"] = f"prunelab explorer ({self.pruner.overall_sparsity():.1%} sparsity when saved): {RERUN}"
            data["text/html"] = f'<p class="prunelab-rerun">{html.escape(data["text/plain"])}</p>'
        return data

    # -------------------------------------------------------------- panels

    def add_panel(self, title: str, widget: w.Widget) -> None:
        """Add a tab beside the Inspect views (fine-tuning, export, your own).

        Args:
            title: the tab's title. widget: any ipywidgets widget, e.g. a
                :class:`~prunelab.explorer.panels.base.Panel` built on ``explorer.state``.

        Returns:
            None.

        Example:
            >>> ex.add_panel("Notes", ipywidgets.Textarea())
        """
        if not isinstance(widget, w.Widget):
            raise TypeError(f"add_panel needs an ipywidgets widget, got {type(widget).__name__}.")
        self.tabs.children = (*self.tabs.children, widget)
        self.tabs.set_title(len(self.tabs.children) - 1, title)

    def _show_inspect(self):
        """The Inspect views follow the Pruner while their tab is shown; shown again, they draw
        the latest state once."""
        shown = self.tabs.selected_index == 0
        for name in ("connectivity", "weights", "importance", "interpretability"):
            self.views[name].pacer.show(shown)

    # -------------------------------------------------------------- measuring

    def refresh(self) -> None:
        """Measure the Pruner's current state into the hub; the controls, views and panels,
        observing it, follow (runs after each change, once per burst).

        Returns:
            None.

        Example:
            >>> ex.refresh()   # after changing the model's weights behind the Pruner's back
        """
        self.live.start()  # a first slice now (an older state's refinement dropped), the rest posted
        self.state.action = None  # the change the action made is shown
        if not (self.state.baseline is None or self.state.baseline.complete):
            self._baseline()  # the dense state's refinement was dropped: finish it on a copy

    def _baseline(self) -> None:
        """The dense original's Metrics into ``state.baseline``: measured as the current state, else on a copy
        (in the background for a big model; the readout says a baseline is partial until then)."""
        p, m = self.pruner, self.state.metrics
        if is_dense(p) or getattr(self, "_baseline_job", False):
            return
        try:
            shadow, weights = self.shadow(), {**model_state(p.model), **p.original_weights}
        except RuntimeError:  # an uncopyable model: the partial baseline stays, marked as partial
            return
        if m.complete:
            self.state.baseline = dense_metrics(p, shadow.load(weights), m)
            return
        self._baseline_job = True
        self._scheduler.submit("baseline", "dense baseline",
                               lambda progress: dense_metrics(p, shadow.load(weights), m, DENSE_CHUNK, progress),
                               lambda base: setattr(self.state, "baseline", base))

    # -------------------------------------------------------------- actions

    def apply(self, action: Action) -> None:
        """Run a control's action on the Pruner. When it prunes by a criterion whose scores are
        not ready, the scores are computed in the background first (latest action wins). Errors
        (a layer the granularity cannot prune...) show under the controls and change nothing.

        Args:
            action: an :class:`~prunelab.explorer.actions.Action`.

        Returns:
            None.

        Example:
            >>> ex.apply(Action(kind="layer", layer="2", run=lambda: ex.pruner.prune({"2": 0.5})))
        """
        if not isinstance(action, Action):
            raise TypeError(f"apply() takes a prunelab.explorer.actions.Action, got {type(action).__name__}.")
        needs = self._scores_needed(action)
        if needs is not None:
            self._pending = action
            self.controls.show_message(f"computing {needs[0]} scores in the background…")
            self._score(needs[0], units=needs[1])
            return
        self._pending = None
        self.state.action = action
        try:
            changed = action.run()
        except (ValueError, TypeError) as e:
            self.controls.show_message(str(e), error=True)
            self._scheduler.soon("refresh", self.refresh)  # put the controls back where the Pruner is
        else:
            self.controls.show_message("")
            if changed is False:  # nothing to measure: no change follows, so none is waiting
                self.state.action = None

    def _prefetch(self):
        """Start computing the scores the chosen criterion will need before the first drag."""
        needs = self._scores_needed(None)
        if needs is not None:
            self._score(needs[0], units=needs[1])

    def _scores_needed(self, action: Action | None) -> tuple[str, bool] | None:
        """(criterion, units) whose scores ``action`` (None: the next pruning) waits for, if any."""
        crit = self.state.criterion
        if (action is not None and not action.by_criterion) or self.state.mode == "threshold" \
                or crit not in NEEDS_SCORING:
            return None
        units = self.state.granularity == "structured"
        if (crit, units, self.pruner.weights_version) in self._injected:
            return None
        return crit, units

    # -------------------------------------------------------------- background work

    def shadow(self) -> ModelCopy:
        """The private copy of the model that background work runs on (made on first use).

        Returns:
            The copy. Example: ``ex.shadow().model`` (never the Pruner's own model).
        """
        if self._shadow is None:
            self._shadow = ModelCopy(self.pruner.model)
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
        if (criterion, version) in self._shown and criterion not in self.state.scores:
            # back to weights scored before (reset, undo across a fine-tune): show them again
            self.state.scores = {**self.state.scores, criterion: self._shown[(criterion, version)]}
        if job in self._scoring or job in self._injected:
            return  # already on its way: a pending action runs when it lands
        try:
            shadow = self.shadow()
            n = score_subset(p, self.score_samples)
            if self._score_ctx is None:  # taken once; the Pruner's own samples unless a subset is asked for
                self._score_ctx = scoring_context(p, *scoring_samples(p, n)) if n else p.scoring_context()
            ctx = self._score_ctx
        except (RuntimeError, ValueError) as e:
            self.state.score_errors = {**self.state.score_errors, criterion: str(e)}
            return
        with p.dense():
            dense = model_state(p.model)
        want_weights = not units

        def work(progress):  # progress per batch of the scoring subset (a pass each for units and weights)
            counted = dataclasses.replace(ctx, batches=counting(ctx.batches, 2 if want_weights else 1, progress))
            return unit_and_weight_scores(shadow, dense, counted, criterion, want_weights,
                                          lambda f: progress(f) if f >= 1 else None)

        def done(result):
            self._scoring.discard(job)
            if p.weights_version != version:
                return  # the weights changed meanwhile; a new job is on its way
            p.add_scores(criterion, result["units"], units=True, weights_version=version)
            self._injected.add((criterion, True, version))
            if result["weights"] is not None:
                p.add_scores(criterion, result["weights"], units=False, weights_version=version)
                self._injected.add((criterion, False, version))
            shown = self._shown[(criterion, version)] = {n: s.detach().cpu().numpy()
                                                         for n, s in result["units"].items()}
            self.state.scores = {**self.state.scores, criterion: shown}
            if self._pending is not None and self._scores_needed(self._pending) is None:
                self.apply(self._pending)

        def failed(error):
            self._scoring.discard(job)
            self.state.score_errors = {**self.state.score_errors, criterion: str(error)}
            if self._pending is not None:
                self._pending = None
                self.controls.show_message(f"{criterion} scores failed: {error}", error=True)

        self._scoring.add(job)
        key = f"scores:{criterion}:{'units' if units else 'weights'}:{version}"
        self._scheduler.submit(key, f"{criterion} scores" + (f" on {n} samples" if n else ""), work, done, failed)

    def _schedule_explain(self):
        if self.state.auto_explain:
            self._scheduler.later("explain", SETTLE_S, self.explain)

    def explain(self) -> None:
        """Recompute the input attributions for the current state now (in the background); the
        Explain button does this, and so do settled changes while ``state.auto_explain`` is on.

        Returns:
            None. Example: ``ex.explain(); ex.wait().state.explanations_stale`` is False.
        """
        self._scheduler.cancel("explain")
        p = self.pruner
        try:
            if self._explainer is None:
                self._explainer = Explainer(self.shadow(), p.val_inputs, p.val_targets, p.classification,
                                            output=p.output)
        except RuntimeError as e:
            self.state.explain_error = str(e)
            return
        current = model_state(p.model)
        original = {**current, **p.original_weights}
        revision, sparsity = self.state.revision, p.overall_sparsity()
        explainer = self._explainer

        def done(ex):
            self.state.explanations = ex  # explanations_stale follows (state.py)
            self.state.explain_error = ""

        def failed(error):
            self.state.explain_error = f"attributions failed: {error}"

        self._scheduler.submit("explain", "attributions",
                               lambda progress: explainer(original, current, revision, sparsity, progress),
                               done, failed)

    def _show_busy(self, labels: list[str], fraction: float | None):
        self.progress.layout.visibility = "visible" if labels else "hidden"
        self._busy_label.value = (f'<span style="font-size:11px; color:#555">computing {", ".join(labels)}…</span>'
                                  if labels else "")
        self._busy_bar.value = fraction or 0.0
        self.state.busy = ", ".join(labels)

    def wait(self, timeout: float = 120.0) -> "Explorer":
        """Block until pending background work is done and shown (for scripts and tests).

        Args:
            timeout: seconds to wait for each background job.

        Returns:
            The Explorer. Example: ``ex.pruner.prune(0.9); ex.wait()``.
        """
        self._scheduler.wait(timeout)
        return self

    def close(self):
        """Stop following the Pruner and close the widgets and the explorer's own panels.

        Returns:
            None. Example: ``ex.close(); ex.pruner.prune(0.5)`` (the closed explorer stays as it was).
        """
        getattr(self, "_unsubscribe", lambda: None)()  # a failed __init__ leaves a part-built Explorer
        if hasattr(self, "_scheduler"):
            self._scheduler.close()
        for view in getattr(self, "views", {}).values():
            view.widget.close()
            if view.bokeh is not None:  # a view that could not draw has none
                view.bokeh.close()
        for panel in getattr(self, "panels", {}).values():
            panel.close()
        super().close()
