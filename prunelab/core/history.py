"""History: immutable steps of a Pruner's state, a cursor, and undo/redo.

A :class:`Step` is what decides the model's weights: the plans per layer, the unmasked weights
they mask, a name for those weights (``weights_version``), a token naming the step (measurements
are cached by it) and the buffers it recorded (BatchNorm statistics re-estimated by
``pruner.recalibrate()``; steps that did not change them share one object with the step before). Steps are never changed, only replaced, so stepping back is exact by
construction, and ``reset`` re-enters the very first step (:attr:`History.original`).

The recipe writer walks the steps up to the cursor through :class:`HistoryView`, which
``pruner.history`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch


@dataclass(frozen=True)
class Step:
    """One state of a Pruner.

    Attributes:
        plans: ``{layer name: Plan}`` in effect (layers absent are dense).
        weights: the unmasked weights, ``{parameter name: tensor}`` (shared between steps that
            did not change them, so ``a.weights is b.weights`` says "same weights").
        weights_version: names ``weights``; a new one for every new set of weights, never reused.
        token: names this step; unique for good.
        buffers: ``{buffer name: tensor}`` this step writes into the model when entered from a step
            with other buffers (``a.buffers is b.buffers``: same buffers, nothing written); None:
            not recorded (the model's buffers stay as they are).
    """

    plans: Mapping[str, object]
    weights: Mapping[str, torch.Tensor]
    weights_version: int
    token: int
    buffers: Mapping[str, torch.Tensor] | None = None


class History:
    """Steps with a cursor. Pushing a step drops the steps that redo would have re-entered.

    Args:
        original: the first step (the state the Pruner was made in).

    Example:
        >>> h = History(Step({}, {}, 0, 0))
        >>> step = h.push(Step({}, {}, 0, h.new_token()))
        >>> h.undo() is h.original, h.redo() is step
        (True, True)
    """

    def __init__(self, original: Step):
        self.original = original
        self._steps = [original]
        self._cursor = 0
        self._next_token = max(original.token, original.weights_version) + 1

    @property
    def current(self) -> Step:
        """The step in effect."""
        return self._steps[self._cursor]

    @property
    def cursor(self) -> int:
        """Index of the current step (0: the original)."""
        return self._cursor

    def __len__(self) -> int:
        return len(self._steps)

    def new_token(self) -> int:
        """A number never handed out before by this history (for tokens and weights versions)."""
        self._next_token += 1
        return self._next_token - 1

    def push(self, step: Step) -> Step:
        """Make ``step`` current after the current one (redo steps are dropped). Returns it."""
        del self._steps[self._cursor + 1:]
        self._steps.append(step)
        self._cursor += 1
        return step

    @property
    def can_undo(self) -> bool:
        return self._cursor > 0

    @property
    def can_redo(self) -> bool:
        return self._cursor + 1 < len(self._steps)

    def undo(self) -> Step | None:
        """Step back; the step now current, or None (nothing changed) at the original."""
        if not self.can_undo:
            return None
        self._cursor -= 1
        return self.current

    def redo(self) -> Step | None:
        """Step forward; the step now current, or None (nothing changed) at the newest step."""
        if not self.can_redo:
            return None
        self._cursor += 1
        return self.current

    def snapshot(self) -> tuple:
        """What :meth:`restore` needs to undo a push, undo or redo that failed part way."""
        return list(self._steps), self._cursor

    def restore(self, snapshot: tuple) -> None:
        """Put the steps and the cursor back as :meth:`snapshot` found them (tokens handed out
        meanwhile stay used, so none is ever reused)."""
        self._steps, self._cursor = list(snapshot[0]), snapshot[1]

    def view(self) -> "HistoryView":
        """A read-only view of this history."""
        return HistoryView(self)


class HistoryView:
    """Read-only view of a Pruner's :class:`History` (``pruner.history``).

    Example:
        >>> pruner.prune(0.5)                                    # doctest: +SKIP
        >>> h = pruner.history
        >>> len(h.steps), h.cursor, h.steps[0] is h.original     # doctest: +SKIP
        (2, 1, True)
    """

    def __init__(self, history: History):
        self._history = history

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps from the original up to and including the current one (undone steps excluded)."""
        h = self._history
        return tuple(h._steps[: h.cursor + 1])

    @property
    def original(self) -> Step:
        """The first step: the Pruner's state when it was made (``reset`` re-enters this object)."""
        return self._history.original

    @property
    def current(self) -> Step:
        """The step in effect."""
        return self._history.current

    @property
    def cursor(self) -> int:
        """Index of the current step in the history (0: the original)."""
        return self._history.cursor

    def __len__(self) -> int:
        """Steps held, including those that redo would re-enter."""
        return len(self._history)

    def __repr__(self) -> str:
        return f"HistoryView({len(self)} steps, cursor {self.cursor})"
