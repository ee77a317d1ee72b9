"""The controls: what a person drags and clicks.

Controls turn a gesture into a typed :class:`~prunelab.explorer.actions.Action` and hand it to
``apply``, which the Explorer provides (it makes sure the criterion's scores exist, records the
action in the state hub, runs it, and reports errors). The choices (criterion, granularity, mode,
layer) live in the state hub: the widgets show the state's traits and a person's choice sets them.
When the Pruner changes, from here or anywhere else (Python, undo, other panels), the state's
``revision`` moves and ``sync()`` moves the sliders to match without triggering actions.
"""

from __future__ import annotations

import contextlib
import html
import threading
from typing import Callable

import ipywidgets as w
import numpy as np

from ..core.checks import GRANULARITIES
from ..core.planning import amount_plans, threshold_plans
from .actions import Action
from .slider_values import same_plans, short_name, slider_fraction, threshold_range
from .state import CRITERION_ORDER, MODES
from .views.metrics import si
from .views.pacing import Pacer

SMALL = "font-size:11px; color:#555; line-height:1.2"
MODE_LABELS = {"amount": ("fraction", "sliders set the fraction removed"),
               "threshold": ("|w| threshold", "remove weights below an absolute |w|")}


def on_step(value: float, step: float = 0.01) -> float:
    """A value on the sliders' grid. The page snaps any other value to the grid and sends the
    snapped value back, which would read as a person's gesture.

    Args:
        value: any value. step: the grid's step.

    Returns:
        The nearest value on the grid, rounded to 10 decimals.

    Example:
        >>> on_step(0.3474)
        0.35
    """
    return round(round(value / step) * step, 10)


class Controls:
    """Sliders, choices and buttons; ``widget`` is the column to lay out.

    Args:
        pruner: the Pruner the actions change (read here, changed only through ``apply``).
        state: the explorer's ExplorerState; the choices are its traits.
        apply: ``apply(action)`` runs an :class:`Action` (``Explorer.apply``).
        post: ``post(key, fn)`` runs ``fn`` on the main thread (``Scheduler.post``); default: at once.
        later: ``later(key, delay, fn)`` (``Scheduler.later``): during a drag the per-layer sliders and
            labels follow a few times a second (the latest state, always the final one); None: at once.

    Example:
        >>> controls = Controls(pruner, state, apply=lambda action: action.run())
        >>> controls.global_slider.value = 0.5   # prunes half of all prunable weights
    """

    def __init__(self, pruner, state, apply: Callable[[Action], None],
                 post: Callable[[str, Callable[[], None]], None] | None = None, later=None):
        self.pruner = pruner
        self.state = state
        self.apply = apply
        self.post = post or (lambda key, fn: fn())
        self._syncing = False  # True while this code sets widget values, which are then no gestures

        slider = dict(min=0.0, max=1.0, step=0.01, readout_format=".0%", continuous_update=True)
        wide = w.Layout(width="calc(100% - 4px)")  # a widget's 2px margins stay inside the column
        self.global_slider = w.FloatSlider(value=0.0, description="global", layout=wide,
                                           tooltip="fraction of all prunable weights (units, for structured) removed",
                                           style={"description_width": "60px"}, **slider)
        self.global_slider.add_class("prunelab-global-slider")
        self.global_note = w.HTML()  # the other quantity, beside the one the slider shows
        self.global_note.add_class("prunelab-global-note")
        lo, hi, step, at = threshold_range(pruner, state.reference) if state.reference is not None \
            else (-4.0, 0.0, 0.01, -4.0)
        self._ranged_version = pruner.weights_version
        self.threshold_slider = w.FloatLogSlider(value=10 ** at, base=10, min=lo, max=hi, step=step,
                                                 description="|w| <",
                                                 readout_format=".3g", continuous_update=True, layout=wide,
                                                 style={"description_width": "60px"},
                                                 tooltip="prune every weight whose magnitude is below this")
        self.threshold_slider.add_class("prunelab-threshold-slider")
        self.criterion = w.Dropdown(options=CRITERION_ORDER, value=state.criterion, description="criterion",
                                    style={"description_width": "70px"}, layout=wide)
        self.criterion.add_class("prunelab-criterion")
        self.granularity = w.ToggleButtons(options=GRANULARITIES, value=state.granularity,
                                           style={"button_width": "104px"})
        self.granularity.add_class("prunelab-granularity")
        self.mode = w.ToggleButtons(options=[(MODE_LABELS[m][0], m) for m in MODES],
                                    value=state.mode, style={"button_width": "157px"},  # "|w| threshold" whole
                                    tooltips=[MODE_LABELS[m][1] for m in MODES])
        self.mode.add_class("prunelab-mode")
        button = dict(layout=w.Layout(width="78px"))
        self.reset = w.Button(description="reset", icon="undo-alt", tooltip="back to the original weights", **button)
        self.undo = w.Button(description="undo", icon="arrow-left", **button)
        self.redo = w.Button(description="redo", icon="arrow-right", **button)
        for b in (self.reset, self.undo, self.redo):
            b.add_class(f"prunelab-{b.description}")

        self.layer_sliders: dict[str, w.FloatSlider] = {}
        self.layer_labels: dict[str, w.HTML] = {}
        rows = []
        for l in pruner.layers:
            # a long name (features.0.block.1) is shortened in the middle; the tooltip has it whole
            s = w.FloatSlider(value=0.0, description=short_name(l.name), layout=w.Layout(width="205px"),
                              style={"description_width": "62px"},
                              tooltip=f"{l.describe()}: fraction of its weights (units, for structured) removed",
                              **slider)
            s.add_class("prunelab-layer-slider")
            label = w.HTML(layout=w.Layout(width="118px"))
            self.layer_sliders[l.name], self.layer_labels[l.name] = s, label
            self._on(s, f"layer:{l.name}", lambda value, name=l.name: self._layer_moved(name, value))
            rows.append(w.HBox([s, label], layout=w.Layout(align_items="center")))
        self.layers_box = w.VBox(rows, layout=w.Layout(max_height="330px", overflow="auto"))
        self.layers_box.add_class("prunelab-layers")

        self.layer_select = w.Dropdown(options=[(l.describe(), l.name) for l in pruner.layers],
                                       value=state.layer or pruner.layers[0].name, description="details of",
                                       style={"description_width": "70px"}, layout=wide)
        self.layer_select.add_class("prunelab-layer-select")
        self.message = w.HTML()
        self.message.add_class("prunelab-message")

        self._on(self.global_slider, "global", self._global_moved)
        self._on(self.threshold_slider, "threshold", self._threshold_moved)
        self._on(self.criterion, "criterion", lambda value: self._choice("criterion", value))
        self._on(self.granularity, "granularity", lambda value: self._choice("granularity", value))
        self._on(self.mode, "mode", lambda value: self._choice("mode", value))
        self._on(self.layer_select, "layer", lambda value: setattr(state, "layer", value))
        state.observe(lambda c: setattr(self.layer_select, "value", c["new"]), "layer")
        state.observe(self._show_choice, ["criterion", "granularity", "mode"])
        self._origin: Action | None = None  # the action whose state the next paced sync shows
        self._sync_pacer = Pacer(lambda: self.sync(self._origin), later, "controls")
        state.observe(self._request_sync, "revision")
        for button, run in ((self.reset, pruner.reset), (self.undo, pruner.undo), (self.redo, pruner.redo)):
            action = Action(kind=button.description, run=run)
            button.on_click(lambda _, action=action: self.post(action.kind, lambda: self.apply(action)))

        heading = lambda text: w.HTML(f'<div style="{SMALL}; font-weight:600; margin-top:6px">{text}</div>')  # noqa
        self.amount_box = w.VBox([self.global_slider, self.global_note])
        self.widget = w.VBox([
            heading("Prune by"), self.criterion, self.granularity, self.mode, self.amount_box,
            w.HBox([self.reset, self.undo, self.redo]),
            heading("Per layer (name · shape · weights · now zero)"), self.layers_box,
            heading("Detail views"), self.layer_select, self.message,
        ], layout=w.Layout(width="360px", padding="0 8px 0 0"))
        self.widget.add_class("prunelab-controls")
        self.sync()

    # -------------------------------------------------------------- gestures -> actions

    def _on(self, widget: w.ValueWidget, key: str, handler: Callable[[object], None]):
        """Run ``handler(new value)`` for a person's change of ``widget``, on the main thread.

        JupyterLab delivers widget messages on a kernel subshell thread, so the handler is posted
        to the main thread (where the Pruner and the views live); a drag's values posted before
        the main thread gets to them collapse into the last. Changes made by ``sync()`` (on the
        main thread) are not gestures and are ignored."""

        def observer(change):
            if self._syncing and threading.current_thread() is threading.main_thread():
                return
            value = change["new"]
            self.post(key, lambda: handler(value))

        widget.observe(observer, "value")

    def _global_moved(self, value: float):
        if self._syncing:
            return
        crit, gran = self.state.criterion, self.state.granularity
        if gran == "2:4":
            value = self._snap(self.global_slider, value)

        self.apply(Action(kind="global", run=lambda: self._commit(
            {**self._uncovered_cleared(gran), **amount_plans(self.pruner, value, crit, gran, "global")})))

    def _layer_moved(self, name: str, value: float):
        if self._syncing:
            return
        crit, gran = self.state.criterion, self.state.granularity
        if gran == "2:4":
            value = self._snap(self.layer_sliders[name], value)
        self.apply(Action(kind="layer", layer=name,
                          run=lambda: self._commit(amount_plans(self.pruner, {name: value}, crit, gran, "global"))))

    def _threshold_moved(self, value: float):
        if self._syncing or self.state.mode != "threshold":
            return
        gran = self.state.granularity
        self.state.threshold = value
        self.apply(Action(kind="threshold", run=lambda: self._commit(
            {**self._uncovered_cleared(gran), **threshold_plans(self.pruner, value, "magnitude", gran)})))

    def _commit(self, changes: dict) -> bool:
        """Apply one gesture's plan changes as one step of history; none when nothing would change.

        Returns:
            True when the Pruner changed (``Explorer.apply`` clears ``state.action`` otherwise).
        """
        if same_plans(self.pruner.plans, changes):
            return False
        self.pruner.set_plans(changes)
        return True

    def _snap(self, slider: w.FloatSlider, value: float) -> float:
        """2:4 removes exactly half: the slider snaps to 0 or 50%."""
        snapped = 0.5 if value >= 0.25 else 0.0
        if snapped != value:
            with self._quiet():
                slider.value = snapped
        return snapped

    def uncovered(self, granularity: str) -> dict[str, str]:
        """Layers that ``granularity`` cannot prune, with the reason.

        Args:
            granularity: one of ``prunelab.core.checks.GRANULARITIES``.

        Returns:
            ``{layer name: why}``; empty for unstructured.

        Example:
            >>> "4" in controls.uncovered("structured")   # digits-mlp: its outputs cannot go
            True
        """
        return self.pruner.blocked(granularity)

    def _uncovered_cleared(self, granularity: str) -> dict:
        """Layers the new granularity cannot prune but that are pruned another way become dense
        (``{layer: None}``), in the same step as the rest of the gesture, so that one granularity
        rules the state a global slider shows."""
        blocked = self.uncovered(granularity)
        return {n: None for n, p in self.pruner.plans.items() if n in blocked and p.granularity != granularity}

    def _choice(self, name: str, value: str):
        """A new criterion, granularity or mode: re-apply what is set now under the new choice."""
        if self._syncing:
            return
        setattr(self.state, name, value)  # the widgets follow the state (_show_choice)
        # A |w| threshold cannot give a 2:4 pattern: picking one leaves the other.
        if name == "mode" and value == "threshold" and self.state.granularity == "2:4":
            self.state.granularity = "unstructured"
        if name == "granularity" and value == "2:4" and self.state.mode == "threshold":
            self.state.mode = "amount"
        if name == "mode" and value == "threshold":
            self._fit_threshold_range()
        if self.state.mode == "threshold":
            self._threshold_moved(self.threshold_slider.value)
        elif self.state.driver == "layers" and name != "mode":
            crit, gran = self.state.criterion, self.state.granularity
            skip = self.uncovered(gran)
            amounts = {n: (0.5 if gran == "2:4" else s.value) for n, s in self.layer_sliders.items()
                       if s.value > 0 and n not in skip}

            self.apply(Action(kind="layers", run=lambda: self._commit(
                {**self._uncovered_cleared(gran), **(amount_plans(self.pruner, amounts, crit, gran, "global")
                                                     if amounts else {})})))
        elif self.global_slider.value > 0 or self.pruner.plans:
            self._global_moved(self.global_slider.value)

    def _fit_threshold_range(self):
        """The |w| slider's range from the weights kept now, starting at the |w| that gives the
        sparsity in effect (slider_values.threshold_range)."""
        if self.state.reference is None:
            return
        lo, hi, step, at = threshold_range(self.pruner, self.state.reference, start=self._equivalent_threshold())
        s = self.threshold_slider
        with self._quiet():
            s.min, s.max = min(lo, s.min), max(hi, s.max)  # widen first: the value must stay inside
            s.step, s.value = step, 10 ** at
            s.min, s.max = lo, hi
        self._ranged_version = self.pruner.weights_version

    def _equivalent_threshold(self) -> float:
        """The |w| below which the current overall sparsity's share of weights lies."""
        ref = self.state.reference
        sparsity = self.pruner.overall_sparsity()
        if ref is None or sparsity <= 0:
            return 0.0
        magnitudes = np.concatenate([ref.abs_flat(l.name) for l in self.pruner.layers])
        return float(np.quantile(magnitudes, sparsity))

    # -------------------------------------------------------------- following the Pruner

    @contextlib.contextmanager
    def _quiet(self):
        """Set widget values without their observers acting (sync, snapping)."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def _show_choice(self, change):
        """A choice in the state (from a person, a state made elsewhere, or Python): show it."""
        widget = {"criterion": self.criterion, "granularity": self.granularity, "mode": self.mode}[change["name"]]
        with self._quiet():
            widget.value = change["new"]
        self._show_mode()

    def _show_mode(self):
        threshold = self.state.mode == "threshold"
        self.amount_box.children = [self.threshold_slider] if threshold else [self.global_slider, self.global_note]
        structured = self.state.granularity == "structured"
        self.global_slider.tooltip = ("fraction of the units that can go removed (whole rows and filters)" if structured
                                      else "fraction of all prunable weights removed")
        self.global_note.value = (f'<div style="{SMALL}; margin-left:64px">of units (whole rows, filters) · '
                                  f'<b>{self.pruner.overall_sparsity():.1%}</b> of weights</div>' if structured else "")
        self.criterion.disabled = threshold  # an absolute |w| threshold is a magnitude criterion
        blocked = self.uncovered(self.state.granularity)
        for name, s in self.layer_sliders.items():
            s.disabled = name in blocked
            s.tooltip = (f"cannot prune {name} as {self.state.granularity}: {blocked[name]}" if name in blocked
                         else f"{self.pruner.layer(name).describe()}: fraction removed")

    def _request_sync(self, change=None):
        """A new state: the controls follow it, paced (the latest state's action decides which
        slider a person is dragging, and so stays where the person put it)."""
        self._origin = self.state.action
        self._sync_pacer.request()

    def sync(self, action: Action | None = None):
        """Move every control to the Pruner's state, without acting on it (runs, paced, when the
        state's ``revision`` moves).

        Args:
            action: the action that made the state (default: the state's ``action``); after a
                global one the global slider stays where the person dragged it.

        Returns:
            None.

        Example:
            >>> controls.sync()   # after the Pruner changed with no explorer following it
        """
        plans = self.pruner.plans
        sparsity = self.pruner.sparsity()
        action = action if action is not None else self.state.action
        origin = action.kind if action is not None else None
        if origin in (None, "reset", "undo", "redo"):  # a state made elsewhere: show how it was pruned
            self._adopt_choices(plans)
        with self._quiet():
            if origin != "global":  # the value a person dragged to stays
                self.global_slider.value = on_step(slider_fraction(self.pruner, self.state.granularity))
            for l in self.pruner.layers:
                plan = plans.get(l.name)
                self.layer_sliders[l.name].value = on_step(plan.amount) if plan and plan.amount is not None else 0.0
                zero = sparsity[l.name]
                self.layer_labels[l.name].value = (
                    f'<div style="{SMALL}" title="{html.escape(l.describe())}">{l.kind} '
                    f'{"×".join(map(str, l.shape))}<br>{si(l.params).replace(" ", "")} · <b>{zero:.0%}</b> zero</div>')
        self.undo.disabled = not self.pruner.can_undo
        self.redo.disabled = not self.pruner.can_redo
        if self.state.mode == "threshold" and self._ranged_version != self.pruner.weights_version:
            self._fit_threshold_range()  # new weights (a fine-tune): a range of theirs
        self._show_mode()

    def _adopt_choices(self, plans):
        """Set the criterion and granularity choices to the state's, when all layers share them."""
        crits = {p.criterion for p in plans.values()}
        grans = {p.granularity for p in plans.values()}
        if len(crits) == 1 and next(iter(crits)) in CRITERION_ORDER and self.state.mode == "amount":
            self.state.criterion = next(iter(crits))
        if len(grans) == 1:
            self.state.granularity = next(iter(grans))

    def show_message(self, text: str, error: bool = False):
        """Show ``text`` under the controls (red when ``error``); ``""`` clears it. Returns None.

        Example: ``controls.show_message("computing taylor scores in the background…")``.
        """
        colour = "#c0392b" if error else "#555"
        self.message.value = f'<div style="{SMALL}; color:{colour}">{html.escape(text)}</div>' if text else ""
