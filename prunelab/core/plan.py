"""A Plan: how one layer is pruned now (granularity, criterion, amount or threshold, and its
keep-mask held one bit per entry). Plans are made in :mod:`.planning` and kept in history."""

from __future__ import annotations

import torch

from .bits import Bits


class Plan:
    """How one layer is pruned now. ``keep`` is the weight keep-mask (unstructured, 2:4) or the
    unit keep-vector (structured, shared by coupled layers), True = kept.

    A plan is immutable. A bool ``keep`` is held one bit per entry (:class:`~prunelab.core.bits.Bits`,
    so every step of history costs 1/32 of the weights it masks) and ``plan.keep`` gives a new bool
    tensor on each read; anything else given as ``keep`` is held as it is, for
    :func:`~prunelab.core.planning.checked_plans` to refuse by name.

    Example:
        >>> Plan("unstructured", "magnitude", 0.5, None, torch.tensor([True, False])).keep
        tensor([ True, False])
    """

    __slots__ = ("granularity", "criterion", "amount", "threshold", "_keep")

    def __init__(self, granularity: str, criterion: str, amount: float | None, threshold: float | None, keep):
        packed = keep if isinstance(keep, Bits) else (
            Bits(keep) if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool else keep)
        for name, value in zip(self.__slots__, (granularity, criterion, amount, threshold, packed)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"a Plan is immutable (it is part of a step of history); make a new one instead "
                             f"of setting {name!r}.")

    @property
    def keep(self):
        """The keep-mask as a new bool tensor (what was given, when it was not a bool tensor)."""
        return self._keep.tensor() if isinstance(self._keep, Bits) else self._keep

    @property
    def bits(self) -> Bits | None:
        """The keep-mask as held (one bit per entry); None when ``keep`` was not a bool tensor."""
        return self._keep if isinstance(self._keep, Bits) else None

    def replace(self, **changes) -> "Plan":
        """A new plan with ``changes`` (any of granularity, criterion, amount, threshold, keep)."""
        return Plan(**{**dict(granularity=self.granularity, criterion=self.criterion, amount=self.amount,
                                threshold=self.threshold, keep=self._keep), **changes})

    def __reduce__(self):  # copies and pickles go through __init__ (setting attributes is refused)
        return Plan, (self.granularity, self.criterion, self.amount, self.threshold, self._keep)

    def __repr__(self) -> str:
        return (f"Plan({self.granularity!r}, {self.criterion!r}, amount={self.amount!r}, "
                f"threshold={self.threshold!r}, keep={self._keep!r})")
