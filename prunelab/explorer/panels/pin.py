"""Two states side by side: pin the current point of the trace, keep pruning, compare.

**Pin** keeps what the explorer measured for the state shown now (its ``Metrics``, per-class
accuracy and per-layer sparsity: its connectivity, layer by layer); the table then shows it beside
the current state, which follows every change, with the difference. **Unpin** drops it. Nothing
is recomputed: a pin is what was measured when it was taken.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import ipywidgets as widgets

from ...core.tables import points
from .base import Panel


@dataclass(frozen=True)
class Pinned:
    """One pinned state: what was measured, as it was.

    Attributes:
        metrics: the state's :class:`prunelab.core.metrics.Metrics`.
        sparsity: ``{layer: fraction of its weights masked}``. overall: of all prunable weights.
        step: its position in the Pruner's history (``history.cursor``).
        revision: the explorer's revision when pinned.
    """

    metrics: object
    sparsity: dict
    overall: float
    step: int
    revision: int


def pin_state(pruner, metrics, revision: int = 0) -> Pinned:
    """What a pin keeps of ``pruner``'s current state.

    Args:
        pruner: the Pruner. metrics: its measured Metrics (``state.metrics``). revision: the hub's.

    Returns:
        A :class:`Pinned`.

    Example:
        >>> pin_state(pruner, pruner.evaluate()).overall
        0.0
    """
    return Pinned(metrics, dict(pruner.sparsity()), pruner.overall_sparsity(), pruner.history.cursor, revision)


def _num(m, v) -> str:
    return f"{v:.1%}" if m.metric_name == "accuracy" else f"{v:.4g}"


def comparison_rows(pinned: Pinned, current: Pinned, class_names=None) -> list[tuple[str, str, str, str]]:
    """(what, pinned, current, change) rows: the headline metrics, per-class accuracy, per-layer sparsity.

    Args:
        pinned, current: two :class:`Pinned`. class_names: names of the classes.

    Returns:
        A list of 4-tuples of text.

    Example:
        >>> comparison_rows(a, b)[0][0]
        'accuracy'
    """
    a, b = pinned.metrics, current.metrics
    rows = [(a.metric_name, _num(a, a.accuracy), _num(b, b.accuracy),
             points(b.accuracy - a.accuracy) if a.metric_name == "accuracy" else f"{b.accuracy - a.accuracy:+.4g}")]
    if a.loss is not None and b.loss is not None:
        rows.append(("loss", f"{a.loss:.4f}", f"{b.loss:.4f}", f"{b.loss - a.loss:+.4f}"))
    rows += [("sparsity (prunable weights)", f"{pinned.overall:.1%}", f"{current.overall:.1%}",
              points(current.overall - pinned.overall)),
             ("nonzero params", f"{a.nonzero_params:,}", f"{b.nonzero_params:,}", f"{b.nonzero_params - a.nonzero_params:+,}"),
             ("FLOPs per sample", f"{a.nonzero_flops:,}", f"{b.nonzero_flops:,}", f"{b.nonzero_flops - a.nonzero_flops:+,}"),
             ("theoretical speedup", f"{a.theoretical_speedup:.2f}×", f"{b.theoretical_speedup:.2f}×", "")]
    for c, (x, y) in enumerate(zip(a.per_class, b.per_class)):
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        rows.append((f"class {name}", f"{x:.1%}", f"{y:.1%}", points(y - x)))
    for layer in pinned.sparsity:
        x, y = pinned.sparsity[layer], current.sparsity.get(layer, float("nan"))
        rows.append((f"layer {layer or '(model)'} sparsity", f"{x:.1%}", f"{y:.1%}", points(y - x)))
    return rows


class PinPanel(Panel):
    """Pin the current state and compare it with where pruning goes next.

    Args:
        pruner: the Pruner (never modified). state: the explorer's state hub (default: the
            panel's own). post: runs clicks on the main thread. class_names: names of the classes.

    Attributes:
        pinned: the :class:`Pinned` state (None when nothing is pinned).

    Example:
        >>> panel = PinPanel(pruner)
        >>> pruner.prune(0.5); panel.pin_button.click(); pruner.prune(0.9)
        >>> "50.0%" in panel.table.value and "90.0%" in panel.table.value
        True
    """

    title = "Compare"

    def __init__(self, pruner, state=None, post=None, *, class_names=None):
        self.class_names = class_names
        self.pinned: Pinned | None = None
        super().__init__(pruner, state, post)
        self.watch(lambda _: self._show(), "revision")

    def build(self) -> list[widgets.Widget]:
        """Pin and Unpin, a caption, and the comparison table."""
        self.pin_button = widgets.Button(description="Pin", icon="thumb-tack", tooltip="keep this state to compare")
        self.pin_button.add_class("prunelab-pin")
        self.unpin_button = widgets.Button(description="Unpin", icon="times", disabled=True)
        self.unpin_button.add_class("prunelab-unpin")
        self.pin_button.on_click(lambda _: self.post("pin", self.pin))
        self.unpin_button.on_click(lambda _: self.post("pin", self.unpin))
        self.caption = widgets.HTML()
        self.table = widgets.HTML()
        self.table.add_class("prunelab-pin-table")
        self._show()
        return [widgets.HTML("<b>Two states side by side</b>"), widgets.HBox([self.pin_button, self.unpin_button]),
                self.caption, self.table]

    def current(self) -> Pinned:
        """The current state as a pin would keep it."""
        metrics = self.state.metrics if self.state.metrics is not None else self.pruner.evaluate()
        return pin_state(self.pruner, metrics, self.state.revision)

    def pin(self) -> Pinned:
        """Pin the current state (the point of the trace shown now).

        Returns:
            The :class:`Pinned`. Example: ``panel.pin().overall``.
        """
        self.pinned = self.current()
        self._show()
        return self.pinned

    def unpin(self) -> None:
        """Drop the pin. Returns: None."""
        self.pinned = None
        self._show()

    def _show(self):
        self.unpin_button.disabled = self.pinned is None
        if self.pinned is None:
            self.caption.value = ("<i style='color:#555'>Press <b>Pin</b> to keep the current point of the trace "
                                  "(its metrics, per-class accuracy and per-layer sparsity) and see it beside where "
                                  "you prune next.</i>")
            self.table.value = ""
            return
        p, now = self.pinned, self.current()
        self.caption.value = (f"<span style='color:#555'>pinned: step {p.step} of the history, "
                              f"{p.overall:.1%} sparse, {_num(p.metrics, p.metrics.accuracy)} "
                              f"{html.escape(p.metrics.metric_name)}</span>")
        cells = "".join(
            f"<tr><td>{html.escape(what)}</td><td style='text-align:right'>{a}</td><td style='text-align:right'>{b}"
            f"</td><td style='text-align:right; color:#555'>{html.escape(d)}</td></tr>"
            for what, a, b, d in comparison_rows(p, now, self.class_names))
        self.table.value = ("<table style='font-size:12px'><tr><th></th><th>pinned</th><th>current</th>"
                            f"<th>change</th></tr>{cells}</table>")
