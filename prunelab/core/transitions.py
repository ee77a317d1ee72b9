"""Moving a Pruner from one history step to another, all or nothing.

A change is planned and checked first (by the caller: :mod:`.planning`, :mod:`.checks`); here
it becomes a step of :mod:`.history` and is written into the model by :mod:`.maskstate`. When
anything fails on the way, a KeyboardInterrupt included, the history is put back as it was and
the mask state puts every parameter back itself, so the model, the history and the masks agree
again; the listeners hear only of changes that happened.
"""

from __future__ import annotations

from typing import Callable, Mapping

from .checks import check_weights
from .history import History, Step
from .maskstate import MaskState
from .planning import merge_plans


class Transitions:
    """Commits and moves over one history and one mask state.

    Args:
        history: the Pruner's :class:`~prunelab.core.history.History`.
        masks: its :class:`~prunelab.core.maskstate.MaskState`.
        unit_groups: returns the unit groups by layer name (for merging structured plans).
        notify: called after every change that happened.

    Example:
        >>> moves = Transitions(history, masks, pruner.unit_groups, lambda: None)  # doctest: +SKIP
        >>> moves.commit({"0": plan})                                            # doctest: +SKIP
    """

    def __init__(self, history: History, masks: MaskState, unit_groups: Callable, notify: Callable[[], None]):
        self.history, self.masks, self.unit_groups, self.notify = history, masks, unit_groups, notify
        self.before = history.current  # the step the masks were last written for

    def commit(self, changes: Mapping, weights: Mapping | None = None, everything: bool = False,
               buffers: Mapping | None = None) -> None:
        """``changes`` (``{layer: Plan or None}``) and optionally new unmasked ``weights`` and new
        ``buffers`` (``{buffer name: tensor}``, those named; the others as they are) as one new
        step. ``everything``: rewrite every parameter (they were changed from outside)."""
        now = self.history.current
        if buffers is not None:
            buffers = check_weights(buffers, now.buffers or {}, "buffer")
        if weights is None:
            weights, version = now.weights, now.weights_version
        else:  # a new version, unique for good: history can be cut, and scores are cached by version
            weights, version = check_weights(weights, now.weights), self.history.new_token()
        plans = merge_plans(now.plans, changes, self.unit_groups)
        step = Step(plans, weights, version, self.history.new_token(), now.buffers if buffers is None else buffers)
        self.enter(lambda: self.history.push(step), everything)

    def enter(self, move: Callable[[], Step | None], everything: bool = False) -> bool:
        """Move the history (``move``: push, undo or redo) and write the step it lands on.

        Returns: whether anything changed (False: ``move`` found nothing to do).
        """
        snapshot = self.history.snapshot()
        try:
            step = move()
            if step is None:
                return False
            moved = step.buffers is not self.before.buffers and step.buffers is not None
            try:  # the buffers first (all or nothing), then the masks (all or nothing)
                if moved:
                    self.masks.restore_buffers(step.buffers)
                self.masks.enter(self.before.plans, step.plans, step.weights, everything)
            except BaseException:
                if moved and self.before.buffers is not None:
                    self.masks.restore_buffers(self.before.buffers)
                raise
        except BaseException:
            self.history.restore(snapshot)
            raise
        self.before = step
        self.notify()
        return True

    def reset(self, everything: bool = False) -> None:
        """Back to the original step (recorded unless already there) and the original buffers.
        ``everything``: the weights were changed from outside, so rewrite them all."""
        now, original = self.history.current, self.history.original
        at_original = not now.plans and now.weights is original.weights and now.buffers is original.buffers
        if not at_original:
            self.enter(lambda: self.history.push(original), everything)
        elif everything:
            self.masks.enter(now.plans, now.plans, now.weights, everything=True)
        if self.masks.restore_buffers() or (everything and at_original):
            self.notify()
