"""Allocation: per-layer sparsities chosen from sensitivity curves, applied, and measured jointly.

The least sensitive layers are pruned most (see :func:`choose_sparsities`). What the curves
predict (the sum of single-layer drops) is reported beside what is measured with all layers
pruned together, because the layers' losses need not add up.

A transaction: :func:`allocate` checks its arguments before any analysis, prunes and measures
on a private copy, and only then sets the measured plans on the Pruner, as one atomic step of
history; an error or a KeyboardInterrupt before that leaves the Pruner exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.base import BasePruner
from ..core.checks import check_fraction
from ..core.copies import PrunerCopy
from ..core.tables import Table, percent, signed_points
from .curves import SensitivityTable, check_executor, sensitivity
from .targets import (advance, check_latency_table, check_round_to, check_targets, drop_at, kept, latency_meter,
                      measured, meet, rounded)


@dataclass(frozen=True)
class Allocation:
    """Per-layer sparsities chosen from sensitivity curves, and what they gave when applied.

    ``predicted_drop`` is the sum of the single-layer drops at the chosen sparsities (read from
    the curves, interpolated between measured points); ``drop`` is measured with all layers
    pruned together. Their difference shows how far the layers' losses add up. ``sparsity`` is
    the fraction reached over the analysed layers (of weights, or of units for structured);
    ``overall_sparsity`` the fraction of all prunable weights now masked. ``flops_kept`` and
    ``params_kept`` are measured the same way: ``nonzero_flops / flops`` and ``nonzero_params /
    params`` of the Metrics with the allocation applied. ``source`` is ``"curves"``, or
    ``"uniform"`` when, for a FLOPs or parameter target, one sparsity for every analysed layer
    measured more accurate at the same target than the curves' choice (it is then kept).
    """

    sparsities: dict[str, float]
    single_drops: dict[str, float]
    predicted_drop: float
    baseline: float
    accuracy: float
    sparsity: float
    overall_sparsity: float
    granularity: str
    flops_kept: float | None = None
    params_kept: float | None = None
    source: str = "curves"
    latency: float | None = None  # seconds, measured on the cut network (a latency target only)
    latency_batch: int | None = None

    @property
    def drop(self) -> float:
        return self.baseline - self.accuracy

    def table(self) -> Table:
        rows = [dict(layer=n, sparsity=s, single_layer_drop=self.single_drops[n]) for n, s in self.sparsities.items()]
        return Table(("layer", "sparsity", "single_layer_drop"), rows, title="allocation",
                     formats={"sparsity": percent(1), "single_layer_drop": signed_points})

    def summary(self) -> str:
        """The measured outcome in one sentence (what ``str`` prints under the table)."""
        kept = "" if self.flops_kept is None else (
            f", keeping {self.flops_kept:.1%} of the FLOPs and {self.params_kept:.1%} of the parameters")
        if self.latency is not None:
            kept += f", measured {self.latency * 1e3:.3f} ms per forward pass at batch {self.latency_batch} (cut)"
        return (f"sum of single-layer drops {signed_points(self.predicted_drop)}; measured jointly: accuracy "
                f"{self.accuracy:.2%} (baseline {self.baseline:.2%}, drop {signed_points(self.drop)}) at "
                f"{self.overall_sparsity:.1%} overall sparsity{kept}"
                + ("" if self.source == "curves" else
                   " (one uniform sparsity measured better than the curves' choice)"))

    def __str__(self) -> str:
        return f"{self.table()}\n\n{self.summary()}"

    def _repr_html_(self) -> str:
        return self.table()._repr_html_() + f"<p>{self.summary()}</p>"


def check_request(target_sparsity, max_drop) -> None:
    """A ValueError unless exactly one of ``target_sparsity`` and ``max_drop`` is given, as a fraction.

    Example:
        >>> check_request(None, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: give either target_sparsity (...) or max_drop (...), not neither.
    """
    if (target_sparsity is None) == (max_drop is None):
        raise ValueError("give either target_sparsity (a fraction of weights to prune) or max_drop (the accuracy "
                         "you accept to lose, e.g. 0.01 for one point), not "
                         f"{'both' if target_sparsity is not None else 'neither'}.")
    if target_sparsity is not None:
        check_fraction(target_sparsity, "target_sparsity")
    else:
        check_fraction(max_drop, "max_drop", "0.01 accepts losing one point of accuracy")


def check_table(pruner: BasePruner, table) -> None:
    """A clear error unless ``table`` is a :class:`SensitivityTable` of layers ``pruner`` has."""
    if not isinstance(table, SensitivityTable):
        raise TypeError(f"table must be the result of pruner.sensitivity(...), got {type(table).__name__}.")
    unknown = [n for n in table.layers if n not in pruner.layer_names]
    if unknown:
        raise ValueError(f"the table measures layers {unknown} that this Pruner does not have (a table of another "
                         f"model?); its prunable layers are {pruner.layer_names}. Measure this one: "
                         "pruner.sensitivity(...).")


def choose_sparsities(table: SensitivityTable, *, target_sparsity: float | None = None,
                      max_drop: float | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Per-layer sparsities that reach ``target_sparsity`` (a fraction of the analysed layers'
    weights, or units for structured) with the smallest sum of single-layer drops, or that prune
    the most with that sum within ``max_drop`` (a fraction: 0.01 is one point). Least sensitive
    layers are pruned most: layers advance along their curves in order of drop per weight
    pruned (on each curve's lower convex hull, drops made non-decreasing).

    Args:
        table: sensitivity curves (:func:`prunelab.sensitivity.sensitivity`).
        target_sparsity, max_drop: exactly one of them, each a fraction.

    Returns:
        ``(sparsities, drops)``: per analysed layer, the chosen sparsity and the single-layer
        drop read (interpolated) from its curve there.

    Raises:
        ValueError: for neither or both, a value outside [0, 1], or a target beyond the curves.

    Example:
        >>> chosen, drops = choose_sparsities(table, target_sparsity=0.8)   # doctest: +SKIP
        >>> chosen                                                          # doctest: +SKIP
        {'0': 0.86, '2': 0.79, '4': 0.3}
    """
    check_request(target_sparsity, max_drop)
    total = sum(table.weights[l] for l in table.layers)
    need = None if target_sparsity is None else target_sparsity * total
    chosen, drops, pruned = advance(table, table.weights, need=need, max_drop=max_drop)
    if need is not None and pruned < need - 1e-9:
        reach = pruned / total
        raise ValueError(f"the curves reach at most {reach:.1%} sparsity (every layer at its highest measured "
                         f"sparsity), short of the target {target_sparsity:.1%}: measure higher sparsities, e.g. "
                         "sensitivity(sparsities=[..., 0.95, 0.98, 0.99]).")
    return chosen, drops


def allocate(pruner: BasePruner, target_sparsity: float | None = None, max_drop: float | None = None, *,
             target_flops: float | None = None, target_params: float | None = None,
             target_latency: float | None = None, latency_batch: int = 1, round_to: int | None = None,
             table: SensitivityTable | None = None, executor=None) -> Allocation:
    """Choose per-layer sparsities from sensitivity curves and apply them with the table's
    criterion and granularity (one step of history); then measure with all of them applied.

    Args:
        pruner: a BasePruner (or Pruner).
        target_sparsity: reach this fraction of the analysed layers' weights (or units) ...
        max_drop: ... or prune the most with the sum of single-layer drops within this (0.01 is
            one point) ...
        target_flops: ... or keep this fraction of the dense model's FLOPs (``nonzero_flops /
            flops`` of the Metrics measured after applying, within 2%) ...
        target_params: ... or keep this fraction of the model's parameters (``nonzero_params /
            params``, within 2%) ...
        target_latency: ... or run in this many seconds per forward pass of ``latency_batch``
            validation samples, measured on the network cut physically (format "structured"),
            within 2% of it; structured tables only (default: a structured analysis). Exactly one.
        latency_batch: the batch a latency target is measured at (1: one sample at a time).
        round_to: structured tables only: keep a multiple of this many units in every analysed
            layer (e.g. 8, for hardware that runs channel counts in multiples of 8).
        table: a :class:`SensitivityTable`; default: the default analysis of all layers.
        executor: for that default analysis (see :func:`prunelab.sensitivity.sensitivity`).

    Returns:
        An :class:`Allocation`: the sparsities, the predicted drop (the sum of the single-layer
        drops) and the accuracy, FLOPs and parameters measured jointly (what ``pruner.evaluate()``
        gives after).

    Raises:
        ValueError, TypeError: for bad arguments or a table of other layers, before any analysis;
            a FLOPs or parameter target the curves cannot meet within 2%, after it. The Pruner is
            then unchanged, as after any exception (KeyboardInterrupt included).

    Example:
        >>> result = allocate(pruner, target_flops=0.5)   # doctest: +SKIP
        >>> result.flops_kept                             # doctest: +SKIP   (measured, all layers pruned)
        0.497
    """
    check_targets(target_sparsity, max_drop, target_flops, target_params, target_latency)
    check_executor(executor)
    if table is not None:
        check_table(pruner, table)
    default = "structured" if target_latency is not None else None  # None: the default, unstructured
    if target_latency is not None:
        check_latency_table(None if table is None else table.granularity)
        if isinstance(latency_batch, bool) or not isinstance(latency_batch, int) or latency_batch < 1:
            raise ValueError(f"latency_batch must be a whole number >= 1, got {latency_batch!r}.")
    check_round_to(round_to, default if table is None else table.granularity)
    if table is None:
        table = sensitivity(pruner, executor=executor, **({"granularity": default} if default else {}))
    copy = PrunerCopy.of(pruner)
    twin = copy.pruner()  # prune and measure there: the Pruner changes only once it is all done
    source, latency = "curves", None
    if target_latency is not None:
        dense = PrunerCopy.of(pruner).model.eval()  # the unmasked weights: timed beside every candidate
        meter = latency_meter(twin, dense, pruner.val_inputs[:latency_batch])
        chosen, drops, m, source, latency = meet(twin, table, "latency", target_latency, round_to, latency=meter)
    elif target_flops is None and target_params is None:
        chosen, drops = choose_sparsities(table, target_sparsity=target_sparsity, max_drop=max_drop)
        if round_to:
            chosen = rounded(chosen, table, round_to)
            drops = {l: drop_at(table, l, s) for l, s in chosen.items()}
        m = measured(twin, table, chosen)
    else:
        chosen, drops, m, source, _ = meet(twin, table, "flops" if target_params is None else "params",
                                           target_params if target_flops is None else target_flops, round_to)
    overall = twin.overall_sparsity()
    plans = copy.all_plans(twin.plans)
    total = sum(table.weights.values())
    reached = sum(chosen[l] * table.weights[l] for l in chosen) / total if total else 0.0
    result = Allocation(chosen, drops, sum(drops.values()), table.baseline, m.accuracy, reached, overall,
                        table.granularity, flops_kept=kept(m, "flops"), params_kept=kept(m, "params"),
                        source=source, latency=latency, latency_batch=latency_batch if latency is not None else None)
    pruner.set_plans(plans)
    return result
