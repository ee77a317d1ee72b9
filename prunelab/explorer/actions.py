"""What a gesture asks of the Pruner: a typed action (kind, layer, run).

The controls turn a gesture into an :class:`Action` and hand it to ``Explorer.apply``, which makes
sure the scores it needs exist, records it in the state hub (``state.action``) and runs it. The
kind says what the action is, never a label or a layer name: a layer named ``reset`` is pruned by
a ``"layer"`` action like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# What each kind of action sets as the controls' driver (what the sliders show as in command);
# reset, undo and redo restore a state made elsewhere and set none.
DRIVES = {"global": "global", "layer": "layers", "layers": "layers", "threshold": "threshold"}
KINDS = (*DRIVES, "reset", "undo", "redo")
BY_CRITERION = ("global", "layer", "layers")  # kinds that prune by the chosen criterion's scores


@dataclass(frozen=True, kw_only=True)
class Action:
    """One change of the Pruner that a control asks for.

    Args:
        kind: one of :data:`KINDS`: ``"global"`` (the global slider), ``"layer"`` (one layer's
            slider), ``"layers"`` (every layer's slider again, under a new choice),
            ``"threshold"`` (the |w| slider), ``"reset"``, ``"undo"``, ``"redo"``.
        run: the function that changes the Pruner, without arguments; it may return False to say
            that nothing changed (a gesture that changes nothing adds no history step).
        layer: the layer a ``"layer"`` action prunes (None for the others).

    Returns:
        A frozen Action; ``Explorer.apply(action)`` runs it.

    Example:
        >>> a = Action(kind="layer", layer="reset", run=lambda: None)
        >>> a.by_criterion, a.drives
        (True, 'layers')
    """

    kind: str
    run: Callable[[], object]
    layer: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown action kind {self.kind!r}: choose one of {list(KINDS)}.")
        if (self.kind == "layer") != (self.layer is not None):
            raise ValueError(f"a {self.kind!r} action {'needs' if self.kind == 'layer' else 'takes no'} layer; "
                             f"got layer={self.layer!r}.")

    @property
    def by_criterion(self) -> bool:
        """True when the action prunes by the chosen criterion (so its scores must exist first)."""
        return self.kind in BY_CRITERION

    @property
    def drives(self) -> str | None:
        """What the action makes the controls' driver: "global", "layers", "threshold" or None."""
        return DRIVES.get(self.kind)
