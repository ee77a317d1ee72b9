"""The explorer's tabs for issue 15, made in one place: recovery without training (whose readout
also sits beside the raw accuracy readout), what pruning breaks, and two states side by side."""

from __future__ import annotations

import ipywidgets as widgets

from .flipped import FlippedPanel
from .pin import PinPanel
from .recalibrate import RecalibratePanel


def beyond_panels(explorer, scheduler) -> dict:
    """Make the Recover, What pruning breaks and Compare panels on ``explorer``'s hub, and lay
    the recalibration readout beside the explorer's raw readout.

    Args:
        explorer: the Explorer being built (its ``pruner``, ``state``, ``views`` and children).
        scheduler: its Scheduler (background work and main-thread posts). The image shape and
            class names are the interpretability view's, as the Explorer was given them.

    Returns:
        ``{title: panel}``, for the Explorer to add as tabs (and close with it).

    Example:
        >>> self.panels = {..., **beyond_panels(self, self._scheduler)}  # doctest: +SKIP
    """
    p, state, post = explorer.pruner, explorer.state, scheduler.post
    view = explorer.views["interpretability"]
    image_shape, class_names = view.image_shape, view.class_names
    recover = RecalibratePanel(p, state, post, scheduler=scheduler)
    readout = explorer.views["metrics"].readout
    explorer.children = tuple(widgets.HBox([c, recover.inline], layout=widgets.Layout(align_items="center"))
                              if c is readout else c for c in explorer.children)
    return {RecalibratePanel.title: recover,
            FlippedPanel.title: FlippedPanel(p, state, post, scheduler=scheduler, image_shape=image_shape,
                                             class_names=class_names),
            PinPanel.title: PinPanel(p, state, post, class_names=class_names)}
