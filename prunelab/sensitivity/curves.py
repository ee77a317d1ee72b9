"""Sensitivity curves: how much accuracy each layer loses when pruned alone.

The reference is the Pruner's current unmasked weights with no layer pruned (after fine-tuning,
that is the fine-tuned model). Each (layer, sparsity) is measured with only that layer pruned.

Measurements run as picklable tasks (:func:`evaluate_masked`: a top-level function, the model,
the evaluation tensors and the masks), one task per layer, on any ``concurrent.futures.Executor``:
the default runs them here, one after the other; ``client.get_executor()`` of a Dask cluster
spreads them over its workers. Evaluation is deterministic (eval mode, fixed data and batches),
so every executor gives the same table.

Like the retraining jobs, an analysis is a :class:`SensitivityJob` in three parts: ``prepare`` on
the Pruner's thread (checks, a private copy), ``run`` on any thread (the measuring), ``apply`` on
the Pruner's thread (the table goes into the Pruner's cache). :func:`sensitivity` runs them in a row.
"""

from __future__ import annotations

import weakref
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ..core.base import BasePruner
from ..core.checks import check_fraction
from ..core.copies import ModelCopy, PrunerCopy, model_state
from ..core.criteria import get_criterion
from ..core.metrics import score_outputs
from ..core.inputs import forward
from ..core.tables import Table, percent, signed_points
from ..retrain import VARIABLE_GRANULARITIES, Hooks

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


# ---------------------------------------------------------------------- the measuring task

def evaluate_masked(model: nn.Module, masks_list: Sequence[Mapping[str, torch.Tensor]], inputs: torch.Tensor,
                    targets: torch.Tensor, metric: Callable | None, batch_size: int, classes: int = 0,
                    output=None) -> list[float]:
    """Accuracy (or ``metric``) of ``model`` with each set of masks applied in turn.

    Works on its own :class:`~prunelab.core.copies.ModelCopy`, so tasks sharing one model object
    (a thread pool) cannot disturb each other or the caller. This is the task sent to executors.

    Args:
        model: the model holding the reference (unmasked) weights.
        masks_list: sets of masks (parameter name -> keep-mask); ``{}`` measures the reference.
        inputs, targets: the evaluation data.
        metric: ``f(outputs, targets) -> float``, or None for top-1 accuracy.
        batch_size: evaluation batch size.
        classes: the number of classes (for top-1 accuracy).
        output: the Pruner's output selector (:func:`prunelab.core.inputs.forward`).

    Returns:
        One number per set of masks.

    Example:
        >>> x, y = torch.eye(2), torch.tensor([0, 1])
        >>> evaluate_masked(nn.Linear(2, 2), [{"weight": torch.zeros(2, 2, dtype=torch.bool)}], x, y,
        ...                 lambda out, t: float(out.abs().sum()), 2)   # doctest: +SKIP  (the bias only)
    """
    weights = model_state(model)
    copy = ModelCopy(model)
    results = []
    with torch.no_grad():
        for masks in masks_list:
            masked = copy.load_masked(weights, masks)
            out = torch.cat([forward(masked, x, output) for x in inputs.split(batch_size)])
            results.append(score_outputs(out, targets, classes=classes, metric=metric)[0])
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
        pts = sorted((r["sparsity"], r["drop"]) for r in self if r["layer"] == layer)
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


# ---------------------------------------------------------------------- checks

def check_sparsities(sparsities) -> tuple[float, ...]:
    """The sparsities to measure, sorted and without repeats.

    Args:
        sparsities: a fraction or a sequence of fractions.

    Returns:
        A sorted tuple of floats.

    Raises:
        ValueError: when empty or when a value is not a fraction in [0, 1].

    Example:
        >>> check_sparsities([0.9, 0.5, 0.9])
        (0.5, 0.9)
    """
    if isinstance(sparsities, (int, float)):
        sparsities = [sparsities]
    values = list(sparsities)
    if not values:
        raise ValueError("sparsities is empty: give the fractions to measure, e.g. [0.5, 0.8, 0.9, 0.95].")
    for v in values:
        check_fraction(v)
    return tuple(sorted(set(float(v) for v in values)))


def check_granularity(granularity: str) -> None:
    """A ValueError unless sensitivity can measure ``granularity`` (2:4 has no curve)."""
    if granularity not in VARIABLE_GRANULARITIES:
        raise ValueError(f"sensitivity prunes 'unstructured' or 'structured'; got {granularity!r} (2:4 has only one "
                         "sparsity, so it has no curve).")


def check_executor(executor):
    """``executor``, or the default (in this process, in turn) for None; a TypeError for anything
    without ``submit``."""
    if executor is None:
        return _InProcess()
    if not hasattr(executor, "submit"):
        raise TypeError(f"executor must be a concurrent.futures.Executor (or Dask's client.get_executor()), "
                        f"got {type(executor).__name__}.")
    return executor


def analysed_layers(pruner: BasePruner, layers, granularity: str) -> list[str]:
    """The layers to analyse.

    Args:
        pruner: a BasePruner.
        layers: a layer name, a list of them, or None for every layer that can be pruned so.
        granularity: "structured" leaves out (or refuses) layers that cannot lose units.

    Returns:
        Layer names (as the Pruner spells them).

    Example:
        >>> analysed_layers(pruner, None, "structured")   # doctest: +SKIP   (the output layer cannot lose units)
        ['0', '2']
    """
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

def measure(copy: PrunerCopy, sparsities: Sequence[float], layers: Sequence[str], criterion, granularity: str,
            executor=None, hooks: Hooks | None = None) -> SensitivityTable:
    """Sensitivity of each layer of a :class:`~prunelab.core.copies.PrunerCopy` (safe on any
    thread: it works on the copy's private model).

    Args:
        copy: taken on the Pruner's thread.
        sparsities, layers: checked (:func:`check_sparsities`, :func:`analysed_layers`).
        criterion, granularity: how each layer is pruned.
        executor: a concurrent.futures.Executor for the measuring tasks (default: here, in turn).
        hooks: report each finished layer and cancel (:class:`prunelab.retrain.Hooks`).

    Returns:
        A :class:`SensitivityTable`.
    """
    hooks = hooks or Hooks()
    check_granularity(granularity)
    executor = check_executor(executor)
    twin = copy.pruner()
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
    args = (twin.val_inputs, twin.val_targets, twin.metric, twin.batch_size, twin.classes)
    model = twin.model  # holds the reference weights after reset()
    baseline_future = executor.submit(evaluate_masked, model, [{}], *args, output=twin.output)
    futures = [executor.submit(evaluate_masked, model, masks_list, *args, output=twin.output) for masks_list in tasks]
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


class SensitivityJob:
    """One sensitivity analysis of ``pruner``, in three parts (arguments as for :func:`sensitivity`).

    Attributes:
        layers, sparsities: checked, after :meth:`prepare`.
        version: the Pruner's ``weights_version`` the analysis measures.
        table: the result: from the Pruner's cache after :meth:`prepare` when it holds one, else
            after :meth:`run`.

    Example:
        >>> job = SensitivityJob(pruner, [0.5, 0.9]).prepare()   # doctest: +SKIP   (the Pruner's thread)
        >>> job.run()                                            # doctest: +SKIP   (any thread)
        >>> table = job.apply()                                  # doctest: +SKIP   (the Pruner's thread)
    """

    def __init__(self, pruner: BasePruner, sparsities=DEFAULT_SPARSITIES, layers=None, criterion="magnitude",
                 granularity: str = "unstructured", executor=None):
        self.pruner, self.criterion, self.granularity, self.executor = pruner, criterion, granularity, executor
        self._sparsities, self._layers = sparsities, layers
        self.table: SensitivityTable | None = None
        self.copy: PrunerCopy | None = None

    def prepare(self) -> "SensitivityJob":
        """On the Pruner's thread: check the arguments, look in the cache, else take a copy.

        Returns:
            The job itself.

        Raises:
            ValueError, TypeError: for bad arguments (unknown criterion, layers, granularity...).
        """
        get_criterion(self.criterion)  # a clear error for unknown names, before any work
        self.sparsities = check_sparsities(self._sparsities)
        check_granularity(self.granularity)
        self.layers = analysed_layers(self.pruner, self._layers, self.granularity)
        check_executor(self.executor)
        self.version = self.pruner.weights_version
        crit = self.criterion if isinstance(self.criterion, str) else id(self.criterion)
        self._key = (self.version, crit, self.granularity, self.sparsities, tuple(self.layers))
        self.table = _CACHES.get(self.pruner, {}).get(self._key)
        if self.table is None:
            self.copy = PrunerCopy.of(self.pruner)
        return self

    def run(self, hooks: Hooks | None = None) -> SensitivityTable:
        """On any thread: measure (nothing to do when the cache held the table).

        Args:
            hooks: each finished layer, and cancel.

        Returns:
            The table.
        """
        if self.table is None:
            if self.copy is None:
                raise RuntimeError("call prepare() (on the Pruner's thread) before run().")
            self.table = measure(self.copy, self.sparsities, self.layers, self.criterion, self.granularity,
                                 self.executor, hooks)
        return self.table

    def apply(self) -> SensitivityTable:
        """On the Pruner's thread: keep the table in the Pruner's cache (the Pruner's state is
        unchanged: sensitivity only measures).

        Returns:
            The table.
        """
        if self.table is None:
            raise RuntimeError("run() did not complete: there is no table to apply.")
        _CACHES.setdefault(self.pruner, {})[self._key] = self.table
        return self.table


def sensitivity(pruner: BasePruner, sparsities=DEFAULT_SPARSITIES, layers=None, criterion="magnitude",
                granularity: str = "unstructured", executor=None) -> SensitivityTable:
    """Prune one layer at a time (the others unpruned) to each of ``sparsities`` and measure.

    Args:
        pruner: a BasePruner (or Pruner); its state is left as it was.
        sparsities: fractions to measure each layer at.
        layers: layer names, or None for all (for structured: all that can lose units).
        criterion: how each layer is ranked (a name or a Criterion).
        granularity: "unstructured" or "structured" (sparsity = the fraction of units removed).
        executor: any concurrent.futures.Executor, e.g. Dask's ``client.get_executor()``
            (default: here, in turn); all give the same table.

    Returns:
        A :class:`SensitivityTable`, cached per weights version and arguments.

    Example:
        >>> table = sensitivity(pruner, [0.5, 0.9])   # doctest: +SKIP
        >>> table.curve("0")                          # doctest: +SKIP
        ([0.5, 0.9], [0.0, 0.011])
    """
    job = SensitivityJob(pruner, sparsities, layers, criterion, granularity, executor).prepare()
    job.run()
    return job.apply()
