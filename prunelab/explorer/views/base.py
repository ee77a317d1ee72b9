"""What every view shares: a bokeh layout inside a jupyter_bokeh widget, a caption, and sending
only the columns that changed."""

from __future__ import annotations

import html

import ipywidgets as w
import numpy as np
from bokeh.models import ColumnDataSource
from jupyter_bokeh.widgets import BokehModel

FONT = "font-size:12px; line-height:1.35; color:#333"


class BokehWidget(BokehModel):
    """jupyter_bokeh's widget, closing quietly when its document already let go of it (closing
    twice, or garbage collection at interpreter exit, raises KeyError in jupyter_bokeh 4.1)."""

    def close(self) -> None:
        try:
            super().close()
        except KeyError:
            pass


def update_columns(source: ColumnDataSource, **columns) -> list[str]:
    """Replace the given columns of ``source``, sending only those whose values changed (one
    patch event). Returns the names sent."""
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
    """Base of the bokeh views: ``widget`` is what the explorer lays out."""

    title = ""

    def __init__(self, pruner, state):
        self.pruner = pruner
        self.state = state
        self.caption = w.HTML(layout=w.Layout(margin="0 0 2px 4px"))
        self.root = self.build()
        self.bokeh = BokehWidget(self.root, layout=w.Layout(overflow="visible"))
        self.widget = w.VBox([self.caption, self.bokeh])
        self.widget.add_class(f"prunelab-view")
        self.widget.add_class(f"prunelab-{self.slug}")

    @property
    def slug(self) -> str:
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
