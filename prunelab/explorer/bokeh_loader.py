"""Loading BokehJS into the notebook page from the installed bokeh package (no network).

jupyter_bokeh renders through ``window.Bokeh``, which must be in the page first. bokeh's default
``output_notebook()`` fetches it from a CDN, which fails offline, so the explorer publishes the
JavaScript itself: only the core bundle (no widgets, tables or MathJax, which the views do not
use), once per kernel.
"""

from __future__ import annotations

_loaded = False


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where there is a page to load into)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def load_bokehjs(force: bool = False) -> bool:
    """Publish BokehJS inline into the current output; returns True when it did."""
    global _loaded
    if (_loaded and not force) or not in_kernel():
        return False
    from bokeh.io import output_notebook
    from bokeh.resources import Resources

    output_notebook(Resources(mode="inline", components=["bokeh"]), hide_banner=True)
    _loaded = True
    return True
