"""What every view shares: a bokeh layout inside a jupyter_bokeh widget, a caption, and sending
only the columns that changed."""

from __future__ import annotations

import collections
import functools
import html
import inspect
import json
import time
from typing import Callable

import ipywidgets as w
import numpy as np
from bokeh.models import ColumnDataSource
from bokeh.protocol import Protocol
from jupyter_bokeh.widgets import BokehModel

from ..state import CRITERION_ORDER
from .pacing import PAGE_WAIT_S

FONT = "font-size:12px; line-height:1.35; color:#333"
# One colour per criterion, the same in every view (in the controls' order).
PALETTE = ("#3b6ea5", "#d97b29", "#3a9a5b", "#8e6bb8", "#c0392b", "#17becf")
CRITERION_COLOURS = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(CRITERION_ORDER)}


class BokehWidget(BokehModel):
    """jupyter_bokeh's widget, one way: Python owns every view's state.

    BokehJS (jupyter_bokeh 4.1) echoes each patch it applies back to the kernel (the page the
    explorer loads sends one small "applied" message instead: bokeh_loader.py), and JupyterLab
    delivers widget messages on a kernel subshell thread. Applying those echoes would replace a
    data source's columns with the patched ones only, from another thread while the main thread
    updates the same sources. The views take no input from the page (tools act in the browser
    alone), so incoming document events only say that the page applied a patch, except
    "document ready", which says a new page view exists and may have missed patches.

    The changes one turn of the event loop makes (a view's redraw: several columns, a range, a
    caption's span) go to the page as one patch message, not one per change: jupyter_bokeh sends
    every change as three to five comm messages, and the page applies, echoes and repaints each.

    Also closes quietly when its document already let go of it (closing twice, or garbage
    collection at interpreter exit, raises KeyError in jupyter_bokeh 4.1)."""

    def __init__(self, model, post: Callable[[str, Callable[[], None]], None] | None = None, **kwargs):
        self._post = post or (lambda key, fn: fn())
        self._dirty = False  # patched since render_bundle was made
        self._held: list = []  # changes of this turn of the loop, sent together by _flush
        self._sent_at: float | None = None  # when the last patch went out
        self._applied_at = 0.0  # when the page last echoed a change it applied
        self.received: collections.Counter = collections.Counter()  # what pages sent, by kind (for checks)
        super().__init__(model, **kwargs)

    def _document_patched(self, event) -> None:
        if event.setter is self:
            return
        self._dirty = True
        self._held.append(event)
        if len(self._held) == 1:
            self._post(f"patch:{id(self)}", self._flush)

    def _flush(self) -> None:
        """Send the held changes as one PATCH-DOC message (what jupyter_bokeh sends for one)."""
        events, self._held = self._latest(self._held), []
        if not events:
            return
        self._sent_at = time.monotonic()
        msg = Protocol().create("PATCH-DOC", events)
        for part in (msg.header_json, msg.metadata_json, msg.content_json):
            self.send({"msg": "patch", "payload": part})
        for buffer in msg.buffers:
            self.send({"msg": "patch", "payload": json.dumps(buffer.ref)})
            self.send({"msg": "patch"}, [buffer.to_bytes()])

    def caught_up(self, timeout: float = PAGE_WAIT_S) -> bool:
        """Whether the page has applied the last patch sent (BokehJS echoes what it applied), or
        that patch is older than ``timeout`` s (no page shows the widget, or it never echoes).

        Returns:
            True when a new patch would not queue behind the last. Example: ``view.bokeh.caught_up()``.
        """
        sent = self._sent_at
        return sent is None or self._applied_at >= sent or time.monotonic() - sent > timeout

    def applied(self) -> None:
        """The page has applied what was sent (called for BokehJS's echoes, on a subshell thread:
        one float written; a benchmark without a page may call it for a page that keeps up).

        Returns:
            None. Example: ``widget.applied(); widget.caught_up()`` is True.
        """
        self._applied_at = time.monotonic()

    def _sync_model(self, _model, content, _buffers) -> None:
        if content.get("event") == "jsevent":  # the page applied a patch (an echo, or "applied")
            self.received[content.get("msg_type") or ":".join(filter(None, (content.get("kind"), content.get("attr"))))] += 1
            self.applied()
        # A page that shows this widget draws it from render_bundle; patches sent before it was
        # ready never reached it. When its document is ready, send the current state if it moved
        # (on the main thread, which owns the document).
        if content.get("kind") == "MessageSent" and (content.get("msg_data") or {}).get("name") == "document_ready":
            self._post(f"bundle:{id(self)}", self._rebundle)

    @staticmethod
    def _latest(events: list) -> list:
        """Of several changes of one property (or of the same columns), the last: each carries
        the current value when sent."""
        seen, kept = set(), []
        for event in reversed(events):
            name = type(event).__name__
            key = None
            if name == "ModelChangedEvent":
                key = (name, event.model.id, event.attr)
            elif name == "ColumnDataChangedEvent":
                key = (name, event.model.id, tuple(event.cols or ()))
            if key is not None and key in seen:
                continue
            seen.add(key)
            kept.append(event)
        return kept[::-1]

    def _rebundle(self) -> None:
        if self._dirty:
            self._dirty = False
            self._held = []  # the bundle holds them
            self.update_from_model(self._model)

    def close(self) -> None:
        try:
            super().close()
        except KeyError:
            pass


def _guarded(fn):
    """``fn`` (a view's method) that turns an exception into the view's failure message, and does
    nothing once the view has failed."""

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        if self.failed and fn.__name__ != "__init__":
            return None
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:
            self.fail(e)
            return None

    return run


def update_columns(source: ColumnDataSource, **columns) -> list[str]:
    """Replace the given columns of ``source``, sending only those whose values changed (one
    patch event).

    Args:
        source: a bokeh ColumnDataSource. **columns: column name -> new values.

    Returns:
        The names of the columns sent.

    Example:
        >>> src = ColumnDataSource(dict(x=[1, 2], y=[3, 4]))
        >>> update_columns(src, x=[1, 2], y=[5, 6])
        ['y']
    """
    changed = {k: v for k, v in columns.items() if not _same(source.data.get(k), v)}
    if changed:
        source.data.update(changed)
    return list(changed)


def _same(old, new) -> bool:
    if old is None:
        return False
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and any(
            isinstance(v, np.ndarray) for v in (*old, *new)):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new))
    if isinstance(old, np.ndarray) or isinstance(new, np.ndarray):
        a, b = np.asarray(old), np.asarray(new)
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return old == new


class View:
    """Base of the bokeh views: subclasses set ``title``, implement :meth:`build` and call
    :meth:`mount` once their data is in; ``widget`` is what the explorer lays out.

    Args:
        pruner: the Pruner the view reads (never changes).
        state: the explorer's ExplorerState, which the view observes.
        post: ``post(key, fn)`` running ``fn`` on the kernel's main thread (``Scheduler.post``).

    Example:
        >>> view = WeightsView(pruner, state)   # a subclass
        >>> view.widget                          # an ipywidgets VBox with class prunelab-weights
    """

    title = ""
    failed = ""  # why this view cannot draw (shown inside it instead); "" while it works

    def __init_subclass__(cls, **kwargs):
        # A view that cannot draw a model (a layout its code does not expect) shows a short message
        # where it would be, and the explorer and the other views go on: every method a subclass
        # defines (its observers included) is guarded, and does nothing once the view has failed.
        super().__init_subclass__(**kwargs)
        for name, fn in list(vars(cls).items()):
            if inspect.isfunction(fn) and name != "build" and (name == "__init__" or not name.startswith("__")):
                setattr(cls, name, _guarded(fn))

    def __init__(self, pruner, state, post=None):
        self.pruner = pruner
        self.state = state
        self._post = post
        self.caption = w.HTML(layout=w.Layout(margin="0 0 2px 4px"))
        self.bokeh: BokehWidget | None = None
        self.widget = w.VBox([self.caption])
        self.widget.add_class("prunelab-view")
        self.widget.add_class(f"prunelab-{self.slug}")
        try:
            self.root = self.build()
        except Exception as e:
            self.root = None
            self.fail(e)

    def page_ready(self) -> bool:
        """For a paced redraw: True unless the page still works on this view's last patch."""
        return self.bokeh is None or self.bokeh.caught_up()

    def mount(self, header: w.Widget | None = None) -> None:
        """Wrap the filled bokeh layout in its widget (subclasses call this once their data is in,
        so the first picture a page draws is complete)."""
        if self.failed:
            return
        self.bokeh = BokehWidget(self.root, post=self._post, layout=w.Layout(overflow="visible"))
        self.widget.children = (header or self.caption, self.bokeh)

    def fail(self, error: BaseException) -> None:
        """Show, instead of the view, that it cannot draw this model and why; it stops updating.

        Args:
            error: what went wrong.

        Returns:
            None.

        Example:
            >>> view.fail(IndexError("index 8 is out of bounds"))  # doctest: +SKIP
        """
        if self.failed:
            return
        self.failed = f"{type(error).__name__}: {error}"[:300]
        if not hasattr(self, "widget"):  # it failed before View.__init__ made its widget
            self.caption, self.bokeh = w.HTML(), None
            self.widget = w.VBox()
            self.widget.add_class("prunelab-view")
            self.widget.add_class(f"prunelab-{self.slug}")
        message = w.HTML(f'<div class="prunelab-view-failed" style="{FONT}; color:#7a5a00; background:#fff3cd; '
                         f'padding:4px 6px; border-radius:3px"><b>{html.escape(self.title)}</b> cannot be drawn '
                         f'for this model ({html.escape(self.failed)}). The other views and the controls work.</div>')
        self.widget.children = (message,)

    @property
    def slug(self) -> str:
        """CSS class suffix: prunelab-connectivity, prunelab-weights, ..."""
        return type(self).__name__.removesuffix("View").lower()

    def build(self):
        raise NotImplementedError

    def set_caption(self, detail: str = "", status: str = "") -> None:
        """Title in bold, then ``detail`` (HTML), then a status badge (e.g. stale)."""
        badge = (f' <span class="prunelab-status" style="background:#fff3cd; color:#7a5a00; padding:0 5px; '
                 f'border-radius:3px">{html.escape(status)}</span>') if status else ""
        value = f'<div style="{FONT}"><b>{html.escape(self.title)}</b>{badge} {detail}</div>'
        if self.caption.value != value:
            self.caption.value = value
