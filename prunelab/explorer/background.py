"""Keeping the kernel responsive: the one helper for running work on the kernel's main thread.

Inside a Jupyter kernel the main thread runs an asyncio loop, and JupyterLab delivers widget
messages on a subshell thread. The Pruner and the widgets are only touched on the main thread, so
everything that reacts to a person goes through one :class:`Scheduler` (the controls, the views,
the panels and the Explorer share the Explorer's):

- ``post(key, fn)`` runs ``fn`` on the main thread in the order posted (a drag's values posted
  before the main thread gets to them collapse into the last);
- ``soon(key, fn)`` folds many requests made in one turn of the loop into a single call;
- ``call(fn)`` runs ``fn`` at once when already on the main thread, else posts it there;
- ``later(key, delay, fn)`` waits for changes to settle (debounce);
- ``submit(key, label, work, done)`` runs long work on one worker thread and hands its result back
  on the main thread. Results of jobs that were superseded are dropped.

Without a running loop (plain scripts, tests) work asked for on the main thread runs at once; what
other threads post waits for ``drain()`` or ``wait()``, which also run the pending timers and
deliver finished jobs on the caller's thread.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class _Job:
    key: str
    label: str
    generation: int
    future: Future
    done: Callable[[Any], None]
    failed: Callable[[BaseException], None] | None
    delivered: bool = field(default=False)


class Scheduler:
    """Runs the explorer's main-thread, deferred and background work.

    The main thread is the thread that makes the Scheduler (in a notebook: the kernel's, while a
    cell runs), and its asyncio loop when one runs there.

    Args:
        on_busy: told ``on_busy(labels, fraction)``, on the main thread, which background jobs are
            running (an empty list when idle) and the progress of the latest (0..1, or None).

    Example:
        >>> s = Scheduler()
        >>> s.post("refresh", lambda: print("on the main thread"))  # no loop here: runs at once
        on the main thread
        >>> s.submit("job", "adding", lambda progress: 1 + 1, print)
        1
        >>> s.wait()  # scripts and tests: deliver what finished
        2
        >>> s.close()
    """

    def __init__(self, on_busy: Callable[[list[str], float | None], None] | None = None):
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._main = threading.current_thread()
        self._posted: list[Callable[[], None]] = []  # from other threads while no loop runs
        self._executor: ThreadPoolExecutor | None = None
        self._on_busy = on_busy or (lambda labels, fraction: None)
        self._generation: dict[str, int] = {}
        self._jobs: list[_Job] = []
        self._soon: dict[str, Callable[[], None]] = {}
        self._timers: dict[str, Any] = {}
        self._deferred: dict[str, Callable[[], None]] = {}
        self._progress: float | None = None
        self._queue: list[tuple[str, Callable[[], None]]] = []
        self._draining = False
        self._lock = threading.Lock()

    @property
    def main_thread(self) -> threading.Thread:
        """The thread this Scheduler runs main-thread work on."""
        return self._main

    @property
    def live(self) -> bool:
        """True inside a running event loop (a Jupyter kernel), where work can be deferred."""
        return self._loop is not None and self._loop.is_running() and not self._loop.is_closed()

    # ------------------------------------------------------------------ main thread

    def soon(self, key: str, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the main thread once the current burst of events is handled; several
        requests with the same key before then run once (the latest ``fn``). From any thread.

        Args: ``key`` names the request; ``fn`` takes no arguments. Returns: None.
        Example: ``scheduler.soon("refresh", explorer.refresh)`` (no loop: runs at once).
        """
        if not self.live:
            if threading.current_thread() is self._main:
                fn()
            else:  # no loop to post to: run it when the main thread next waits
                with self._lock:
                    self._deferred[key] = fn
            return
        with self._lock:
            first = key not in self._soon
            self._soon[key] = fn
        if first:
            self._loop.call_soon_threadsafe(self._run_soon, key)

    def _run_soon(self, key: str):
        with self._lock:
            fn = self._soon.pop(key, None)
        if fn is not None:
            fn()

    def post(self, key: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the main thread, in the order posted; from any thread. Consecutive posts
        with the same key that have not run yet keep only the latest (a drag ends at its last
        value). Runs at once on the main thread when there is no loop; an exception ``fn`` raises
        is printed and the queue goes on.

        Args: ``key`` names the request (``"global"``, ``"layer:0"``...); ``fn`` takes no arguments.
        Returns: None.
        Example: ``scheduler.post("export", panel.export)`` from a button's click handler.
        """
        if not self.live:
            if threading.current_thread() is self._main:
                fn()
            else:
                with self._lock:
                    self._posted.append(fn)
            return
        with self._lock:
            if self._queue and self._queue[-1][0] == key:
                self._queue[-1] = (key, fn)
                return
            self._queue.append((key, fn))
            if self._draining:
                return
            self._draining = True
        self._loop.call_soon_threadsafe(self._run_posted)

    def _run_posted(self):
        """Run what was posted so far; what arrives meanwhile waits one turn of the loop, so that
        refreshes requested by these actions run before the next batch."""
        with self._lock:
            batch, self._queue = self._queue, []
        for _key, fn in batch:
            try:
                fn()
            except Exception:  # one failing action must not stop the queue
                traceback.print_exc()
        with self._lock:
            if self._queue:
                self._loop.call_soon(self._run_posted)
            else:
                self._draining = False

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the main thread: at once when called there, else through its asyncio loop
        when one runs there (a Jupyter kernel), else queued until :meth:`drain` (scripts, tests).
        Unlike :meth:`post`, a call on the main thread never waits for the loop; a Scheduler made
        before its loop ran adopts the loop on the first call made inside it.

        Args: ``fn`` takes no arguments. Returns: None.
        Example: ``scheduler.call(lambda: panel.apply_step(step))`` from a worker thread.
        """
        if threading.current_thread() is self._main:
            if self._loop is None:  # made before the loop ran: adopt it once it does
                try:
                    self._loop = asyncio.get_running_loop()
                except RuntimeError:
                    pass
            fn()
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn)
        else:
            with self._lock:
                self._posted.append(fn)

    def drain(self) -> None:
        """Run, on this thread, what other threads posted while no loop ran (scripts, tests).

        Returns: None. Example: ``worker.join(); scheduler.drain()``.
        """
        while True:
            with self._lock:
                if not self._posted:
                    return
                fn = self._posted.pop(0)
            fn()

    def later(self, key: str, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` after ``delay`` seconds without a newer request for the same key (debounce);
        without a running loop it fires on :meth:`wait`.

        Args: ``key`` names the timer; ``delay`` in seconds; ``fn`` takes no arguments.
        Returns: None. Example: ``scheduler.later("explain", 0.4, explorer.explain)``.
        """
        self.cancel(key)
        if self.live:
            self._timers[key] = (self._loop.call_later(delay, self._fire, key, fn), fn)
        else:
            self._deferred[key] = fn

    def _fire(self, key: str, fn: Callable[[], None]):
        self._timers.pop(key, None)
        fn()

    def cancel(self, key: str) -> None:
        """Drop the pending timer (or deferred request) with this key, if any."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[0].cancel()
        self._deferred.pop(key, None)

    # ------------------------------------------------------------------ background jobs

    def submit(self, key: str, label: str, work: Callable[[Callable[[float], None]], Any],
               done: Callable[[Any], None], failed: Callable[[BaseException], None] | None = None) -> int:
        """Run ``work(progress)`` on the worker thread; ``done(result)`` runs on the main thread
        unless a newer job with the same key was submitted since (then the result is dropped, and
        the work skipped when it had not started).

        Args:
            key: names the job. label: what the busy indicator says while it runs.
            work: ``work(progress)`` on the worker thread; ``progress(fraction)`` reports 0..1.
            done, failed: ``done(result)`` / ``failed(exception)``, run on the main thread.

        Returns:
            The job's generation (see :meth:`current`).

        Example:
            >>> s = Scheduler()
            >>> s.submit("sum", "adding", lambda progress: 1 + 1, print)
            1
            >>> s.wait()
            2
        """
        generation = self._generation.get(key, 0) + 1
        self._generation[key] = generation
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prunelab-explorer")

        def run():
            # A newer job with this key is queued behind us: skip the work entirely.
            if self._generation.get(key) != generation:
                return _SKIPPED

            def progress(fraction: float) -> None:
                if self._generation.get(key) != generation:  # superseded, or closed: stop at this report
                    raise Superseded(key)
                self._report(fraction)
            return work(progress)

        job = _Job(key, label, generation, self._executor.submit(run), done, failed)
        self._jobs.append(job)
        job.future.add_done_callback(lambda _f, job=job: self._post(job))
        self._busy_changed()
        return generation

    def current(self, key: str, generation: int) -> bool:
        """True while ``generation`` is the latest job submitted with ``key``."""
        return self._generation.get(key) == generation

    def _report(self, fraction: float):
        """Progress from the worker thread, shown on the main thread."""
        self._progress = fraction
        if self.live:
            self._loop.call_soon_threadsafe(self._busy_changed)

    def _post(self, job: _Job):
        if self.live:
            self._loop.call_soon_threadsafe(self._deliver, job)

    def _deliver(self, job: _Job):
        if job.delivered:
            return
        job.delivered = True
        if job in self._jobs:
            self._jobs.remove(job)
        self._progress = None
        if job.future.cancelled():  # close() cancelled it before it ran: nothing to hand back
            return
        try:
            error = job.future.exception()
            if error is None:
                result = job.future.result()
                if result is not _SKIPPED and self.current(job.key, job.generation):
                    job.done(result)
            elif job.failed is not None and self.current(job.key, job.generation):
                job.failed(error)
        finally:
            self._busy_changed()

    def _busy_changed(self):
        labels = [j.label for j in self._jobs if not j.delivered]
        self._on_busy(list(dict.fromkeys(labels)), self._progress if labels else None)

    @property
    def busy(self) -> bool:
        """True while jobs, timers or posts from other threads are pending."""
        return bool(self._jobs or self._deferred or self._timers or self._posted)

    def wait(self, timeout: float = 120.0) -> None:
        """Run pending timers and posts now and block until every job is finished and delivered
        (on this thread). For scripts and tests; in a notebook results arrive by themselves.

        Args: ``timeout``: seconds to wait for a job before raising TimeoutError. Returns: None.
        Example: ``scheduler.submit("job", "working", work, show); scheduler.wait()``.
        """
        import time

        deadline = time.monotonic() + timeout
        on_main = threading.current_thread() is self._main
        while True:
            ready = []
            if on_main:  # what the (blocked) loop would run next
                with self._lock:
                    ready = [fn for _key, fn in self._queue] + list(self._soon.values())
                    self._queue, self._soon = [], {}
            for fn in ready:
                fn()
            if ready:
                continue
            with self._lock:
                due, self._deferred = list(self._deferred.values()), {}
                due, self._posted = self._posted + due, []
            for key in list(self._timers):
                handle, fn = self._timers.pop(key)
                handle.cancel()
                due.append(fn)
            for fn in due:
                fn()
            if not (self._jobs or self._deferred or self._timers or self._posted
                    or (on_main and (self._queue or self._soon))):
                return
            for job in list(self._jobs):
                job.future.exception(timeout=max(0.0, deadline - time.monotonic()))  # waits; raises on timeout
                self._deliver(job)

    def close(self) -> None:
        """Cancel the timers, drop late results and stop the worker thread (a running job at its
        next progress report)."""
        for key in list(self._timers):
            self.cancel(key)
        self._generation = {k: g + 1 for k, g in self._generation.items()}  # late results are dropped
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


_SKIPPED = object()


class Superseded(Exception):
    """Raised in a job's work at its next progress report once a newer job with its key, or
    ``close()``, made its result moot: the worker stops instead of finishing work nobody reads."""


def counting(batches: Callable[[], Any], passes: int, progress: Callable[[float], None]) -> Callable[[], Any]:
    """``batches`` (a callable giving an iterable, as a ScoringContext holds) that reports
    ``progress(fraction)`` after each batch, over ``passes`` passes (below 1 until the job ends).

    Args: batches: e.g. ``ctx.batches``. passes: how many times the work iterates them.
        progress: e.g. a job's ``progress``.
    Returns: a callable like ``batches``.
    Example: ``dataclasses.replace(ctx, batches=counting(ctx.batches, 1, progress))``
    """
    whole, seen = None, [0]

    def counted():
        nonlocal whole
        if whole is None:
            whole = sum(1 for _ in batches())
        for batch in batches():
            yield batch
            seen[0] += 1
            progress(min(seen[0] / max(passes * whole, 1), 0.99))
    return counted
