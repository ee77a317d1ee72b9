"""Keeping the kernel responsive: coalesced main-thread work, debounced timers, background jobs.

Inside a Jupyter kernel the main thread runs an asyncio loop: ``soon`` folds many requests made
in one turn of the loop into a single call, ``later`` waits for changes to settle, and ``submit``
runs long work on one worker thread and hands its result back on the main thread (widgets and
the Pruner are only touched there). Results of jobs that were superseded are dropped.

Without a running loop (plain scripts, tests) ``soon`` runs at once, and ``wait()`` runs the
pending timers and delivers finished jobs on the caller's thread.
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
    """Runs the explorer's deferred and background work. ``on_busy(labels, fraction)`` is told,
    on the main thread, which jobs are running (empty when idle) and their progress."""

    def __init__(self, on_busy: Callable[[list[str], float | None], None] | None = None):
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._main = threading.current_thread()
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
    def live(self) -> bool:
        """True inside a running event loop (a Jupyter kernel), where work can be deferred."""
        return self._loop is not None and self._loop.is_running() and not self._loop.is_closed()

    # ------------------------------------------------------------------ main thread

    def soon(self, key: str, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the main thread once the current burst of events is handled; several
        requests with the same key before then run once. Safe to call from any thread."""
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
        value). Runs at once on the main thread when there is no loop."""
        if not self.live:
            if threading.current_thread() is self._main:
                fn()
            else:
                with self._lock:
                    self._deferred[f"post:{key}:{id(fn)}"] = fn
            return
        with self._lock:
            if self._queue and self._queue[-1][0] == key:
                self._queue[-1] = (key, fn)
                return
            self._queue.append((key, fn))
            if self._draining:
                return
            self._draining = True
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self):
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
                self._loop.call_soon(self._drain)
            else:
                self._draining = False

    def later(self, key: str, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` after ``delay`` seconds without a newer request for the same key (debounce)."""
        self.cancel(key)
        if self.live:
            self._timers[key] = (self._loop.call_later(delay, self._fire, key, fn), fn)
        else:
            self._deferred[key] = fn

    def _fire(self, key: str, fn: Callable[[], None]):
        self._timers.pop(key, None)
        fn()

    def cancel(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[0].cancel()
        self._deferred.pop(key, None)

    # ------------------------------------------------------------------ background jobs

    def submit(self, key: str, label: str, work: Callable[[Callable[[float], None]], Any],
               done: Callable[[Any], None], failed: Callable[[BaseException], None] | None = None) -> int:
        """Run ``work(progress)`` on the worker thread; ``done(result)`` runs on the main thread
        unless a newer job with the same key was submitted since. Returns the job's generation."""
        generation = self._generation.get(key, 0) + 1
        self._generation[key] = generation
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prunelab-explorer")

        def run():
            # A newer job with this key is queued behind us: skip the work entirely.
            if self._generation.get(key) != generation:
                return _SKIPPED
            return work(self._report)

        job = _Job(key, label, generation, self._executor.submit(run), done, failed)
        self._jobs.append(job)
        job.future.add_done_callback(lambda _f, job=job: self._post(job))
        self._busy_changed()
        return generation

    def current(self, key: str, generation: int) -> bool:
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
        return bool(self._jobs or self._deferred or self._timers)

    def wait(self, timeout: float = 120.0) -> None:
        """Run pending timers now and block until every job is finished and delivered (on this
        thread). For scripts and tests; in a notebook results arrive by themselves."""
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
            for key in list(self._timers):
                handle, fn = self._timers.pop(key)
                handle.cancel()
                due.append(fn)
            for fn in due:
                fn()
            if not (self._jobs or self._deferred or self._timers or (on_main and (self._queue or self._soon))):
                return
            for job in list(self._jobs):
                job.future.exception(timeout=max(0.0, deadline - time.monotonic()))  # waits; raises on timeout
                self._deliver(job)

    def close(self) -> None:
        for key in list(self._timers):
            self.cancel(key)
        self._generation = {k: g + 1 for k, g in self._generation.items()}  # late results are dropped
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


_SKIPPED = object()
