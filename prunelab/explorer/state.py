"""What the views show, as traitlets: the Explorer sets it, the views observe it.

Views never call the Pruner to change it; they read the Pruner (masks, weights, layers) when a
trait they observe changes. ``revision`` moves once per measured change of the Pruner, after
``metrics`` is set, so a view that observes it sees consistent state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from traitlets import Any, Bool, Dict, HasTraits, Int, Unicode

CRITERIA = ("magnitude", "taylor", "attribution", "random")
COMPARED = ("magnitude", "taylor", "attribution")  # the criteria the importance view sets side by side
GRANULARITIES = ("unstructured", "structured", "2:4")


@dataclass
class DenseReference:
    """The unmasked weights of every prunable layer (one weights version), for views that show
    what pruning removed."""

    version: int
    weights: dict[str, torch.Tensor]   # layer name -> unmasked weight

    def abs_flat(self, layer: str) -> np.ndarray:
        return self.weights[layer].detach().abs().reshape(-1).float().cpu().numpy()


def dense_reference(pruner) -> DenseReference:
    """The Pruner's unmasked layer weights now (a copy: the model itself holds masked weights)."""
    with pruner.dense():
        weights = {l.name: l.module.weight.detach().clone() for l in pruner.layers}
    return DenseReference(pruner.weights_version, weights)


def magnitude_scores(pruner) -> dict[str, np.ndarray]:
    """Unit importance by magnitude (L1 norm of each unit's unmasked weights): instant."""
    return {n: s.detach().cpu().numpy() for n, s in pruner.scores("magnitude", units=True).items()}


class ExplorerState(HasTraits):
    """Shared, observable state of one explorer."""

    layer = Unicode(help="layer shown in the detail views")
    criterion = Unicode("magnitude", help="criterion the controls prune by")
    granularity = Unicode("unstructured")
    mode = Unicode("amount", help="'amount' (fractions) or 'threshold' (absolute |w|)")
    threshold = Any(None, help="the |w| threshold in effect in threshold mode")
    revision = Int(0, help="moves after every measured change of the Pruner")
    metrics = Any(None, help="Metrics of the current state")
    baseline = Any(None, help="Metrics of the dense model")
    reference = Any(None, help="DenseReference of the unmasked weights")
    scores = Dict(help="{criterion: {layer: np.ndarray of unit scores}} on the unmasked weights, as computed")
    score_errors = Dict(help="{criterion: why its scores could not be computed}")
    explanations = Any(None, help="analysis.Explanations, or None before the first")
    explanations_stale = Bool(True)
    explain_error = Unicode("")
    busy = Unicode("", help="what runs in the background, '' when idle")
