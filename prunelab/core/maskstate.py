"""The mask state: the model's parameters, the unmasked weights, and the effective masks.

Mask semantics (as in torch.nn.utils.prune, without its wrappers): a mask is a boolean tensor
shaped like its parameter, True where the entry is kept. ``base * mask`` is written into the
model's parameters in place, so the model stays an ordinary module: its forward, state_dict,
torch.save and deepcopy work unchanged and hold the pruned weights. A parameter with no mask (or
a mask that keeps everything) holds its unmasked weights. A weight's effective mask is the
product of the plans that touch it: its own (unstructured, 2:4) and those of the unit groups it
belongs to (structured pruning of its layer, or of a layer it reads from).

Side effects: :meth:`MaskState.enter` and :meth:`MaskState.dense` change the model's parameter
values in place (``.data`` is written; the Parameter objects stay the same). Modules whose
parameters changed are collected for incremental evaluation (:meth:`MaskState.take_changed`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import torch
from torch import nn

from .layers import Layer, UnitGroup


class MaskState:
    """Masks over ``model``'s own parameters.

    Args:
        model: the model whose parameters are written in place.
        layers: its prunable layers.
        weights: the unmasked weights in effect, ``{parameter name: tensor}``.
        unit_groups: returns the unit groups by layer name (for structured plans).

    Example:
        >>> state = MaskState(model, layers, original, pruner.unit_groups)  # doctest: +SKIP
        >>> state.enter({}, {"0": plan}, original)                           # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, layers: list[Layer], weights: Mapping[str, torch.Tensor],
                 unit_groups: Callable[[], Mapping[str, UnitGroup]]):
        self.model = model
        self.params: dict[str, nn.Parameter] = dict(model.named_parameters())
        self.weights = weights
        self._weight_of = {l.name: l.weight_name for l in layers}
        self._unit_groups = unit_groups
        self._masks: dict[str, torch.Tensor] = {}  # param name -> effective keep-mask (absent: dense)
        self._kept: dict[str, int] = {}            # param name -> entries kept by its mask (counted once)
        self._changed: set[str] = set()            # modules changed since take_changed()

    # ------------------------------------------------------------------ reading

    def mask(self, param: str) -> torch.Tensor:
        """The effective keep-mask of parameter ``param`` (a copy; all True when it is dense)."""
        m = self._masks.get(param)
        return torch.ones_like(self.params[param], dtype=torch.bool) if m is None else m.clone()

    def masks(self) -> dict[str, torch.Tensor]:
        """Copies of every effective mask, by parameter name (dense parameters are absent)."""
        return {n: m.clone() for n, m in self._masks.items()}

    def sparsity(self, layers: list[Layer]) -> dict[str, float]:
        """``{layer name: fraction of its weight masked}`` for ``layers``."""
        kept = {l.name: self._kept.get(l.weight_name) for l in layers}
        return {l.name: 0.0 if kept[l.name] is None else 1 - kept[l.name] / l.params for l in layers}

    def counts(self) -> tuple[int, int, int]:
        """(all parameter entries, entries masked, entries under a mask) of the model."""
        params = sum(p.numel() for p in self.params.values())
        masked = sum(self._masks[p].numel() - kept for p, kept in self._kept.items())
        return params, masked, sum(m.numel() for m in self._masks.values())

    def take_changed(self) -> set[str]:
        """Names of the modules whose parameters changed since the last call (and forget them)."""
        changed, self._changed = self._changed, set()
        return changed

    # ------------------------------------------------------------------ writing

    def enter(self, old_plans: Mapping, plans: Mapping, weights: Mapping[str, torch.Tensor]) -> None:
        """Go from ``old_plans`` to ``plans`` over ``weights``, rewriting only the parameters that
        a changed plan touches (all of them when the weights changed)."""
        if weights is not self.weights:
            touched = set(self.params)
        else:
            touched = set()
            for n in set(old_plans) | set(plans):
                if old_plans.get(n) is not plans.get(n):
                    touched |= self._plan_params(n, old_plans.get(n)) | self._plan_params(n, plans.get(n))
        self.weights = weights
        self._refresh(plans, touched)

    @contextlib.contextmanager
    def dense(self):
        """Load the unmasked weights into the model for the duration; the masks are written back
        after (even on an error)."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.weights[n])
        try:
            yield self.model
        finally:
            for n in self.params:
                self._write(n)

    def _plan_params(self, layer: str, plan) -> set[str]:
        if plan is None:
            return set()
        if plan.granularity == "structured":
            return self._unit_groups()[layer].params
        return {self._weight_of[layer]}

    def _refresh(self, plans: Mapping, params: set[str]) -> None:
        if not params:
            return
        fresh: dict[str, torch.Tensor] = {}
        seen_groups = set()
        for n, plan in plans.items():
            if plan.granularity == "structured":
                g = self._unit_groups()[n]
                if id(g) in seen_groups or not (g.params & params):
                    continue
                seen_groups.add(id(g))
                for p in g.params & params:
                    fresh.setdefault(p, torch.ones_like(self.params[p], dtype=torch.bool))
                g.keep_masks(plan.keep, {p: fresh[p] for p in g.params & params})
            else:
                w = self._weight_of[n]
                if w in params:
                    fresh[w] = fresh[w] & plan.keep if w in fresh else plan.keep.clone()
        for p in params:
            kept = int(fresh[p].count_nonzero()) if p in fresh else None
            if kept is not None and kept < fresh[p].numel():
                self._masks[p], self._kept[p] = fresh[p], kept
            else:
                self._masks.pop(p, None)
                self._kept.pop(p, None)
            self._write(p)
            self._changed.add(p.rpartition(".")[0])

    def _write(self, p: str) -> None:
        with torch.no_grad():
            m = self._masks.get(p)
            if m is None:
                self.params[p].copy_(self.weights[p])
            else:
                torch.mul(self.weights[p], m, out=self.params[p].data)
