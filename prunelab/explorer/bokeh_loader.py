"""Loading BokehJS into the notebook page from the installed bokeh package (no network).

jupyter_bokeh renders through ``window.Bokeh``, which must be in the page first. bokeh's default
``output_notebook()`` fetches it from a CDN, which fails offline, and its inline form publishes
the 1.3 MB of JavaScript twice in one output (as ``application/javascript`` for the classic
notebook and again for JupyterLab), so a saved notebook carried it twice. The explorer publishes
the core bundle (no widgets, tables or MathJax, which the views do not use) once per kernel,
under the MIME type jupyter_bokeh's extension runs (JupyterLab and Notebook 7 alike), with a
one-line text fallback.

The same script, when a saved notebook is reopened without its kernel's widgets, turns
ipywidgets' "Error displaying widget: model not found" into one line saying to re-run the cell.
"""

from __future__ import annotations

LOAD_MIME = "application/vnd.bokehjs_load.v0+json"  # bokeh.io.notebook.LOAD_MIME_TYPE
MISSING_MODEL = "Error displaying widget: model not found"
RERUN = "This widget lived in a kernel that has stopped: run the cell again to show it."
# For a minute after the page loads (a reopened notebook restores its widgets in seconds).
_RERUN_JS = """
(function () {
  var seen = 0, timer = setInterval(function () {
    document.querySelectorAll('.jp-OutputArea-output.jupyter-widgets').forEach(function (el) {
      if (el.textContent === %(missing)s) { el.textContent = %(rerun)r; el.classList.add('prunelab-rerun'); }
    });
    if (++seen > 60) clearInterval(timer);
  }, 1000);
})();
"""

# jupyter_bokeh 4.1 sends every change a kernel's patch made back to the kernel: each one
# serialized whole (columns included) with a reference to every model of the document, then
# handled by the kernel (busy, idle: JupyterLab swaps its favicon twice). Measured in a drag
# (bench/browser_latency.py --trace): 185 ms of the page's script, a third of all kernel messages.
# Changes a patch applies carry sync=false (Bokeh's own server session drops them); here they
# reach no listener, and one small message per patch says it was applied (views/base.py paces on it).
_QUIET_ECHO_JS = """
(function () {
  var doc = window.Bokeh && Bokeh.require('document'), proto = doc && doc.Document.prototype;
  if (!proto || proto.__prunelab_quiet) return;
  var apply = proto.apply_json_patch, trigger = proto._trigger_on_change;
  var echo = function (e) { return e.sync === false || (e.events && e.events.every(echo)); };
  proto._trigger_on_change = function (event) {
    if (this.__prunelab_applying && echo(event)) return;
    return trigger.call(this, event);
  };
  proto.apply_json_patch = function () {
    this.__prunelab_applying = true;
    try { return apply.apply(this, arguments); }
    finally {
      this.__prunelab_applying = false;
      trigger.call(this, new doc.MessageSentEvent(this, %(applied)r, null));
    }
  };
  proto.__prunelab_quiet = true;
})();
"""
APPLIED = "prunelab_applied"  # the message a page sends once it applied a patch

_loaded = False


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where there is a page to load into)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def bokehjs_bundle() -> dict[str, str]:
    """The display data that loads BokehJS: its inline JavaScript once, and a text line.

    Returns:
        ``{LOAD_MIME: javascript, "text/plain": line}``.

    Example:
        >>> len(bokehjs_bundle()[LOAD_MIME]) > 100_000
        True
    """
    from bokeh import __version__
    from bokeh.resources import Resources

    js = "\n".join(Resources(mode="inline", components=["bokeh"]).js_raw)
    # the message is pieced together, so that the page's text (this script included) never holds it
    missing = " + ".join(repr(part) for part in MISSING_MODEL.partition("displaying"))
    js += _RERUN_JS % {"missing": missing, "rerun": RERUN} + _QUIET_ECHO_JS % {"applied": APPLIED}
    return {LOAD_MIME: js, "text/plain": f"BokehJS {__version__} (loaded by prunelab for its explorer)"}


def load_bokehjs(force: bool = False) -> bool:
    """Publish BokehJS inline into the current output; returns True when it did."""
    global _loaded
    if (_loaded and not force) or not in_kernel():
        return False
    from IPython.display import publish_display_data

    publish_display_data(bokehjs_bundle())
    _loaded = True
    return True
