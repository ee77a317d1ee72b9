"""Targets for allocation: the walk along sensitivity curves, and FLOPs or parameter targets met
by measuring.

:func:`advance` moves layers along their curves, cheapest drop per unit of cost first (weights,
units, FLOPs or parameters). :func:`meet` turns a fraction of FLOPs or parameters to keep into
per-layer sparsities: it asks the curves for the amount, measures what pruning that removes on a
private copy, and corrects the amount until the measured fraction is within ``TOLERANCE``.
"""

from __future__ import annotations

from math import floor
from typing import Mapping

from ..core.base import BasePruner
from ..core.checks import check_count, check_fraction
from ..core.masks import rounded_kept
from ..export import latency as export_latency
from .curves import SensitivityTable


def hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of (sparsity, drop) points sorted by sparsity."""
    out: list[tuple[float, float]] = []
    for p in points:
        while len(out) >= 2:
            (x1, y1), (x2, y2) = out[-2], out[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # out[-1] lies on or above the chord
                out.pop()
            else:
                break
        out.append(p)
    return out

TARGETS = ("target_sparsity", "max_drop", "target_flops", "target_params", "target_latency")
MEANINGS = {"target_sparsity": "a fraction of weights to prune", "max_drop": "the accuracy you accept to lose, "
            "e.g. 0.01 for one point", "target_flops": "a fraction of the dense FLOPs to keep, e.g. 0.5",
            "target_params": "a fraction of the parameters to keep, e.g. 0.3",
            "target_latency": "seconds per forward pass of the cut network, measured, e.g. 2e-4"}
TOLERANCE = 0.02  # a FLOPs or parameter target is met when the measured fraction kept is this close
# a latency target is met when the measured latency is within TOLERANCE of it (a fraction of the target)


def check_targets(*values) -> None:
    """A ValueError unless exactly one of ``TARGETS`` is given (in that order), as a fraction.

    Example:
        >>> check_targets(None, None, 0.5, 0.5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: give either target_sparsity (...) or target_params (...), not both: ...
    """
    given = [n for n, v in zip(TARGETS, values) if v is not None]
    if len(given) != 1:
        options = ", ".join(f"{n} ({MEANINGS[n]})" for n in TARGETS[:-1])
        amount = "neither" if not given else "both" if len(given) == 2 else f"{len(given)} of them"
        raise ValueError(f"give either {options} or {TARGETS[-1]} ({MEANINGS[TARGETS[-1]]}), not {amount}"
                         + (f": got {', '.join(given)}." if given else "."))
    name, value = given[0], values[TARGETS.index(given[0])]
    if name == "target_latency":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"target_latency must be a positive number of seconds (the measured time of one "
                             f"forward pass of the cut network, e.g. 2e-4), got {value!r}.")
    elif name == "max_drop":
        check_fraction(value, name, "0.01 accepts losing one point of accuracy")
    elif name != "target_sparsity":
        check_fraction(value, name, f"0.5 keeps half of the {'FLOPs' if name == 'target_flops' else 'parameters'}")
    else:
        check_fraction(value, name)


def check_latency_table(granularity: str | None) -> None:
    """A ValueError unless a latency target comes with a structured table (None: the default,
    which is then structured): only units removed run faster."""
    if granularity not in (None, "structured"):
        raise ValueError(f"target_latency needs a structured table: {granularity} sparsity keeps dense shapes and "
                         "does not run faster. Pass table=pruner.sensitivity(granularity=\"structured\"), or "
                         "leave table out (a structured analysis is made).")


def latency_meter(twin: BasePruner, dense, inputs, repeats: int = 30):
    """``f(twin) -> latency`` in seconds of the twin's state cut physically, at the batch of
    ``inputs``: measured interleaved with ``dense`` and scaled by the dense latency measured
    once here (so drift of a busy machine between measurements cancels); and that reference."""
    reference = export_latency.measure_latency({"dense": dense}, inputs, repeats=3 * repeats)["dense"].median

    def latency(pruner) -> float:
        _, times = export_latency.cut_latency(pruner, {"x": inputs}, dense, repeats=repeats)
        cut, now = times["x"]
        return reference * cut / now

    return latency, reference


def check_round_to(round_to, granularity: str | None) -> None:
    """A ValueError unless ``round_to`` is None or a positive whole number for a structured table."""
    if round_to is None:
        return
    check_count(round_to, "round_to")
    if granularity != "structured":
        raise ValueError(f"round_to rounds channel counts, so it needs a structured table; this one is "
                         f"{granularity or 'the default (unstructured) analysis'}. Pass "
                         "table=pruner.sensitivity(granularity=\"structured\"), or leave round_to out.")

def curve_points(table: SensitivityTable, layer: str) -> list[tuple[float, float]]:
    """(sparsity, drop) points of a layer's curve from (0, 0): drops made non-decreasing (the worst
    so far), then the lower convex hull, so equal steps along it never get cheaper."""
    s, d = table.curve(layer)
    pts, worst = [(0.0, 0.0)], 0.0
    for si, di in zip(s, d):
        worst = max(worst, di, 0.0)
        if si > 0:
            pts.append((si, worst))
    return hull(pts)


def advance(table: SensitivityTable, costs: Mapping[str, float], *, need: float | None = None,
            max_drop: float | None = None) -> tuple[dict[str, float], dict[str, float], float]:
    """Advance layers along their curves, cheapest drop per unit of ``costs`` first, until
    ``need`` units are removed (``costs[layer] * sparsity`` per layer: weights, units, FLOPs or
    parameters) or the summed drop reaches ``max_drop``.

    Returns:
        ``(sparsities, drops, removed)``; ``removed`` falls short of ``need`` when the curves end.
    """
    segments = []
    for order, layer in enumerate(table.layers):
        w = costs[layer]
        if w <= 0:
            continue  # pruning this layer removes nothing that counts: leave it dense
        pts = curve_points(table, layer)
        for (s0, d0), (s1, d1) in zip(pts, pts[1:]):
            segments.append(((d1 - d0) / (w * (s1 - s0)), order, layer, s0, s1, d0, d1, w))
    segments.sort(key=lambda seg: (seg[0], seg[1], seg[3]))
    chosen = {l: 0.0 for l in table.layers}
    drops = {l: 0.0 for l in table.layers}
    pruned, spent = 0.0, 0.0
    for _, _, layer, s0, s1, d0, d1, w in segments:
        gain, cost = w * (s1 - s0), d1 - d0
        if need is not None:
            if pruned + gain >= need - 1e-12:
                f = max(need - pruned, 0.0) / gain
                chosen[layer], drops[layer] = s0 + f * (s1 - s0), d0 + f * cost
                pruned = max(need, pruned)
                break
        elif spent + cost > max_drop + 1e-12:
            f = (max_drop - spent) / cost
            chosen[layer], drops[layer] = s0 + f * (s1 - s0), d0 + f * cost
            break
        chosen[layer], drops[layer] = s1, d1
        pruned, spent = pruned + gain, spent + cost
    return chosen, drops, pruned

def drop_at(table: SensitivityTable, layer: str, sparsity: float) -> float:
    """The single-layer drop of ``layer`` at ``sparsity``, read from its curve as :func:`advance`
    reads it (worst drop so far, lower convex hull, interpolated; flat past the last point)."""
    pts = curve_points(table, layer)
    for (s0, d0), (s1, d1) in zip(pts, pts[1:]):
        if sparsity <= s1:
            return d0 + (d1 - d0) * (sparsity - s0) / (s1 - s0)
    return pts[-1][1]


def rounded(chosen: dict[str, float], table: SensitivityTable, round_to: int | None) -> dict[str, float]:
    """``chosen`` with each layer keeping a multiple of ``round_to`` units (the nearest, at least
    ``round_to``); a layer left dense keeps all its units, whatever their count."""
    if not round_to:
        return chosen
    out = {}
    for layer, s in chosen.items():
        n = table.weights[layer]  # units, for a structured table
        keep = n - floor(s * n + 0.5)
        keep = rounded_kept(keep, n, round_to)
        out[layer] = (n - keep) / n
    return out


def measured(twin: BasePruner, table: SensitivityTable, chosen: Mapping[str, float]):
    """Prune the private ``twin`` to ``chosen`` with the table's criterion and granularity; its Metrics."""
    twin.prune(dict(chosen), criterion=table.criterion, granularity=table.granularity)
    return twin.evaluate()


def kept(m, kind: str) -> float:
    """The fraction of FLOPs or parameters that Metrics ``m`` keeps."""
    return m.nonzero_flops / max(m.flops, 1) if kind == "flops" else m.nonzero_params / max(m.params, 1)


def meet(twin: BasePruner, table: SensitivityTable, kind: str, target: float, round_to: int | None,
         latency=None):
    """Per-layer sparsities that keep ``target`` of the FLOPs or parameters (``kind``), measured.

    Two allocations are searched, each corrected by measuring until it meets the target:
    the curves' (layers advance by drop per FLOP or parameter removed) and the uniform one (one
    sparsity for every analysed layer, up to the highest sparsity all curves measured). The more
    accurate of those within ``TOLERANCE`` is kept, the curves' on a tie, so the result is not
    less accurate on this data than the uniform allocation measured beside it; ``source`` says
    which it was.

    For ``kind="latency"``, ``target`` is the latency in seconds and ``latency`` is
    ``(f(twin) -> seconds, dense seconds)`` (:func:`latency_meter`); layers advance by drop per
    FLOP and the measured latency must come within ``TOLERANCE`` of the target (a fraction of it).

    Returns:
        ``(sparsities, drops, metrics, source, measured)`` with ``twin`` pruned to those sparsities;
        ``measured``: the fraction kept, or the latency in seconds.

    Raises:
        ValueError: when neither comes within ``TOLERANCE``.
    """
    total, per_layer = twin.flops()
    by_name = {l.name: l for l in twin.layers}
    flops = kind in ("flops", "latency")
    costs = {l: float(per_layer[l] if flops else by_name[l].params) for l in table.layers}
    whole = float(total if flops else twin.evaluate().params)
    tolerance = TOLERANCE
    if kind == "latency":  # in fractions of the dense latency, as the other kinds are in fractions kept
        timer, dense_seconds = latency
        target_seconds, target = target, target / dense_seconds
        tolerance = TOLERANCE * target

        def miss_of(chosen):
            measured(twin, table, chosen)
            return timer(twin) / dense_seconds - target
    else:
        def miss_of(chosen):
            return kept(measured(twin, table, chosen), kind) - target
    spread = sum(costs.values())
    highest = min(max(table.curve(l)[0]) for l in table.layers)  # uniform stays where every curve was measured
    reach = advance(table, costs, need=float("inf"))[2]
    proposals = {"curves": (lambda need: advance(table, costs, need=need)[0], reach),
                 "uniform": (lambda need: {l: min(need / spread, highest) if spread else 0.0 for l in table.layers},
                             spread * highest)}
    found = {}
    for source, (propose, reach) in proposals.items():
        found[source] = search(lambda need: rounded(propose(need), table, round_to), miss_of, whole, reach, target,
                               tolerance)
    close = {s: f for s, f in found.items() if abs(f[1]) <= tolerance}
    what = "FLOPs" if kind == "flops" else "parameters"
    if not close and kind == "latency":
        best = min(found.values(), key=lambda f: abs(f[1]))[1]
        raise ValueError(f"the closest measured latency was {(target + best) * dense_seconds * 1e3:.3f} ms, not within "
                         f"{TOLERANCE:.0%} of the target {target_seconds * 1e3:.3f} ms (dense: {dense_seconds * 1e3:.3f} "
                         "ms). Small batches are bound by per-layer overhead, not FLOPs: see "
                         "prunelab.export.latency_curve(pruner) for what this model reaches here, and aim within it. "
                         "The Pruner is unchanged.")
    if not close:
        miss = found["curves"][1]
        hint = (" (every analysed layer at its highest measured sparsity: measure higher sparsities, e.g. "
                "sensitivity(sparsities=[..., 0.95, 0.98]), or analyse more layers; what no layer prunes, "
                "biases and other operations, is kept)") if miss > 0 else ""
        hint += f"; round_to={round_to} may be too coarse for these layers: try a smaller multiple" if round_to else ""
        raise ValueError(f"the curves keep {target + miss:.1%} of the {what} at best, not within {TOLERANCE:.0%} of "
                         f"the target {target:.1%}{hint}. The Pruner is unchanged.")
    metrics = {s: measured(twin, table, f[0]) for s, f in close.items()}
    source = max(metrics, key=lambda s: (metrics[s].accuracy, s == "curves"))
    chosen = close[source][0]
    m = metrics[source] if source == list(metrics)[-1] else measured(twin, table, chosen)  # the twin holds it
    reached = close[source][1] + target
    return (chosen, {l: drop_at(table, l, s) for l, s in chosen.items()}, m, source,
            reached * dense_seconds if kind == "latency" else reached)


def search(propose, miss_of, whole: float, reach: float, target: float, tolerance: float = TOLERANCE):
    """The proposal, over the amount asked ``need`` in [0, ``reach``], whose measured miss
    (fraction kept minus the target) is smallest: secant steps until the target is bracketed,
    then regula falsi inside the bracket (bisection when a step repeats). At most 12 measurements.

    Returns:
        ``(chosen, miss)``.
    """
    need, points, seen, best = (1 - target) * whole, [], {}, None
    for _ in range(12):
        need = min(max(need, 0.0), reach)
        chosen = propose(need)
        key = tuple(sorted(chosen.items()))
        repeated = key in seen
        if not repeated:
            seen[key] = miss_of(chosen)
        miss = seen[key]
        if best is None or abs(miss) < abs(best[1]):
            best = (chosen, miss)
        if abs(miss) <= tolerance / 10:
            break
        points.append((need, miss))
        above = [p for p in points if p[1] > 0]  # too much kept: ask more
        below = [p for p in points if p[1] < 0]
        if above and below:
            (n0, m0), (n1, m1) = max(above), min(below)
            if n1 - n0 <= 1e-9 * max(whole, 1.0):
                break  # a jump between two states: nothing in between to measure
            step = n0 + m0 * (n1 - n0) / (m0 - m1)
            need = step if n0 < step < n1 and not repeated else (n0 + n1) / 2
        elif (miss > 0 and need >= reach) or (miss < 0 and need <= 0):
            break  # the target lies beyond what can be asked
        elif len(points) >= 2 and points[-1][1] != points[-2][1] and points[-1][0] != points[-2][0]:
            (na, ma), (nb, mb) = points[-2], points[-1]
            need = nb - mb * (nb - na) / (mb - ma)
        else:
            need += miss * whole
    return best
