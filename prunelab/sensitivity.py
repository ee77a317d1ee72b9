"""Sensitivity analysis: how much accuracy each layer loses when pruned alone, and choosing
per-layer sparsities from those curves.

The reference is the Pruner's current unmasked weights with no layer pruned (after fine-tuning,
that is the fine-tuned model). Each (layer, sparsity) is measured with only that layer pruned.

Measurements run as picklable tasks (a top-level function, a copy of the model, the evaluation
tensors and the masks), one task per layer, on any ``concurrent.futures.Executor``: the default
runs them here, one after the other; ``client.get_executor()`` of a Dask cluster spreads them
over its workers. Evaluation is deterministic (eval mode, fixed data and batches), so every
executor gives the same table.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .core.checks import check_fraction
from .core.criteria import get_criterion
from .core.tables import Table, percent, signed_points
from .retrain.training import Hooks, Snapshot

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


# ---------------------------------------------------------------------- the measuring task

def evaluate_masked(model: nn.Module, masks_list: Sequence[Mapping[str, torch.Tensor]], inputs: torch.Tensor,
                    targets: torch.Tensor, metric: Callable | None, batch_size: int) -> list[float]:
    """Accuracy (or ``metric``) of ``model`` with each set of masks (param name -> keep-mask)
    applied in turn. Works on its own copy of the model, so tasks sharing one model object (a
    thread pool) cannot disturb each other or the caller. This is the task sent to executors."""
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    base = {n: p.detach().clone() for n, p in params.items()}
    results = []
    with torch.no_grad():
        for masks in masks_list:
            for n, p in params.items():
                p.copy_(base[n] if n not in masks else base[n] * masks[n].to(p.device))
            out = torch.cat([model(x) for x in inputs.split(batch_size)])
            if metric is None:
                results.append(int((out.argmax(1) == targets).sum()) / len(targets))
            else:
                results.append(float(metric(out, targets)))
    return results


class _InProcess:
    """The default executor: runs each task at once, in this process."""

    def submit(self, fn, *args, **kwargs):
        from concurrent.futures import Future

        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # delivered by .result(), as a real executor would
            future.set_exception(e)
        return future


# ---------------------------------------------------------------------- the table

class SensitivityTable(Table):
    """Rows: layer, sparsity, accuracy, drop (baseline accuracy minus accuracy; positive is worse).
    ``baseline`` is the accuracy with no layer pruned; ``criterion`` and ``granularity`` say how
    the layers were pruned (for structured, sparsity is the fraction of units removed)."""

    def __init__(self, rows, *, baseline: float, criterion, granularity: str, weights: dict[str, int]):
        super().__init__(("layer", "sparsity", "accuracy", "drop"), rows, title="sensitivity per layer",
                         formats={"sparsity": percent(0), "accuracy": percent(2), "drop": signed_points})
        self.baseline = baseline
        self.criterion = criterion  # as given: a name or a Criterion instance (allocate prunes with it)
        self.criterion_name = criterion if isinstance(criterion, str) else getattr(criterion, "name", "criterion")
        self.granularity = granularity
        self.weights = dict(weights)  # what a sparsity counts per layer: weights, or units (structured)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(self.column("layer")))

    def curve(self, layer: str) -> tuple[list[float], list[float]]:
        """(sparsities, drops) of one layer, by increasing sparsity."""
        pts = sorted((r["sparsity"], r["drop"]) for r in self._rows if r["layer"] == layer)
        if not pts:
            raise KeyError(f"no layer {layer!r} in this table; layers: {self.layers}")
        return [p[0] for p in pts], [p[1] for p in pts]

    def tolerable(self, max_drop: float = 0.01) -> dict[str, float]:
        """Per layer, the highest measured sparsity whose drop stays within ``max_drop`` (0 if none)."""
        out = {}
        for layer in self.layers:
            ok = [s for s, d in zip(*self.curve(layer)) if d <= max_drop]
            out[layer] = max(ok, default=0.0)
        return out


def _check_sparsities(sparsities) -> tuple[float, ...]:
    if isinstance(sparsities, (int, float)):
        sparsities = [sparsities]
    values = list(sparsities)
    if not values:
        raise ValueError("sparsities is empty: give the fractions to measure, e.g. [0.5, 0.8, 0.9, 0.95].")
    for v in values:
        check_fraction(v)
    return tuple(sorted(set(float(v) for v in values)))


def analysed_layers(pruner, layers, granularity: str) -> list[str]:
    if layers is None:
        names = pruner.layer_names
        if granularity == "structured":
            blocked = pruner.structured_blocked
            names = [n for n in names if n not in blocked]
            if not names:
                raise ValueError("no layer of this model can be pruned structurally; use granularity='unstructured'.")
        return names
    if isinstance(layers, str):
        layers = [layers]
    names = [pruner.layer(n).name for n in layers]  # raises with suggestions for unknown names
    if not names:
        raise ValueError("layers is empty: name the layers to analyse, or pass None for all.")
    if granularity == "structured":
        blocked = pruner.structured_blocked
        bad = [n for n in names if n in blocked]
        if bad:
            raise ValueError(f"layer {bad[0]!r} cannot be pruned structurally: {blocked[bad[0]]}.")
    return names


# ---------------------------------------------------------------------- analysis

def measure(snap, sparsities: Sequence[float], layers: Sequence[str], criterion, granularity: str,
            executor=None, hooks=None) -> SensitivityTable:
    """Sensitivity of each layer on a :class:`~prunelab.training.Snapshot` (safe to run on any
    thread: it works on the snapshot's private copy of the model). ``hooks`` (a
    :class:`~prunelab.training.Hooks`) reports each finished layer and can cancel."""
    hooks = hooks or Hooks()
    if granularity not in ("unstructured", "structured"):
        raise ValueError(f"sensitivity prunes 'unstructured' or 'structured'; got {granularity!r} (2:4 has only one "
                         "sparsity, so it has no curve).")
    twin = snap.pruner()
    twin.reset()  # the reference: unmasked weights, no layer pruned
    tasks = []
    for layer in layers:
        masks_list = []
        for s in sparsities:
            hooks.check()
            twin.prune({layer: s}, criterion=criterion, granularity=granularity)
            masks_list.append(twin.masks())
            twin.reset()
        tasks.append(masks_list)
    x, y = twin.val_inputs, twin.val_targets
    metric, batch_size = twin.metric, twin.batch_size
    executor = executor if executor is not None else _InProcess()
    if not hasattr(executor, "submit"):
        raise TypeError(f"executor must be a concurrent.futures.Executor (or Dask's client.get_executor()), "
                        f"got {type(executor).__name__}.")
    model = twin.model  # holds the reference weights after reset()
    baseline_future = executor.submit(evaluate_masked, model, [{}], x, y, metric, batch_size)
    futures = [executor.submit(evaluate_masked, model, masks_list, x, y, metric, batch_size) for masks_list in tasks]
    baseline = baseline_future.result()[0]
    rows = []
    for done, (layer, future) in enumerate(zip(layers, futures), start=1):
        hooks.check()
        for s, acc in zip(sparsities, future.result()):
            rows.append(dict(layer=layer, sparsity=s, accuracy=acc, drop=baseline - acc))
        if hooks.progress is not None:
            hooks.progress(done, len(layers), f"sensitivity: layer {layer}")
    by_name = {l.name: l for l in twin.layers}
    weights = {n: (by_name[n].units if granularity == "structured" else by_name[n].params) for n in layers}
    return SensitivityTable(rows, baseline=baseline, criterion=criterion, granularity=granularity, weights=weights)


# One cache per Pruner, living as long as it does; keyed by the weights' version, so fine-tuning
# (which sets new weights) invalidates it and undo finds the old entry again.
_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cache(pruner) -> dict:
    return _CACHES.setdefault(pruner, {})


def cache_key(pruner, sparsities, layers, criterion, granularity):
    crit = criterion if isinstance(criterion, str) else id(criterion)
    return (pruner.weights_version, crit, granularity, tuple(sparsities), tuple(layers))


def sensitivity(pruner, sparsities=DEFAULT_SPARSITIES, layers=None, criterion="magnitude",
                granularity: str = "unstructured", executor=None) -> SensitivityTable:
    """Prune one layer at a time to each sparsity and measure; cached per weights and arguments."""
    get_criterion(criterion)  # a clear error for unknown names, before any work
    sparsities = _check_sparsities(sparsities)
    names = analysed_layers(pruner, layers, granularity)
    key = cache_key(pruner, sparsities, names, criterion, granularity)
    cache = _cache(pruner)
    if key not in cache:
        cache[key] = measure(Snapshot.of(pruner), sparsities, names, criterion, granularity, executor)
    return cache[key]


# ---------------------------------------------------------------------- allocation

@dataclass(frozen=True)
class Allocation:
    """Per-layer sparsities chosen from sensitivity curves, and what they gave when applied.

    ``predicted_drop`` is the sum of the single-layer drops at the chosen sparsities (read from
    the curves, interpolated between measured points); ``drop`` is measured with all layers
    pruned together. Their difference shows how far the layers' losses add up. ``sparsity`` is
    the fraction reached over the analysed layers (of weights, or of units for structured);
    ``overall_sparsity`` the fraction of all prunable weights now masked.
    """

    sparsities: dict[str, float]
    single_drops: dict[str, float]
    predicted_drop: float
    baseline: float
    accuracy: float
    sparsity: float
    overall_sparsity: float
    granularity: str

    @property
    def drop(self) -> float:
        return self.baseline - self.accuracy

    def table(self) -> Table:
        rows = [dict(layer=n, sparsity=s, single_layer_drop=self.single_drops[n]) for n, s in self.sparsities.items()]
        return Table(("layer", "sparsity", "single_layer_drop"), rows, title="allocation",
                     formats={"sparsity": percent(1), "single_layer_drop": signed_points})

    def __str__(self) -> str:
        return (f"{self.table()}\n\nsum of single-layer drops {signed_points(self.predicted_drop)}; measured jointly: "
                f"accuracy {self.accuracy:.2%} (baseline {self.baseline:.2%}, drop {signed_points(self.drop)}) at "
                f"{self.overall_sparsity:.1%} overall sparsity")

    def _repr_html_(self) -> str:
        return self.table()._repr_html_() + (
            f"<p>sum of single-layer drops {signed_points(self.predicted_drop)}; measured jointly: accuracy "
            f"{self.accuracy:.2%} (baseline {self.baseline:.2%}, drop {signed_points(self.drop)}) at "
            f"{self.overall_sparsity:.1%} overall sparsity</p>")


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of (sparsity, drop) points sorted by sparsity."""
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def choose_sparsities(table: SensitivityTable, *, target_sparsity: float | None = None,
                      max_drop: float | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Per-layer sparsities that reach ``target_sparsity`` (a fraction of the analysed layers'
    weights, or units for structured) with the smallest sum of single-layer drops, or that prune
    the most with that sum within ``max_drop`` (a fraction: 0.01 is one point). Least sensitive
    layers are pruned most: layers advance along their curves in order of drop per weight
    pruned (on each curve's lower convex hull, drops made non-decreasing). Returns the
    sparsities and the single-layer drop read at each."""
    if (target_sparsity is None) == (max_drop is None):
        raise ValueError("give either target_sparsity (a fraction of weights to prune) or max_drop (the accuracy "
                         "you accept to lose, e.g. 0.01 for one point), not "
                         f"{'both' if target_sparsity is not None else 'neither'}.")
    for name, v in (("target_sparsity", target_sparsity), ("max_drop", max_drop)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
            raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}.")
    segments = []
    for order, layer in enumerate(table.layers):
        s, d = table.curve(layer)
        pts, worst = [(0.0, 0.0)], 0.0
        for si, di in zip(s, d):
            worst = max(worst, di, 0.0)
            if si > 0:
                pts.append((si, worst))
        w = table.weights[layer]
        hull = _hull(pts)
        for (s0, d0), (s1, d1) in zip(hull, hull[1:]):
            segments.append(((d1 - d0) / (w * (s1 - s0)), order, layer, s0, s1, d0, d1, w))
    segments.sort(key=lambda seg: (seg[0], seg[1], seg[3]))
    total = sum(table.weights[l] for l in table.layers)
    chosen = {l: 0.0 for l in table.layers}
    drops = {l: 0.0 for l in table.layers}
    need = None if target_sparsity is None else target_sparsity * total
    pruned, spent = 0.0, 0.0
    for _, _, layer, s0, s1, d0, d1, w in segments:
        gain, cost = w * (s1 - s0), d1 - d0
        if need is not None:
            if pruned + gain >= need - 1e-12:
                f = (need - pruned) / gain
                chosen[layer], drops[layer] = s0 + f * (s1 - s0), d0 + f * cost
                pruned = need
                break
        elif spent + cost > max_drop + 1e-12:
            f = (max_drop - spent) / cost
            chosen[layer], drops[layer] = s0 + f * (s1 - s0), d0 + f * cost
            break
        chosen[layer], drops[layer] = s1, d1
        pruned, spent = pruned + gain, spent + cost
    if need is not None and pruned < need - 1e-9:
        reach = pruned / total
        raise ValueError(f"the curves reach at most {reach:.1%} sparsity (every layer at its highest measured "
                         f"sparsity), short of the target {target_sparsity:.1%}: measure higher sparsities, e.g. "
                         "sensitivity(sparsities=[..., 0.95, 0.98, 0.99]).")
    return chosen, drops


def allocate(pruner, target_sparsity: float | None = None, max_drop: float | None = None, *,
             table: SensitivityTable | None = None, executor=None) -> Allocation:
    """Choose per-layer sparsities from sensitivity curves (``table``, or the default analysis
    of all layers) and apply them with the table's criterion and granularity; then measure."""
    if table is None:
        table = sensitivity(pruner, executor=executor)
    elif not isinstance(table, SensitivityTable):
        raise TypeError(f"table must be the result of pruner.sensitivity(...), got {type(table).__name__}.")
    chosen, drops = choose_sparsities(table, target_sparsity=target_sparsity, max_drop=max_drop)
    criterion = table.criterion
    pruner.prune(chosen, criterion=criterion, granularity=table.granularity)
    m = pruner.evaluate()
    total = sum(table.weights.values())
    reached = sum(chosen[l] * table.weights[l] for l in chosen) / total if total else 0.0
    return Allocation(chosen, drops, sum(drops.values()), table.baseline, m.accuracy, reached,
                      pruner.overall_sparsity(), table.granularity)
