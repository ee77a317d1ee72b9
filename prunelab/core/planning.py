"""Planning: turning a request (an amount, a threshold, 2:4, or explicit plans) into a
:class:`Plan` per layer, and merging plans into those in effect.

The functions read a Pruner through its public surface only (``layer``, ``layer_names``,
``unit_groups``, ``structured_blocked``, ``ranking``, ``scores``, ``history``) and return
``{layer name: Plan, or None for dense}``; the Pruner commits the result as one step of history.
Nothing is committed when a request is invalid: every check runs before any plan is returned.
"""

from __future__ import annotations

import warnings
from typing import Callable, Mapping

import torch

from .bits import Bits
from .plan import Plan
from .checks import GRANULARITIES, SCOPES, check_choice, check_count, check_fraction, check_layer_names, check_threshold
from .criteria import get_criterion
from .units import UnitGroup
from .masks import n_of_m_mask, rounded_kept
from .reasons import summarize


def eligible(pruner, granularity: str, names: list[str] | None) -> list[str]:
    """The layers a request may prune: ``names`` (all layers when None), checked for structured.

    Args:
        pruner: the Pruner.
        granularity: one of GRANULARITIES.
        names: checked layer names, or None for every layer that can take ``granularity``.

    Returns:
        Layer names in order.

    Example:
        >>> eligible(pruner, "structured", None)  # doctest: +SKIP
        ['0', '2']
    """
    if granularity != "structured":
        return names if names is not None else pruner.layer_names
    groups, blocked = pruner.unit_groups(), pruner.structured_blocked
    if names is None:
        if not groups:
            raise ValueError(f"no layer of this model can be pruned structurally ({summarize(blocked)}). "
                             "Use granularity='unstructured' or '2:4'.")
        return [n for n in pruner.layer_names if n in groups]
    for n in names:
        if n not in groups:
            raise ValueError(f"layer {n!r} cannot be pruned structurally: {blocked[n]}. "
                             "Use granularity='unstructured' for it.")
    return names


def _set_group(plans: dict, group: UnitGroup, plan: Plan | None):
    for n in group.layers:
        plans[n] = plan


def _pruned(keep: torch.Tensor) -> float:
    return 1 - int(keep.count_nonzero()) / keep.numel()  # (a bool sum widens every entry: 30x slower)


def requested_plans(pruner, amount, threshold, criterion, granularity: str, scope: str,
                    round_to: int | None = None) -> dict[str, Plan | None]:
    """Plans for what ``pruner.prune`` was asked, every argument checked first.

    Returns:
        ``{layer name: Plan or None}``, from :func:`amount_plans` or :func:`threshold_plans`.

    Example:
        >>> requested_plans(pruner, 0.5, None, "magnitude", "unstructured", "global")  # doctest: +SKIP
    """
    check_choice(granularity, GRANULARITIES, "granularity")
    check_choice(scope, SCOPES, "scope")
    get_criterion(criterion)
    if (amount is None) == (threshold is None):
        raise ValueError("give either amount (a fraction to prune) or threshold (an absolute |w|), not "
                         f"{'both' if amount is not None else 'neither'}.")
    if round_to is not None:
        check_count(round_to, "round_to")
        if granularity != "structured" or threshold is not None:
            raise ValueError("round_to rounds the units each layer keeps, so it needs granularity='structured' "
                             "and an amount; leave it out otherwise.")
    if threshold is not None:
        return threshold_plans(pruner, threshold, criterion, granularity)
    return amount_plans(pruner, amount, criterion, granularity, scope, round_to)


def amount_plans(pruner, amount, criterion, granularity: str, scope: str,
                 round_to: int | None = None) -> dict[str, Plan | None]:
    """Plans pruning ``amount`` (a fraction, or ``{layer: fraction}``), as ``pruner.prune`` does.

    Returns:
        ``{layer name: Plan or None}`` for the layers the request sets.

    Example:
        >>> amount_plans(pruner, 0.5, "magnitude", "unstructured", "global")  # doctest: +SKIP
    """
    crit = get_criterion(criterion)
    per_layer = isinstance(amount, Mapping)
    amounts = None
    if per_layer:
        amounts = dict(zip(check_layer_names(list(amount), pruner.layer_names), amount.values()))
        for v in amounts.values():
            check_fraction(v)
    else:
        check_fraction(amount)
    if granularity == "2:4":
        return nm_plans(pruner, amounts if per_layer else dict.fromkeys(pruner.layer_names, amount), criterion,
                        strict=per_layer)
    names = eligible(pruner, granularity, list(amounts) if per_layer else None)
    name = crit.name
    plans: dict[str, Plan | None] = {}
    if granularity == "unstructured":
        if per_layer or scope == "layer":
            for n in names:
                a = amounts[n] if per_layer else amount
                keep = pruner.ranking(criterion, granularity, (n,)).masks(a)[0]
                plans[n] = Plan(granularity, name, a, None, keep) if a > 0 else None
        else:
            for n, keep in zip(names, pruner.ranking(criterion, granularity, tuple(names)).each_mask(amount)):
                bits = Bits(keep)  # packed before the ranking reuses its buffer for the next layer
                a = 1 - bits.kept / bits.numel
                plans[n] = Plan(granularity, name, a, None, bits) if a > 0 else None
        return plans
    # structured: one decision per unit group (coupled layers share it)
    groups = pruner.unit_groups()
    roots = list(dict.fromkeys(groups[n].layers[0] for n in names))
    if per_layer:  # coupled layers lose the same units, so one amount must serve them all
        for root in roots:
            given = {n: amounts[n] for n in groups[root].layers if n in amounts}
            if len(set(given.values())) > 1:
                raise ValueError(f"layers {list(given)} are coupled (they lose the same units, e.g. through a "
                                 f"residual addition) but got different amounts {given}; give them one amount.")
    if per_layer or scope == "layer":
        for root in roots:
            g = groups[root]
            a = next(amounts[n] for n in g.layers if n in amounts) if per_layer else amount
            keep = pruner.ranking(criterion, granularity, (root,)).masks(a)[0]
            keep = _rounded(pruner, criterion, root, keep, round_to)
            a = _pruned(keep) if round_to else a
            _set_group(plans, g, Plan(granularity, name, a, None, keep) if a > 0 else None)
    else:
        for root, keep in zip(roots, pruner.ranking(criterion, granularity, tuple(roots)).masks(amount)):
            keep = _rounded(pruner, criterion, root, keep, round_to)
            a = _pruned(keep)
            _set_group(plans, groups[root], Plan(granularity, name, a, None, keep) if a > 0 else None)
    return plans


def _rounded(pruner, criterion, root: str, keep: torch.Tensor, round_to: int | None) -> torch.Tensor:
    """A unit group's ``keep`` moved to a multiple of ``round_to`` units kept, the highest scored."""
    kept = int(keep.count_nonzero())
    want = rounded_kept(kept, keep.numel(), round_to) if round_to else kept
    return keep if want == kept else pruner.ranking(criterion, "structured", (root,)).keeping(want)[0]


def nm_plans(pruner, amounts: dict[str, float], criterion, strict: bool) -> dict[str, Plan | None]:
    """2:4 plans: ``amounts`` is 0.5 (apply) or 0 (clear) per layer. Layers whose rows are not a
    multiple of 4 are an error when ``strict`` (named by the user), else left out with a warning
    that names each of them and its row length.

    Returns:
        ``{layer name: Plan or None}``.

    Example:
        >>> nm_plans(pruner, {"0": 0.5}, "magnitude", strict=True)  # doctest: +SKIP
    """
    bad = [a for a in amounts.values() if a not in (0, 0.5)]
    if bad:
        raise ValueError(f"2:4 sparsity removes exactly half of the weights, so its amount is 0.5 (or 0 to "
                         f"undo it); got {bad[0]}. Use granularity='unstructured' for other amounts.")
    name = get_criterion(criterion).name
    misfits = {n: r for n, r in nm_blocked(pruner).items() if n in amounts}
    if misfits and strict:
        raise ValueError(f"2:4 cannot prune {summarize(misfits)}. Leave {'it' if len(misfits) == 1 else 'them'} out "
                         "of the dict, or use granularity='unstructured' for "
                         f"{'it' if len(misfits) == 1 else 'them'}.")
    if misfits and any(amounts.values()):
        warnings.warn(f"2:4 left {len(misfits)} of {len(amounts)} layers dense: {summarize(misfits)}. Prune "
                      "what should be sparse too with granularity='unstructured' (pruner.blocked('2:4') lists "
                      "these layers).", stacklevel=5)
    plans: dict[str, Plan | None] = {}
    scores = pruner.scores(criterion) if any(amounts.values()) else {}
    for n, a in amounts.items():
        if n not in misfits:
            layer = pruner.layer(n)
            plans[n] = Plan("2:4", name, 0.5, None, layer.from_rows(n_of_m_mask(layer.rows(scores[n])))) if a else None
    return plans


def nm_blocked(pruner, m: int = 4) -> dict[str, str]:
    """``{layer name: reason}`` for the layers an n:m pattern (2:4) cannot take: their rows (the
    weights of one output unit, along which the groups of ``m`` run) are not a multiple of ``m``.

    Args:
        pruner: the Pruner.
        m: the group size (4 for 2:4).

    Returns:
        ``{layer name: "its rows are N weights long, not a multiple of 4"}``, in layer order.

    Example:
        >>> nm_blocked(pruner)  # doctest: +SKIP
        {'features.0.conv': 'its rows are 27 weights long, not a multiple of 4'}
    """
    return {l.name: f"its rows are {l.row_length} weights long, not a multiple of {m}"
            for l in pruner.layers if not l.fits_n_of_m(m)}


def blocked(pruner, granularity: str) -> dict[str, str]:
    """``{layer name: reason}`` for the layers ``granularity`` cannot prune: for "structured"
    :attr:`structured_blocked`, for "2:4" :func:`nm_blocked` (with each row length), for
    "unstructured" none. :func:`prunelab.core.reasons.summarize` makes it one short line.

    Args:
        pruner: the Pruner.
        granularity: one of GRANULARITIES.

    Returns:
        ``{layer name: reason}``.

    Example:
        >>> pruner.blocked("2:4")  # doctest: +SKIP
        {'0': 'its rows are 6 weights long, not a multiple of 4'}
    """
    check_choice(granularity, GRANULARITIES, "granularity")
    if granularity == "structured":
        return pruner.structured_blocked
    return nm_blocked(pruner) if granularity == "2:4" else {}


def threshold_plans(pruner, threshold, criterion, granularity: str) -> dict[str, Plan | None]:
    """Plans pruning weights (or, structured, units by their mean ``|w|``) below ``threshold``
    (a number or ``{layer: number}``), by magnitude only.

    Returns:
        ``{layer name: Plan or None}``.

    Example:
        >>> threshold_plans(pruner, 0.05, "magnitude", "unstructured")  # doctest: +SKIP
    """
    crit = get_criterion(criterion)
    if crit.name != "magnitude":
        raise ValueError("threshold= prunes by absolute |w|, so it works with criterion='magnitude' only; "
                         "use amount= with other criteria.")
    if granularity == "2:4":
        raise ValueError("threshold= cannot give a 2:4 pattern; use amount=0.5 with granularity='2:4'.")
    if isinstance(threshold, Mapping):
        names = check_layer_names(list(threshold), pruner.layer_names)
        values = dict(zip(names, threshold.values()))
    else:
        names, values = None, None
    for v in (values.values() if values else [threshold]):
        check_threshold(v)
    plans: dict[str, Plan | None] = {}
    weights = pruner.history.current.weights
    for n in eligible(pruner, granularity, names):
        t = float(values[n] if values else threshold)
        if granularity == "unstructured":
            keep = pruner.ranking("magnitude", granularity, (n,)).masks_below(t)[0]
            plans[n] = Plan(granularity, crit.name, _pruned(keep), t, keep) if _pruned(keep) > 0 else None
        else:
            g = pruner.unit_groups()[n]
            mean_abs = sum(pruner.layer(l).rows(weights[pruner.layer(l).weight_name].abs()).mean(1)
                           for l in g.layers) / len(g.layers)
            keep = mean_abs >= t
            _set_group(plans, g, Plan(granularity, crit.name, _pruned(keep), t, keep) if _pruned(keep) > 0 else None)
    return plans


def checked_plans(pruner, plans: Mapping[str, Plan | None]) -> dict[str, Plan | None]:
    """Explicit plans (as ``set_plans`` takes them) checked, with their masks copied to the
    Pruner's device; a structured plan is spread over the layers coupled with the one named.

    Returns:
        ``{layer name: Plan or None}``.

    Raises:
        ValueError / TypeError: an unknown layer, something not a Plan, a keep tensor of the
        wrong dtype or shape, a structured plan for a layer that cannot take one.

    Example:
        >>> checked_plans(pruner, {"0": None})  # doctest: +SKIP
        {'0': None}
    """
    changes: dict[str, Plan | None] = {}
    for name, plan in zip(check_layer_names(list(plans), pruner.layer_names), plans.values()):
        if plan is None:
            changes[name] = None
            continue
        if not isinstance(plan, Plan) or plan.granularity not in GRANULARITIES:
            raise TypeError(f"plans[{name!r}] must be a prunelab Plan (or None for dense), got {plan!r}.")
        layer = pruner.layer(name)
        if plan.granularity == "structured":
            eligible(pruner, "structured", [name])
        heads = plan.granularity == "structured" and pruner.unit_groups()[name].heads
        shape = (pruner.unit_groups()[name].units,) if plan.granularity == "structured" else layer.shape
        keep = plan.keep
        if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or tuple(keep.shape) != tuple(shape):
            unit = f" (one per attention head: {heads.describe()})" if heads else ""
            raise ValueError(f"plans[{name!r}].keep must be a bool tensor shaped {tuple(shape)}{unit} "
                             f"(True = kept), got {getattr(keep, 'dtype', type(keep))} "
                             f"{tuple(getattr(keep, 'shape', ()))}.")
        if plan.bits is None or plan.bits.device != torch.device(pruner.device):  # bits are immutable: shared
            plan = plan.replace(keep=keep.detach().to(pruner.device))
        if plan.granularity == "structured":
            _set_group(changes, pruner.unit_groups()[name], plan)
        else:
            changes[name] = plan
    return changes


def merge_plans(plans: Mapping[str, Plan], changes: Mapping[str, Plan | None],
                groups: Callable[[], Mapping[str, UnitGroup]]) -> dict[str, Plan]:
    """``plans`` with ``changes`` applied (None = dense). A layer leaving structured pruning takes
    the layers coupled with it along (they shared its unit mask).

    Args:
        plans: the plans in effect.
        changes: new plans by layer.
        groups: returns the unit groups by layer name (called only when a structured plan is
            replaced, so the dependency graph is never built for nothing).

    Returns:
        The new plans.

    Example:
        >>> merge_plans({}, {"0": None}, dict)
        {}
    """
    merged = dict(plans)
    for n, plan in changes.items():
        old = merged.pop(n, None)
        if old is not None and old.granularity == "structured" and (plan is None or plan.granularity != "structured"):
            for m in groups()[n].layers:  # coupled layers lose the shared unit mask too
                merged.pop(m, None)
        if plan is not None:
            merged[n] = plan
    return merged


def unit_sparsity(pruner) -> float:
    """Fraction of the removable units (filters, output units) removed now, counted once per group
    of coupled layers, as ``pruner.prune(amount, granularity="structured")`` counts them.

    Layers in ``pruner.structured_blocked`` are left out; layers pruned another way (unstructured,
    2:4) keep their units. The explorer's structured slider and ``iterate``'s schedule both read this.

    Args:
        pruner: a Pruner.

    Returns:
        A fraction in [0, 1] (0 when no layer can lose units).

    Example:
        >>> unit_sparsity(pruner.prune(0.5, granularity="structured"))
        0.5
    """
    groups, plans = pruner.unit_groups(), pruner.plans
    removed = total = 0
    for root in dict.fromkeys(g.layers[0] for g in groups.values()):
        total += groups[root].units
        plan = plans.get(root)
        if plan is not None and plan.granularity == "structured":
            removed += int((~plan.keep).sum())
    return removed / total if total else 0.0
