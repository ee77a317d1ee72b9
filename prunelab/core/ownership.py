"""Who holds a model: one Pruner at a time, and what happens when the weights move behind it.

A Pruner writes masks into its model's own parameters, so two Pruners on one model would each
report a state the model does not have. :func:`claim` refuses a model (or a module of it) that
another live Pruner holds; :func:`release` (``pruner.close()``) lets it go, and a Pruner that
nobody refers to any more lets it go by itself (the registry holds it by weak reference only).

Weights changed behind a Pruner's back (an in-place edit, an optimizer step,
``load_state_dict(sd, assign=True)`` replacing the Parameter objects) are noticed by their
identity and version counters (:func:`~prunelab.core.modes.param_versions`); :func:`outside_error`
is the error that says what to do then.
"""

from __future__ import annotations

import gc
import weakref

from torch import nn

from .layers import holds_layers

_HOLDERS: "weakref.WeakKeyDictionary[nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()


def holder(modules) -> object | None:
    """The live, open Pruner holding any of ``modules``, or None.

    Example:
        >>> holder([nn.Linear(2, 2)]) is None
        True
    """
    for m in modules:
        ref = _HOLDERS.get(m)
        pruner = ref() if ref is not None else None
        if pruner is not None and not pruner.closed:
            return pruner
    return None


def claim(pruner, model: nn.Module, modules) -> None:
    """Record that ``pruner`` holds ``model`` and ``modules`` (its prunable layers), or raise
    when another live Pruner holds any of them.

    Raises:
        ValueError: naming the other Pruner and how to release the model.

    Example:
        >>> claim(pruner, model, [l.module for l in pruner.layers])  # doctest: +SKIP
    """
    modules = [model, *modules]
    if holder(modules) not in (None, pruner):  # (no reference kept: the collector may free it)
        gc.collect()  # a Pruner nobody can reach may only wait for the cycle collector
    other = holder(modules)
    if other is not None and other is not pruner:
        raise ValueError(
            f"this model is a model another Pruner holds ({other!r}): two Pruners writing masks into one "
            "model would each report a state the model does not have. Use that Pruner, or release the model "
            "first with other.close() (it leaves the weights as they are now; other.reset().close() returns "
            "the originals first), or drop every reference to it. To compare prunings, give the second "
            "Pruner copy.deepcopy(model).")
    for m in modules:
        _HOLDERS[m] = weakref.ref(pruner)


def release(pruner) -> None:
    """Forget every module ``pruner`` holds (another Pruner may then take them).

    Example:
        >>> release(pruner)  # doctest: +SKIP
    """
    for m in [m for m, ref in list(_HOLDERS.items()) if ref() is pruner]:
        del _HOLDERS[m]


def outside_error(names: list[str]) -> ValueError:
    """The error for weights changed behind the Pruner's back, naming them and what to do.

    Example:
        >>> str(outside_error(["0.weight"])).startswith("the weights ['0.weight'] changed")
        True
    """
    return ValueError(
        f"the weights {names[:5]}{' ...' if len(names) > 5 else ''} changed outside this Pruner (an in-place "
        "edit, an optimizer step, or load_state_dict) since it last wrote them, so its masks, sparsity and "
        "measurements no longer describe the model, and nothing was measured. Call pruner.sync() to make the "
        "model's weights as they are now the unmasked weights (one step of history; the masks stay), or "
        "pruner.reset() to return to the original weights.")


class Custody:
    """A Pruner's hold on its model: claimed at construction, released by :meth:`close` (or
    when the Pruner is collected), and the check that its weights are as it last wrote them.

    Args:
        pruner: the Pruner (held by weak reference in the registry).
        masks: its :class:`~prunelab.core.maskstate.MaskState`.
        meter: its :class:`~prunelab.core.meter.Meter` (dropped caches when weights moved).

    Example:
        >>> custody = Custody(pruner, masks, meter)  # doctest: +SKIP
        >>> custody.guard()                          # doctest: +SKIP
    """

    def __init__(self, pruner, masks, meter):
        self.closed = False
        self.masks, self.meter = masks, meter
        self._pruner = weakref.ref(pruner)
        claim(pruner, masks.model, [m for m in masks.model.modules() if holds_layers(m)])

    def close(self) -> None:
        """Release the model; every later use of the Pruner is an error."""
        pruner = self._pruner()
        if pruner is not None:
            release(pruner)
        self.closed = True

    def guard(self) -> bool:
        """Refuse (ValueError) when closed, or when the weights changed behind the Pruner's back.

        Returns: False (nothing changed outside), for callers that pass it on as ``everything``.
        """
        if self.closed:
            raise closed_error()
        moved = self.masks.outside()
        if moved:
            raise outside_error(moved)
        return False

    def take_outside(self) -> bool:
        """Before a change that rewrites every parameter: follow replaced Parameter objects and
        drop what was measured.

        Returns: whether the weights had changed behind the Pruner's back (then every parameter
        must be rewritten).
        """
        if self.closed:
            raise closed_error()
        if not self.masks.outside():
            return False
        self.meter.forget(retrace=self.masks.rebind())
        return True


def closed_error() -> ValueError:
    """The error for any use of a Pruner after ``close()``."""
    return ValueError("this Pruner was closed: it no longer holds its model (which keeps the weights it had "
                      "then). Make a new Pruner on the model to go on.")
