"""One background run at a time for a panel: a worker thread, a progress bar, a status line and
a cancel button, with every result applied on the kernel's main thread.

The work runs in a daemon thread on a private copy of the model, so it never races the
explorer's evaluations of the Pruner's own model. What the thread hands back (progress, each
completed step, the result) waits in the run's mailbox, and one request through the panel's
``post`` (the explorer's :class:`~prunelab.explorer.background.Scheduler`, or the panel's own)
delivers it on the main thread; :meth:`BackgroundRun.wait` delivers it at once (scripts, tests).
"""

from __future__ import annotations

import html
import threading
import time
import traceback
from typing import Callable

import ipywidgets as widgets

from ...retrain import Cancelled, Hooks

PROGRESS_INTERVAL = 0.1  # seconds between progress updates sent to the browser


class BackgroundRun:
    """Runs one job at a time in a worker thread, showing its progress, status and errors.

    Args:
        post: the panel's ``post(key, fn)``, running ``fn`` on the kernel's main thread (from any
            thread): the explorer's ``Scheduler.post``, or the panel's own.

    Attributes:
        progress: an IntProgress bar (batches done of the whole run).
        status: an HTML status line.
        cancel_button: stops the run between two batches.
        last_error: the exception of the last failed run (None after a good one).

    Example:
        >>> run = BackgroundRun(Scheduler().post)                               # doctest: +SKIP
        >>> run.start("fine-tuning", lambda hooks, post: job.run(hooks),        # doctest: +SKIP
        ...           lambda _: str(job.apply()), job.total)
        >>> run.wait()                                                          # doctest: +SKIP
    """

    def __init__(self, post: Callable[[str, Callable[[], None]], None]):
        self.post = post
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="",
                                            layout=widgets.Layout(width="300px"))
        self.status = widgets.HTML("")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.cancel_button.on_click(lambda _: self.post("training:cancel", self.cancel))
        self.last_error: BaseException | None = None
        self.job = ""
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_progress = 0.0
        self._listeners: list[Callable[[], None]] = []
        self._mailbox: list[Callable[[], None]] = []  # from the worker, for the main thread, in order
        self._woken = False                            # a delivery is posted and has not run yet
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        """True while a run is in progress (until its results are applied on the main thread)."""
        return bool(self.job)

    def on_busy(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever a run starts or finishes (to enable or disable buttons)."""
        self._listeners.append(callback)

    def _changed(self):
        self.cancel_button.disabled = not self.busy
        for cb in list(self._listeners):
            cb()

    def check_idle(self) -> None:
        """A RuntimeError while a run is in progress."""
        if self.busy:
            raise RuntimeError(f"the panel is busy ({self.job}); cancel it or wait.")

    def say(self, text: str, error: bool = False) -> None:
        """Show ``text`` in the status line (in red for an error)."""
        colour = "#b00020" if error else "inherit"
        self.status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    def start(self, job: str, work: Callable[[Hooks, Callable], object], done: Callable[[object], str],
              total: int) -> None:
        """Run ``work(hooks, send)`` in a thread (``send(fn)`` runs ``fn`` on the main thread, in order);
        ``done(result)`` then runs on the main thread and returns the message to show.

        Args:
            job: what runs, for the status line ("fine-tuning").
            work: the work; it reports progress and is cancelled through ``hooks``.
            done: applies the result (main thread); its exceptions show as a failure.
            total: the progress bar's length.

        Returns:
            None.

        Example:
            >>> run.start("adding", lambda hooks, send: 1 + 1, lambda result: f"got {result}", 1)  # doctest: +SKIP
            >>> run.wait(); run.status.value                                                      # doctest: +SKIP
            "<span style='color:inherit'>got 2</span>"
        """
        self.check_idle()
        send = self._send
        self._cancel = threading.Event()
        self.job = job
        self.last_error = None
        self.progress.max, self.progress.value, self.progress.bar_style = max(total, 1), 0, "info"
        self.say(f"{job}...")
        self._changed()
        hooks = Hooks(progress=self._progress_from_thread, cancel=self._cancel)

        def run():
            try:
                result = work(hooks, send)
            except Cancelled:
                send(lambda: self._finish(f"{job} cancelled", "warning"))
            except BaseException as e:  # shown in the panel; the thread must not die silently
                send(lambda e=e: self._fail(job, e))
            else:
                send(lambda: self._complete(job, done, result))

        self._thread = threading.Thread(target=run, name=f"prunelab {job}", daemon=True)
        self._thread.start()

    def _progress_from_thread(self, done: int, total: int, what: str):
        now = time.monotonic()
        if done < total and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        self._send(lambda: self._show_progress(done, total, what))

    def _send(self, fn: Callable[[], None]) -> None:
        """From the worker: run ``fn`` on the main thread, after what was sent before it."""
        with self._lock:
            self._mailbox.append(fn)
            wake, self._woken = not self._woken, True
        if wake:  # one delivery at a time is enough: it empties the whole mailbox
            self.post("training:deliver", self.deliver)

    def deliver(self) -> None:
        """Apply, on this thread (the main thread), what the worker has sent so far, in order.

        Returns:
            None.

        Example: ``run.deliver()`` after the worker finished, as :meth:`wait` does.
        """
        while True:
            with self._lock:
                if not self._mailbox:
                    self._woken = False
                    return
                fn = self._mailbox.pop(0)
            try:
                fn()
            except Exception:  # one failing delivery must not strand the rest of the mailbox
                traceback.print_exc()

    def _show_progress(self, done: int, total: int, what: str):
        if self.busy:
            self.progress.max, self.progress.value = max(total, 1), done
            self.say(what)

    def _complete(self, job, done, result):
        try:
            message = done(result)
        except BaseException as e:
            self._fail(job, e)
            return
        self._finish(message or f"{job} done", "success")

    def _fail(self, job: str, error: BaseException):
        self.last_error = error
        self._finish(f"{job} failed: {error}", "danger", error=True)

    def _finish(self, message: str, style: str, error: bool = False):
        self.job = ""
        self.progress.bar_style = style
        if style == "success":
            self.progress.value = self.progress.max
        self.say(message, error=error)
        self._changed()

    def cancel(self) -> None:
        """Stop the run between two batches."""
        self._cancel.set()
        if self.busy:
            self.say(f"cancelling {self.job}...")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run finishes, then apply its results here (for scripts and tests: in a
        notebook they apply by themselves).

        Returns:
            False on timeout, else True.
        """
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        self.deliver()
        return True
