"""What pruning breaks: the validation samples whose predicted class changed, shown.

``pruner.flipped()`` (the "pruning-identified exemplars" of Hooker et al., 2019) is measured on
demand (the button) on the kernel's main thread; then, in the background on a private copy of
the model (:class:`prunelab.core.copies.ModelCopy`), the input attributions of the first few
flipped samples toward their label, for the dense and the current model (the interpretability
view's integrated gradients, :func:`prunelab.explorer.analysis.integrated_gradients`). Images
for image data (each sample, its attribution before and after, on one colour scale), a table
otherwise, and a bar per class of how many of its samples changed. A change of the pruning marks
what is shown stale; nothing is computed during a drag.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import torch

from ...core.copies import ModelCopy, model_state
from ...core.tables import Table
from ..analysis import drift, integrated_gradients
from ..background import Scheduler
from ..views.interpretability import as_images
from .base import Panel

SHOWN = 8       # flipped samples drawn (with attributions)
KEY = "flipped:attributions"


def heatmap_svg(image: np.ndarray, *, scale: float | None = None, px: int = 6) -> str:
    """A small 2-D array as an inline SVG: greys (dark is high) without ``scale``, else
    red (positive) and blue (negative) up to ``scale``.

    Args:
        image: (H, W) values. scale: the |value| of full colour (attributions); None: grey from
            the image's min to max (inputs). px: pixels per cell.

    Returns:
        The ``<svg>`` text.

    Example:
        >>> heatmap_svg(np.eye(2)).startswith("<svg")
        True
    """
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    cells = []
    if scale is None:
        lo, hi = float(image.min()), float(image.max())
        norm = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    else:
        norm = np.clip(image / scale, -1, 1) if scale > 0 else np.zeros_like(image)
    for i in range(h):
        for j in range(w):
            v = norm[i, j]
            if scale is None:
                g = int(255 * (1 - v))
                colour = f"rgb({g},{g},{g})"
            elif v >= 0:
                k = int(255 * (1 - v))
                colour = f"rgb(255,{k},{k})"
            else:
                k = int(255 * (1 + v))
                colour = f"rgb({k},{k},255)"
            cells.append(f"<rect x='{j * px}' y='{i * px}' width='{px}' height='{px}' fill='{colour}'/>")
    return (f"<svg class='prunelab-flipped-image' width='{w * px}' height='{h * px}' "
            f"style='border:1px solid #ccc'>{''.join(cells)}</svg>")


def class_bars_html(by_class: Table, names: list[str] | None = None) -> str:
    """One bar per class: how many of its samples changed prediction (of its samples), with
    how many broke (right to wrong) and were fixed.

    Args:
        by_class: ``pruner.flipped(by_class=True)``. names: class names (default: the numbers).

    Returns:
        HTML (class ``prunelab-flipped-classes``).
    """
    rows = [r for r in by_class if r["samples"]]
    top = max([r["flipped"] for r in rows] + [1])
    lines = []
    for r in rows:
        c = r["class"]
        name = names[c] if names is not None and 0 <= c < len(names) else str(c)
        width = int(160 * r["flipped"] / top)
        lines.append(f"<tr><td style='text-align:right; padding-right:6px'>{html.escape(name)}</td>"
                     f"<td><div style='width:{width}px; height:10px; background:#c0392b; display:inline-block'>"
                     f"</div> {r['flipped']} of {r['samples']}</td>"
                     f"<td style='color:#555; padding-left:8px'>{r['broken']} broken, {r['fixed']} fixed</td></tr>")
    return ("<div class='prunelab-flipped-classes'><b>Where they cluster</b> (changed samples per class, by label)"
            f"<table style='font-size:12px'>{''.join(lines)}</table></div>")


class FlippedPanel(Panel):
    """The samples whose prediction pruning changed, their attributions, and their classes.

    Args:
        pruner: the Pruner (never modified).
        state: the explorer's state hub (default: the panel's own, following ``pruner``).
        post: runs clicks on the kernel's main thread (default: the panel's own Scheduler).
        scheduler: runs the attributions in the background (default: a new Scheduler).
        image_shape: (height, width) to draw 1-D inputs as images (the demos: (8, 8)).
        class_names: names of the classes.

    Attributes:
        table, by_class: the last ``pruner.flipped()`` and ``flipped(by_class=True)`` (None before).
        attributions: ``{"samples", "before", "after", "drift"}`` of the drawn samples (None
            before, or when the inputs cannot be attributed).

    Example:
        >>> panel = FlippedPanel(pruner, image_shape=(8, 8))     # doctest: +SKIP
        >>> pruner.prune(0.9); panel.show_button.click(); panel.scheduler.wait()  # doctest: +SKIP
        >>> len(panel.table) > 0                                   # doctest: +SKIP
        True
    """

    title = "What pruning breaks"

    def __init__(self, pruner, state=None, post=None, *, scheduler: Scheduler | None = None,
                 image_shape: tuple[int, int] | None = None, class_names: list[str] | None = None):
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.image_shape, self.class_names = image_shape, class_names
        self.table = self.by_class = self.attributions = None
        self._copy: ModelCopy | None = None
        self._revision = None
        super().__init__(pruner, state, post)
        self.watch(self._on_revision, "revision")

    def build(self) -> list[widgets.Widget]:
        """The button, a stale note, the samples (images or a table) and the class bars."""
        self.show_button = widgets.Button(description="Show what pruning breaks", icon="search",
                                          layout=widgets.Layout(width="220px"),
                                          tooltip="compare every validation prediction of the dense and the current "
                                                  "model")
        self.show_button.add_class("prunelab-flipped-button")
        self.show_button.on_click(lambda _: self.post("flipped", self.compute))
        self.note = widgets.HTML("<i style='color:#555'>Press the button to list the validation samples whose "
                                 "predicted class changed between the dense model and the current one.</i>")
        self.note.add_class("prunelab-flipped-note")
        self.stale = widgets.HTML()
        self.samples = widgets.HTML()
        self.samples.add_class("prunelab-flipped-samples")
        self.classes = widgets.HTML()
        return [widgets.HTML("<b>What pruning breaks</b>"), self.show_button, self.note, self.stale,
                widgets.HBox([self.samples, self.classes], layout=widgets.Layout(flex_flow="row wrap"))]

    # ------------------------------------------------------------------ measuring

    def compute(self):
        """Measure ``pruner.flipped()`` for the current state now; the attributions of the first
        few flipped samples follow in the background.

        Returns:
            The sample Table, or None when it cannot be measured (the note says why).

        Example: ``panel.compute().column("index")``.
        """
        p = self.pruner
        self.scheduler.cancel(KEY)
        try:
            table, by_class = p.flipped(), p.flipped(by_class=True)
        except ValueError as e:
            self.note.value = f"<span style='color:#b00020'>{html.escape(str(e))}</span>"
            return None
        self.table, self.by_class, self.attributions = table, by_class, None
        self._revision = self.state.revision
        self.stale.value = ""
        self.note.value = f"<span style='color:#333'>{html.escape(table.note)}</span>"
        self.classes.value = class_bars_html(by_class, self.class_names) if len(table) else ""
        self._draw()
        if len(table):
            self._attribute()
        return table

    def _attribute(self):
        """The attributions of the first :data:`SHOWN` flipped samples, dense vs current (background)."""
        p = self.pruner
        x = p.val_inputs
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return  # token ids and keyword inputs cannot be interpolated: the table alone
        idx = torch.as_tensor(self.table.column("index")[:SHOWN])
        xs, ys = x[idx].clone(), p.val_targets[idx].clone()
        current = model_state(p.model)
        original = {**current, **p.original_weights}
        if self._copy is None:
            self._copy = ModelCopy(p.model)
        copy, output, revision = self._copy, p.output, self._revision

        def work(progress):
            before, _ = integrated_gradients(copy.load(original), xs, ys, output=output)
            progress(0.5)
            after, _ = integrated_gradients(copy.load(current), xs, ys, output=output)
            return dict(samples=idx.tolist(), inputs=xs.float().cpu().numpy(), before=before, after=after,
                        drift=drift(before, after))

        def done(result):
            if revision == self._revision:
                self.attributions = result
                self._draw()

        def failed(error):
            self.stale.value = f"<span style='color:#b00020'>attributions failed: {html.escape(str(error))}</span>"

        self.scheduler.submit(KEY, "attributions of flipped samples", work, done, failed)

    # ------------------------------------------------------------------ showing

    def _name(self, c: int) -> str:
        names = self.class_names
        return html.escape(names[c] if names is not None and 0 <= c < len(names) else str(c))

    def _draw(self):
        table = self.table
        if table is None or not len(table):
            self.samples.value = ""
            return
        rows = list(table)[:SHOWN]
        x = self.pruner.val_inputs
        images = None
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            images = as_images(x[torch.as_tensor([r["index"] for r in rows])].float().cpu().numpy(), self.image_shape)
        if images is None:  # not image data: the table
            self.samples.value = Table(table.columns, rows, formats=table.formats, title=table.title)._repr_html_()
            return
        attr = self.attributions
        before = as_images(attr["before"], self.image_shape) if attr else None
        after = as_images(attr["after"], self.image_shape) if attr else None
        tiles = []
        for k, r in enumerate(rows):
            pictures = [heatmap_svg(images[k])]
            if before is not None:
                scale = float(np.abs(before[k]).max()) or 1.0
                pictures += [heatmap_svg(before[k], scale=scale), heatmap_svg(after[k], scale=scale)]
            moved = f"<br>drift {attr['drift'][k]:.2f}" if attr else ""
            tiles.append(
                "<div class='prunelab-flipped-sample' style='display:inline-block; margin:0 10px 8px 0; "
                f"font-size:11px; vertical-align:top'>{' '.join(pictures)}<br>#{r['index']} label "
                f"<b>{self._name(r['label'])}</b>: {self._name(r['before'])} ({r['confidence_before']:.2f}) → "
                f"<b style='color:#c0392b'>{self._name(r['after'])}</b> ({r['confidence_after']:.2f}){moved}</div>")
        legend = ("<div style='font-size:11px; color:#555'>each: the input" + (
            ", its attribution toward the label before pruning, and after (red +, blue −; one scale)"
            if before is not None else " (attributions follow)") + f"; the first {len(rows)} of {len(table)}</div>")
        self.samples.value = legend + "".join(tiles)

    def _on_revision(self, _change):
        if self.table is not None and self.state.revision != self._revision:
            self.stale.value = ("<span style='color:#b60'>The pruning changed since; press the button for the "
                                "current state.</span>")
