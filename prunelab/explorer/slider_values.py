"""What the controls' sliders show, and when a gesture changes anything: the one place that says
which quantity a slider stands for.

- The global slider shows one quantity, always the same: the fraction of *units* removed under
  structured pruning (what ``pruner.prune(x, granularity="structured")`` takes), else the
  fraction of *weights*. :func:`slider_fraction` reads it from any state (a drag, Python, undo).
- The |w| threshold slider starts at the state in effect, with a step from the weights kept
  now (:func:`threshold_range`), so its first steps each remove something.
- One gesture is one history step, and a gesture that changes nothing adds none
  (:func:`same_plans`).
- Layer names are shortened in the middle for a narrow label (:func:`short_name`), never cut.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from ..core.planning import unit_sparsity

LOG_STEPS = 400  # at most this many steps over the |w| slider's range
FIRST_STEPS = 10  # the |w| slider's first steps spread the lowest 2% of the kept weights


def slider_fraction(pruner, granularity: str) -> float:
    """What the global slider shows for the Pruner's state under ``granularity``: units removed
    for "structured", weights removed otherwise.

    Args:
        pruner: a Pruner. granularity: the controls' granularity (the state hub's).

    Returns:
        A fraction in [0, 1].

    Example:
        >>> slider_fraction(pruner.prune(0.5), "unstructured")
        0.5
    """
    return unit_sparsity(pruner) if granularity == "structured" else pruner.overall_sparsity()


def same_plans(now: Mapping[str, object], changes: Mapping[str, object]) -> bool:
    """True when applying ``changes`` ({layer: Plan or None}) to the plans ``now`` changes no layer.

    Example:
        >>> same_plans(pruner.plans, {"0": None})   # layer "0" is dense already
        True
    """
    for name, new in changes.items():
        old = now.get(name)
        if (old is None) != (new is None):
            return False
        if old is None:
            continue
        if (old.granularity, old.criterion, old.amount, old.threshold) != \
                (new.granularity, new.criterion, new.amount, new.threshold):
            return False
        if old.keep.shape != new.keep.shape or not torch.equal(old.keep.cpu(), new.keep.cpu()):
            return False
    return True


def kept_magnitudes(pruner, reference) -> np.ndarray:
    """|w| of every weight kept now (unmasked values from ``reference``, a DenseReference), nonzero only."""
    parts = [reference.abs_flat(l.name)[pruner.mask(l.name).reshape(-1).cpu().numpy()] for l in pruner.layers]
    flat = np.concatenate(parts) if parts else np.zeros(0)
    return flat[flat > 0]


def threshold_range(pruner, reference, start: float = 0.0) -> tuple[float, float, float, float]:
    """The |w| threshold slider's range, step and start, in log10 units, from the weights now.

    It starts at the state in effect: at ``start`` (the |w| that keeps the sparsity now), or at
    the smallest *kept* |w| when that is higher, so a threshold just there prunes nothing more.
    Its step comes from the kept weights too: each of the first steps up removes weights (the
    first :data:`FIRST_STEPS` steps spread the lowest 2% of the kept weights), with at most
    :data:`LOG_STEPS` steps in all. The range runs from the smallest nonzero unmasked |w| (below
    it no step changes anything; pruned weights fine-tuned to zero lie there) to the largest.
    Bounds and start lie on the step's grid (the page snaps to it).

    Args:
        pruner: a Pruner. reference: the state hub's DenseReference (unmasked weights).
        start: the |w| the slider should start at least at.

    Returns:
        ``(log10 min, log10 max, step, log10 start)``.

    Example:
        >>> lo, hi, step, at = threshold_range(pruner, state.reference)
        >>> lo <= at < hi
        True
    """
    kept = kept_magnitudes(pruner, reference)
    every = np.concatenate([reference.abs_flat(l.name) for l in pruner.layers])
    every = every[every > 0]
    if kept.size == 0 or every.size == 0:
        return -4.0, 0.0, 0.01, -4.0
    smallest_kept = float(kept.min())
    lo, hi = math.log10(float(every.min())), math.log10(float(every.max()))
    span = max(hi - lo, 1e-3)
    low_tail = float(np.quantile(kept, 0.02))
    step = (math.log10(max(low_tail, smallest_kept)) - math.log10(smallest_kept)) / FIRST_STEPS
    step = float(f"{min(max(step, span / LOG_STEPS), span / 50):.2g}")
    grid = lambda x, rounding: rounding(round(x / step, 6)) * step  # noqa: E731
    at = min(max(math.log10(max(start, smallest_kept)), lo), hi)
    return (round(grid(lo, math.floor), 10), round(grid(hi, math.ceil), 10), step,
            round(grid(at, math.floor), 10))


def short_name(name: str, limit: int = 10) -> str:
    """``name`` shortened in the middle to at most ``limit`` characters, with "…" where cut.

    Example:
        >>> short_name("features.0.block.1")
        'feat…ock.1'
    """
    name = name or "(root)"
    if len(name) <= limit:
        return name
    tail = limit // 2  # the end tells layers apart (block.1, block.2): keep more of it
    head = limit - 1 - tail
    return f"{name[:head]}…{name[-tail:]}"
