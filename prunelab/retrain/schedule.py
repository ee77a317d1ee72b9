"""Sparsity schedules for gradual pruning: how far to prune at each step of :func:`iterate`."""

from __future__ import annotations

SCHEDULES = ("agp", "linear", "constant")


def sparsity_schedule(start: float, target: float, steps: int, schedule: str = "agp") -> list[float]:
    """The sparsity to prune to at each of ``steps`` steps, ending at ``target``.

    ``"agp"`` is the cubic schedule of Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f)(1 - t/n)^3``,
    pruning fast while many redundant weights remain and slowly near the target. ``"linear"``
    moves in equal steps. ``"constant"`` prunes to the target at every step (with regrowth, the
    mask keeps changing at a fixed sparsity, as in RigL).

    Args:
        start: the sparsity in effect before the first step (a fraction).
        target: the sparsity after the last step (a fraction).
        steps: how many steps, a whole number >= 1.
        schedule: one of :data:`SCHEDULES`.

    Returns:
        ``steps`` fractions in [0, 1], the last one exactly ``target``.

    Raises:
        ValueError: for an unknown schedule or a bad number of steps.

    Example:
        >>> sparsity_schedule(0.5, 1.0, 2, "linear")
        [0.75, 1.0]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {list(SCHEDULES)}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}.")
    out = []
    for t in range(1, steps + 1):
        if schedule == "agp":
            s = target + (start - target) * (1 - t / steps) ** 3
        elif schedule == "linear":
            s = start + (target - start) * t / steps
        else:
            s = target
        out.append(min(max(s, 0.0), 1.0))
    out[-1] = target
    return out
