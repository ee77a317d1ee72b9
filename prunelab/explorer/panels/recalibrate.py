"""Recovery without training, beside the raw number: "after recalibration: N% (+x pts)".

For every state the explorer shows, :class:`prunelab.retrain.RecalibrateJob` (the same job as
``pruner.recalibrate()``) is prepared on the kernel's main thread once changes settle, run on the
explorer's background :class:`~prunelab.explorer.background.Scheduler` (on a private copy: the
Pruner is untouched), and its measured accuracy shown beside the raw readout (:attr:`inline`).
A result of a state the Pruner has left is dropped. **Apply** makes it one step of history
(``job.apply()``): undo returns to the raw pruned state. Shown only for models with BatchNorm
(running statistics to re-estimate); elsewhere the readout is hidden and the tab says why.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
from torch import nn

from ...retrain.loop import keeps_statistics
from ...retrain.recalibration import RecalibrateJob, RecalibrateSettings
from ..background import Scheduler
from .base import Panel

SETTLE_S = 0.4  # quiet time after the last change before the recalibration is measured
KEY = "recalibration"
NO_NORM = ("no BatchNorm with running statistics in this model: recalibration re-estimates those, so there is "
           "nothing to recover without training here (fine-tune instead).")


def has_running_norm(model: nn.Module) -> bool:
    """True when ``model`` has a normalization layer with running statistics (BatchNorm, or
    InstanceNorm tracking them): what recalibration re-estimates
    (:func:`prunelab.retrain.loop.keeps_statistics`, the one rule).

    Args:
        model: a torch module.

    Returns:
        True or False.

    Example:
        >>> has_running_norm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
        True
    """
    return any(keeps_statistics(m) for m in model.modules())


class RecalibratePanel(Panel):
    """The measured recalibration of the current state, with one click to apply it.

    Args:
        pruner: the Pruner (changed only by **Apply**, on the main thread).
        state: the explorer's state hub (default: the panel's own, following ``pruner``).
        post: runs clicks on the kernel's main thread (default: the panel's own Scheduler).
        scheduler: the explorer's Scheduler (background work, debounce); default: a new one.
        settings: a :class:`prunelab.retrain.RecalibrateSettings` (default: its defaults).
        settle: seconds without a change before measuring.

    Attributes:
        inline: the readout and the Apply button, laid out beside the explorer's raw readout.
        result: the :class:`prunelab.retrain.Recalibration` measured for the current state (None
            while measuring, or when there is nothing to measure).

    Example:
        >>> panel = RecalibratePanel(pruner, scheduler=Scheduler())          # doctest: +SKIP
        >>> pruner.prune(0.3, granularity="structured"); panel.scheduler.wait()  # doctest: +SKIP
        >>> panel.label.value    # '... after recalibration: 95.8% (+10.2 pts) ...'  # doctest: +SKIP
        >>> panel.apply_button.click()   # one step of history; pruner.undo() returns   # doctest: +SKIP
    """

    title = "Recover"

    def __init__(self, pruner, state=None, post=None, *, scheduler: Scheduler | None = None,
                 settings: RecalibrateSettings | None = None, settle: float = SETTLE_S):
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.settings = settings if settings is not None else RecalibrateSettings()
        self.settle = settle
        self.available = has_running_norm(pruner.model)
        self.result = None
        self._job: RecalibrateJob | None = None
        self._recalibrated: set = set()  # history tokens of steps this panel applied
        self._applying = False
        super().__init__(pruner, state, post)
        self.watch(lambda _: self.follow(), "revision")
        self.follow()

    def build(self) -> list[widgets.Widget]:
        """The readout and Apply button (also :attr:`inline`), and a line of details."""
        self.label = widgets.HTML()
        self.label.add_class("prunelab-recalibration")
        self.apply_button = widgets.Button(description="Apply", icon="magic", disabled=True,
                                           tooltip="re-estimate BatchNorm statistics (and compensate biases): one "
                                                   "step of history, undo returns to the raw pruned state",
                                           layout=widgets.Layout(width="84px", min_width="84px", height="26px"))
        self.apply_button.add_class("prunelab-recalibrate-apply")
        self.apply_button.on_click(lambda _: self.post("recalibrate:apply", self.apply))
        self.details = widgets.HTML()
        # beside the readout, which wraps first: squeezed, Apply showed as "…"
        self.inline = widgets.HBox([self.label, self.apply_button],
                                   layout=widgets.Layout(align_items="center", margin="0 0 0 12px", flex="0 0 auto"))
        self.inline.add_class("prunelab-recalibrate")
        if not self.available:
            self.inline.layout.display = "none"
        about = ("<b>Recovery without training</b><br><span style='color:#555'>BatchNorm statistics re-estimated on "
                 "training data after pruning, and the mean of removed units folded into the next layer's bias "
                 "(kept only when it lowers the calibration loss): measured for every state, applied with one "
                 "click as one step of history.</span>")
        return [widgets.HTML(about), self.inline, self.details]

    # ------------------------------------------------------------------ following the Pruner

    def follow(self) -> None:
        """Show what the current state needs: nothing (dense), 'recalibrated', or a new
        measurement once changes settle (on the main thread; the state hub calls it).

        Returns:
            None.
        """
        if self._applying:
            return
        self.scheduler.cancel(KEY)
        self._job, self.result = None, None
        self.apply_button.disabled = True
        if not self.available:
            self.details.value = f"<span style='color:#555'>{html.escape(NO_NORM)}</span>"
            return
        p = self.pruner
        if p.history.current.token in self._recalibrated:
            self._say("recalibrated · undo returns to the raw pruned state", "#3a9a5b")
            return
        if not p.plans:
            self._say("")
            self.details.value = "<span style='color:#555'>Nothing is pruned: nothing to recover.</span>"
            return
        self._say("after recalibration: measuring…", "#888")
        self.scheduler.later(KEY, self.settle, self.start)

    def start(self) -> None:
        """Measure the recalibration of the current state now (prepared here, run in the background).

        Returns:
            None. Example: ``panel.start(); panel.scheduler.wait(); panel.result.gain``.
        """
        p = self.pruner
        try:
            job = RecalibrateJob(p, self.settings).prepare()
        except (ValueError, TypeError) as e:
            self._say("after recalibration: not available", "#888")
            self.details.value = f"<span style='color:#b00020'>{html.escape(str(e))}</span>"
            return
        token = p.history.current.token

        def done(result):
            if p.history.current.token != token:
                return  # the Pruner moved on: a newer measurement is on its way
            self._job, self.result = job, result
            if not result.applied:
                self._say("after recalibration: nothing to change", "#888")
            else:
                colour = "#3a9a5b" if result.gain > 1e-9 else ("#c0392b" if result.gain < -1e-9 else "#666")
                self._say(result.readout(), colour)
                self.apply_button.disabled = False
            self.details.value = f"<span style='color:#555'>{html.escape(str(result))}</span>"

        def failed(error):
            if p.history.current.token == token:
                self._say("after recalibration: failed", "#b00020")
                self.details.value = f"<span style='color:#b00020'>{html.escape(str(error))}</span>"

        self.scheduler.submit(KEY, "recalibration", lambda progress: job.run(), done, failed)

    # ------------------------------------------------------------------ acting

    def apply(self):
        """Apply the measured recalibration: ONE step of history (``pruner.undo()`` returns).

        Returns:
            The :class:`prunelab.retrain.Recalibration` applied, or None when there was none
            for the current state (the readout says why).

        Example: ``panel.apply().accuracy_after == pruner.evaluate().accuracy``.
        """
        job = self._job
        if job is None:
            self._say("after recalibration: not measured for this state yet", "#888")
            return None
        self._applying = True
        try:
            result = job.apply()
        except RuntimeError as e:
            self.details.value = f"<span style='color:#b00020'>{html.escape(str(e))}</span>"
            return None
        finally:
            self._applying = False
        self._recalibrated.add(self.pruner.history.current.token)
        self.follow()
        self.details.value = f"<span style='color:#555'>Applied: {html.escape(str(result))}</span>"
        return result

    def _say(self, text: str, colour: str = "#333") -> None:
        self.label.value = (f"<span style='font-size:13px; color:{colour}'>{html.escape(text)}</span>" if text else "")

    def close(self) -> None:
        """Stop measuring and close (the readout beside the raw one with it)."""
        self.scheduler.cancel(KEY)
        self.inline.close()
        super().close()
