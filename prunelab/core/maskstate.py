"""The mask state: the model's parameters, the unmasked weights, and the effective masks.

Mask semantics (as in torch.nn.utils.prune, without its wrappers): a mask is a boolean tensor
shaped like its parameter, True where the entry is kept. ``base * mask`` is written into the
model's parameters in place, so the model stays an ordinary module: its forward, state_dict,
torch.save and deepcopy work unchanged and hold the pruned weights. A parameter with no mask (or
a mask that keeps everything) holds its unmasked weights. A weight's effective mask is the
product of the plans that touch it: its own (unstructured, 2:4) and those of the unit groups it
belongs to (structured pruning of its layer, or of a layer it reads from). Masks are held one
bit per entry (:class:`~prunelab.core.bits.Bits`; a parameter with one unstructured plan shares
its plan's bits) and unpacked one parameter at a time when written.

Side effects: :meth:`MaskState.enter` and :meth:`MaskState.dense` change the model's parameter
values in place (``.data`` is written; the Parameter objects stay the same). Modules whose
parameters changed are collected for incremental evaluation (:meth:`MaskState.take_changed`).
``enter`` is all or nothing: the masks are computed before the first write, and an error or a
KeyboardInterrupt during the writes puts every parameter back as it was.

Every write is noted with the parameter's identity and version counter, so a change made
behind the state's back shows in :meth:`MaskState.outside`. The original buffers are kept once,
for :meth:`MaskState.restore_buffers` (which also writes the buffers a history step recorded).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import torch
from torch import nn

from .bits import Bits, unique_nbytes
from .layers import Layer
from .units import UnitGroup
from .modes import param_versions


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
        self._masks: dict[str, Bits] = {}          # param name -> effective keep-mask (absent: dense)
        self._changed: set[str] = set()            # modules changed since take_changed()
        self._seen = param_versions(self.params)  # (identity, version) of each parameter as last written
        self.original_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    # ------------------------------------------------------------------ outside changes

    def outside(self) -> list[str]:
        """Names of the parameters changed, or replaced, since this state last wrote them."""
        now = dict(self.model.named_parameters())
        if now.keys() != self.params.keys():
            return sorted(set(now) ^ set(self.params))
        return [n for n, seen in param_versions(now).items() if self._seen.get(n) != seen]

    def rebind(self) -> bool:
        """Follow the model's current Parameter objects (after ``load_state_dict(assign=True)``).

        Returns: whether any object was replaced. Raises ValueError when names or shapes changed.
        """
        now = dict(self.model.named_parameters())
        if now.keys() != self.params.keys() or any(now[n].shape != self.params[n].shape for n in now):
            raise ValueError("the model's parameters changed names or shapes since the Pruner was made, so its "
                             "masks cannot follow them; make a new Pruner on the model as it is now.")
        replaced = any(now[n] is not self.params[n] for n in now)
        self.params = now
        return replaced

    def restore_buffers(self, buffers: Mapping[str, torch.Tensor] | None = None) -> bool:
        """Write ``buffers`` (``{buffer name: tensor}``; default: the original buffers) back into
        the model, bit for bit (every buffer still present and named); even when one write is
        interrupted, each is tried once more before the error propagates.

        Returns: whether any buffer differed.
        """
        buffers = self.original_buffers if buffers is None else buffers
        differed, failed, error = False, [], None
        for n, b in list(self.model.named_buffers()):
            old = buffers.get(n)
            if old is None or _same_bits(b, old):
                continue
            differed = True
            try:
                _put_buffer(self.model, n, b, old)
            except BaseException as e:
                failed.append((n, b, old))
                error = error or e
        for n, b, old in failed:
            _put_buffer(self.model, n, b, old)
        if error is not None:
            raise error
        return differed

    # ------------------------------------------------------------------ reading

    def mask(self, param: str) -> torch.Tensor:
        """The effective keep-mask of parameter ``param`` (a copy; all True when it is dense)."""
        m = self._masks.get(param)
        return torch.ones_like(self.params[param], dtype=torch.bool) if m is None else m.tensor()

    def masks(self) -> dict[str, torch.Tensor]:
        """Copies of every effective mask, by parameter name (dense parameters are absent)."""
        return {n: m.tensor() for n, m in self._masks.items()}

    def nbytes(self) -> int:
        """Bytes of the masks held (those shared with a plan included)."""
        return unique_nbytes(self._masks.values())

    def held(self) -> list[Bits]:
        """The masks held, as :class:`~prunelab.core.bits.Bits` (some are the plans' own)."""
        return list(self._masks.values())

    def sparsity(self, layers: list[Layer]) -> dict[str, float]:
        """``{layer name: fraction of its weight masked}`` for ``layers``."""
        masks = {l.name: self._masks.get(l.weight_name) for l in layers}
        return {l.name: 0.0 if masks[l.name] is None else 1 - masks[l.name].kept / l.params for l in layers}

    def counts(self) -> tuple[int, int, int]:
        """(all parameter entries, entries masked, entries under a mask) of the model."""
        params = sum(p.numel() for p in self.params.values())
        masked = sum(m.numel - m.kept for m in self._masks.values())
        return params, masked, sum(m.numel for m in self._masks.values())

    def take_changed(self) -> set[str]:
        """Names of the modules whose parameters changed since the last call (and forget them)."""
        changed, self._changed = self._changed, set()
        return changed

    # ------------------------------------------------------------------ writing

    def enter(self, old_plans: Mapping, plans: Mapping, weights: Mapping[str, torch.Tensor],
              everything: bool = False) -> None:
        """Go from ``old_plans`` to ``plans`` over ``weights``, rewriting only the parameters that
        a changed plan touches (all of them when the weights changed, or with ``everything``).
        All or nothing: on any exception the parameters and masks are as before."""
        if everything or weights is not self.weights:
            touched = set(self.params)
        else:
            touched = set()
            for n in set(old_plans) | set(plans):
                if old_plans.get(n) is not plans.get(n):
                    touched |= self._plan_params(n, old_plans.get(n)) | self._plan_params(n, plans.get(n))
        fresh = self._fresh(plans, touched)  # may raise: nothing is written yet
        saved = self.weights, dict(self._masks)
        try:
            self.weights = weights
            buffer = _unpack_buffer([fresh[p] for p in touched if p in fresh])
            for p in touched:
                if p in fresh and fresh[p].kept < fresh[p].numel:
                    self._masks[p] = fresh[p]
                else:
                    self._masks.pop(p, None)
                self._write(p, buffer)
        except BaseException:
            self.weights, self._masks = saved
            self._write_all(touched)
            raise
        self._changed |= {p.rpartition(".")[0] for p in touched}

    @contextlib.contextmanager
    def dense(self):
        """Load the unmasked weights into the model for the duration; the masks are written back
        after (even on an error). Only the parameters that do not hold their unmasked weights
        (masked, or changed from outside) are loaded, and only those and the ones changed
        meanwhile are written back: a dense state costs no copy of a big model's weights."""
        try:
            with torch.no_grad():
                for n in set(self._masks) | set(self.outside()):
                    self.params[n].copy_(self.weights[n])
            yield self.model
        finally:
            self._write_all(set(self._masks) | set(self.outside()))

    def _plan_params(self, layer: str, plan) -> set[str]:
        if plan is None:
            return set()
        if plan.granularity == "structured":
            return self._unit_groups()[layer].params
        return {self._weight_of[layer]}

    def _fresh(self, plans: Mapping, params: set[str]) -> dict[str, Bits]:
        """The effective masks of ``params`` under ``plans`` (absent: no plan touches it). A weight
        with its own plan alone shares that plan's bits; masks made here are packed as made."""
        fresh: dict[str, torch.Tensor] = {}  # masks built from unit groups, unpacked while built
        own: dict[str, list] = {}            # weight -> the bits of its own plans
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
                    own.setdefault(w, []).append(plan.bits)
        packed = {p: Bits(m) for p, m in fresh.items() if p not in own}
        for w, bits in own.items():
            if len(bits) == 1 and w not in fresh:
                packed[w] = bits[0]
                continue
            m = fresh.pop(w, None)
            for b in bits:
                m = b.tensor() if m is None else m & b.tensor()
            packed[w] = Bits(m)
        return packed

    def _write_all(self, params) -> None:
        """Write every parameter in ``params``, even when one write is interrupted (it is tried
        once more at the end), then raise the first error."""
        failed, error = [], None
        buffer = _unpack_buffer([self._masks[p] for p in params if p in self._masks])
        for p in params:
            try:
                self._write(p, buffer)
            except BaseException as e:
                failed.append(p)
                error = error or e
        for p in failed:
            self._write(p)
        if error is not None:
            raise error

    def _write(self, p: str, buffer: torch.Tensor | None = None) -> None:
        """Write parameter ``p``: its unmasked weights times its mask (unpacked into ``buffer``,
        see :func:`_unpack_buffer`, when it is on the mask's device)."""
        param = self.params[p]
        with torch.no_grad():
            m = self._masks.get(p)
            if m is None:
                param.copy_(self.weights[p])
            else:
                out = buffer if buffer is not None and buffer.device == m.device else None
                torch.mul(self.weights[p], m.tensor(out), out=param.data)
        self._seen.update(param_versions({p: param}))


def _unpack_buffer(masks: list[Bits]) -> torch.Tensor | None:
    """One bool buffer for unpacking every mask of ``masks`` in turn (on the first one's device):
    writing many parameters then allocates no mask-sized tensor per parameter, whose freed blocks
    of many sizes would stay resident as heap fragments."""
    if not masks:
        return None
    return torch.empty(max(m.padded for m in masks), dtype=torch.bool, device=masks[0].device)


def _put_buffer(model: nn.Module, name: str, b: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        if b.shape == value.shape and b.dtype == value.dtype:
            b.copy_(value)
        else:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, value.clone())


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN equals NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.detach().contiguous().reshape(-1).view(torch.uint8),
                       b.detach().contiguous().reshape(-1).view(torch.uint8))
