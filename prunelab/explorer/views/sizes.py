"""How wide the views draw: their bokeh figures stretch to the width their tab gets (they reflow
with the output area: see :func:`reflowing`), up to ``MAX_WIDTH`` px, past which wider
plots only spread the same data thinner."""

import ipywidgets as w

MAX_WIDTH = 1400

CONTROLS_PX = 360   # the column of controls (and the trace under them)
VIEWS_MIN_PX = 560  # narrower than this beside the controls, the views go below them
VIEWS_MAX_PX = MAX_WIDTH
# ipywidgets gives every tab 144 px and shrinks them all alike: on a laptop "What pruning breaks"
# was cut to "What pruning bre". Each tab as wide as its title, shrinking only when the bar is full.
TAB_CSS = ".jupyter-widgets.jupyter-widget-tab.prunelab-tabs > .lm-TabBar .lm-TabBar-tab { flex: 0 1 auto; }"


def reflowing(controls: w.Widget, views: w.Widget) -> w.Box:
    """The controls and the views side by side where the output area is wide enough, the views
    below the controls where it is not (a wrapping flex row); the views take the width they get
    (their bokeh figures stretch to it, up to ``VIEWS_MAX_PX``), so nothing needs a horizontal
    scrollbar on a laptop with JupyterLab's file browser open.

    Args:
        controls: the column of controls (fixed width). views: the tabs of views.

    Returns:
        The box (class ``prunelab-body``).

    Example:
        >>> body = reflowing(w.VBox([w.FloatSlider()]), w.Tab())
    """
    controls.layout = w.Layout(flex=f"0 0 {CONTROLS_PX}px", width=f"{CONTROLS_PX}px", min_width="0",
                               margin="0 12px 8px 0")
    views.layout = w.Layout(flex=f"1 1 {VIEWS_MIN_PX}px", min_width="0", max_width=f"{VIEWS_MAX_PX}px")
    body = w.Box([controls, views], layout=w.Layout(display="flex", flex_flow="row wrap", align_items="flex-start",
                                                    width="100%"))
    body.add_class("prunelab-body")
    return body
