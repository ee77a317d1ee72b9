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
FIRST_STEPS = 10  # the |w| slider's first steps spread the lowest 2% of the kept weights...
FIRST_STEP_SHARE = 0.001  # ...and each of the first VISIBLE_STEPS removes this share of all weights
VISIBLE_STEPS = 5  # (the readout shows 0.1%: a step that removes less looks like nothing)
MIN_STEPS = 15  # ...unless the range would then have fewer steps than this


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
    first :data:`FIRST_STEPS` steps spread the lowest 2% of the kept weights, and each of the first
    :data:`VISIBLE_STEPS` removes at least :data:`FIRST_STEP_SHARE` of all weights, so the readout
    moves: after a fine-tune the kept |w| thin out below the old threshold), with
    :data:`MIN_STEPS` to :data:`LOG_STEPS` steps in all. The range runs from the smallest nonzero
    unmasked |w| (below it no step changes anything; pruned weights fine-tuned to zero lie there)
    to the largest.
    Bounds and start lie on the step's grid (the page snaps to it), which runs through the start.

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
    weights = every.size
    every = every[every > 0]
    if kept.size == 0 or every.size == 0:
        return -4.0, 0.0, 0.01, -4.0
    smallest_kept = float(kept.min())
    lo, hi = math.log10(float(every.min())), math.log10(float(every.max()))
    span = max(hi - lo, 1e-3)
    low_tail = float(np.quantile(kept, 0.02))
    at = math.floor(min(max(math.log10(max(start, smallest_kept)), lo), hi) * 1e10) / 1e10  # down: keeps it
    step = (math.log10(max(low_tail, smallest_kept)) - math.log10(smallest_kept)) / FIRST_STEPS
    step = _visible_step(kept, at, max(step, span / LOG_STEPS), span / MIN_STEPS,
                         math.ceil(FIRST_STEP_SHARE * weights))
    below, above = (math.ceil(round(d / step, 6)) for d in (at - lo, hi - at))  # the grid runs through the start
    return round(at - below * step, 10), round(at + above * step, 10), step, at


def _visible_step(kept: np.ndarray, at: float, step: float, most: float, share: int) -> float:
    """The smallest step from ``step`` up (to ``most``, two significant digits) whose first
    :data:`VISIBLE_STEPS` steps from log10 |w| ``at`` each remove ``share`` of the ``kept`` |w|."""
    lowest = min(kept.size, 40 * share * VISIBLE_STEPS)  # the region the first steps can reach
    low = np.log10(np.sort(np.partition(kept, lowest - 1)[:lowest]))
    most = round(most, 12)
    while step < most:
        unit = 10.0 ** (math.floor(math.log10(step)) - 1)
        step = round(min(math.ceil(step / unit) * unit, most), 12)
        edges = at + step * np.arange(VISIBLE_STEPS + 1)
        removed = np.diff(np.searchsorted(low, edges))  # |w| below a threshold goes
        if (removed >= share).all() or edges[-1] > low[-1]:
            return step
        step *= 1.05
    return most


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
