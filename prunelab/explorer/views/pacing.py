"""Pacing a heavy view during a drag: it waits until the changes settle (no new state for
``SETTLE_S``), then draws the latest state once; while states keep coming it draws at most once
every ``HOLD_S`` (the states in between are skipped, the last one always drawn). Measured in the
page (bench/browser_latency.py --trace): each heavy repaint costs the page's main thread a few
hundred ms of script, style and layout, and while it works the page cannot take the slider's
mouse moves, so repainting during a drag made the drag itself lag several seconds behind the hand.

The readout is paced with a short interval and no settling (``READOUT_S``): it follows a drag at
the page's frame rate and shows the final state at most that long after it was measured. A view
that is not shown (its tab hidden) does not redraw at all; it draws the latest state once it is
shown again (``Pacer.show``).

A paced view also waits for the page: while the page has not yet applied the view's last patch
(``ready()`` is False: the page is busy painting), the redraw waits, up to ``PAGE_WAIT_S``, so that
a slow page gets fewer states instead of a queue of them."""

from __future__ import annotations

import time
from typing import Callable

REDRAW_S = 0.3   # at least this long between two redraws of a heavy view
SETTLE_S = 0.2   # a heavy view draws once no new state came for this long (a hand's drag sends one every ~40 ms)
HOLD_S = 2.0     # ...or once this long after the first state it has not drawn, if states keep coming
READOUT_S = 0.05  # the readout (numbers only) at most twenty times a second, at once
PAGE_WAIT_S = 1.0  # a view waits at most this long for the page to apply its last patch


class Pacer:
    """Calls ``fn`` for the latest state: once the requests pause for ``settle`` s, or ``hold`` s
    after the first request not yet drawn, and never twice within ``interval`` s.

    Args:
        fn: the redraw, taking no arguments (it reads the current state itself).
        later: ``later(key, delay, fn)`` (``Scheduler.later``, a debounce by key) to call the
            redraw when due; None: every request redraws at once (no event loop: scripts and tests).
        key: the timer's name. interval: seconds between redraws at least. clock: for tests.
        settle: seconds without a new request before the redraw (0: draw at once when
            ``interval`` allows, as the readout does). hold: the longest a request waits while
            requests keep coming.
        ready: ``ready()`` is False while the page still works on the last redraw (then the redraw
            waits for it, checking every ``interval / 3`` s); None: never waits.

    Example:
        >>> pacer = Pacer(view.refresh, later=scheduler.later, key="weights")
        >>> state.observe(pacer.request, "revision")
    """

    def __init__(self, fn: Callable[[], None], later=None, key: str = "pace", interval: float = REDRAW_S,
                 clock: Callable[[], float] = time.monotonic, ready: Callable[[], bool] | None = None,
                 settle: float = SETTLE_S, hold: float = HOLD_S):
        self.fn, self.later, self.key, self.interval, self.clock = fn, later, f"pace:{key}", interval, clock
        self.settle, self.hold = settle, hold
        self.ready = ready or (lambda: True)
        self._last = -float("inf")
        self._first = 0.0  # when the first request not yet drawn came
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
        if self.shown and self._stale:  # a person opened the tab: nothing to wait for
            self._stale = False
            self._run()

    def request(self, change=None) -> None:
        """A new state to show: redraw now if it is due (see the class), else once, when due."""
        if not self.shown:
            self._stale = True
            return
        if self.later is None:
            self._run()
            return
        now = self.clock()
        if not self._pending:
            self._first = now
        due = max(self._last + self.interval, min(now + self.settle, self._first + self.hold))
        if due <= now and not self._pending and self.ready():
            self._run()
            return
        self._pending = True
        # re-armed by every request (later debounces by key): the redraw waits for the pause
        self.later(self.key, max(due - now, 0.0), self._trailing)

    def _trailing(self) -> None:
        if not self.shown:  # hidden meanwhile: draw when shown
            self._pending = False
            self._stale = True
            return
        if not self.ready():  # the page is still drawing the last state: look again shortly
            self.later(self.key, self.interval / 3, self._trailing)
            return
        self._pending = False
        self._run()

    def _run(self) -> None:
        self._last = self.clock()
        self.calls += 1
        self.fn()
