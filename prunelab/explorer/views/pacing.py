"""Pacing a heavy view during a drag: redraw at once, then at most every ``interval`` seconds
while changes keep coming, and always once more for the latest state (leading and trailing
edges; the states in between are skipped, the last one always drawn). The readout is paced too,
with a short interval (``READOUT_S``): it follows a drag at the page's frame rate and shows the
final state at most that long after it was measured. A view that is not shown (its tab hidden)
does not redraw at all; it draws the latest state once it is shown again (``Pacer.show``).

A paced view also waits for the page: while the page has not yet applied the view's last patch
(``ready()`` is False: the page is busy painting), the redraw waits, up to ``PAGE_WAIT_S``, so that
a slow page gets fewer states instead of a queue of them."""

from __future__ import annotations

import time
from typing import Callable

REDRAW_S = 0.3   # a heavy view redraws at most about three times a second during a drag
READOUT_S = 0.05  # the readout (numbers only) at most twenty times a second
PAGE_WAIT_S = 1.0  # a view waits at most this long for the page to apply its last patch


class Pacer:
    """Calls ``fn`` for the latest state, at most once per ``interval`` while requests keep coming.

    Args:
        fn: the redraw, taking no arguments (it reads the current state itself).
        later: ``later(key, delay, fn)`` (``Scheduler.later``) to call the trailing redraw; None:
            every request redraws at once (no event loop: scripts and tests).
        key: the timer's name. interval: seconds between redraws at most. clock: for tests.
        ready: ``ready()`` is False while the page still works on the last redraw (then the redraw
            waits for it, checking every ``interval / 3`` s); None: never waits.

    Example:
        >>> pacer = Pacer(view.refresh, later=scheduler.later, key="weights")
        >>> state.observe(pacer.request, "revision")
    """

    def __init__(self, fn: Callable[[], None], later=None, key: str = "pace", interval: float = REDRAW_S,
                 clock: Callable[[], float] = time.monotonic, ready: Callable[[], bool] | None = None):
        self.fn, self.later, self.key, self.interval, self.clock = fn, later, f"pace:{key}", interval, clock
        self.ready = ready or (lambda: True)
        self._last = -float("inf")
        self._pending = False
        self._stale = False  # a request came while hidden
        self.shown = True
        self.calls = 0  # redraws done (for benchmarks and tests)

    def show(self, shown: bool) -> None:
        """Whether what this pacer redraws is on screen: while hidden, requests only mark it stale;
        shown again, it redraws once if a request came meanwhile.

        Args:
            shown: True when the view is visible (its tab selected).

        Returns:
            None.

        Example:
            >>> pacer.show(False); pacer.request()   # nothing drawn
            >>> pacer.show(True)                     # draws the latest state now
        """
        self.shown = bool(shown)
        if self.shown and self._stale:
            self._stale = False
            self.request()

    def request(self, change=None) -> None:
        """A new state to show: redraw now if the last redraw is old enough, else once, later."""
        if not self.shown:
            self._stale = True
            return
        if self.later is None:
            self._run()
            return
        if self._pending:
            return  # the trailing redraw already on its way will read the latest state
        wait = self.interval - (self.clock() - self._last)
        if wait <= 0 and self.ready():
            self._run()
        else:
            self._pending = True
            self.later(self.key, max(wait, self.interval / 3), self._trailing)

    def _trailing(self) -> None:
        self._pending = False
        if not self.shown:  # hidden meanwhile: draw when shown
            self._stale = True
            return
        if not self.ready():  # the page is still drawing the last state: look again shortly
            self._pending = True
            self.later(self.key, self.interval / 3, self._trailing)
            return
        self._run()

    def _run(self) -> None:
        self._last = self.clock()
        self.calls += 1
        self.fn()
