"""Measuring a Pruner's states: outputs on the fixed evaluation data (recomputed from the first
changed module on, see :class:`~prunelab.core.evaluation.Evaluator`), FLOPs counted once, and
:class:`~prunelab.core.metrics.Metrics` cached per state (by its history token).

Nothing stale is served: the caches hold only while the model's buffers and forward hooks are
as they were when measured (:func:`~prunelab.core.modes.stamp`); a module whose buffers were
written or whose hooks changed from outside counts as changed (the run resumes before it), and
cached Metrics of every state are dropped.

Big models are measured progressively: when a full pass costs more than
:data:`PROGRESSIVE_FLOPS`, samples are measured in a fixed, class-stratified, seeded order, in
blocks that grow from two samples up to about 0.1 s of full pass each (consecutive blocks run as
one batch when the time allows), so ``evaluate(time_budget=s)`` answers on the first samples
that fit in ``s`` seconds, stopping within about one block of it (Metrics ``samples`` of ``of``,
with the interval), and a later call on the same state continues from where the last one stopped. Cheap models are measured whole, in
the data's order, as before (any budget covers them).

:class:`Measuring` is the measuring part of :class:`~prunelab.core.base.BasePruner`'s surface
(outputs, flops, evaluate, memory), kept here so base.py composes it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from .bits import unique_nbytes
from .blocking import distinct_bytes
from .data import stratified_order
from .evaluation import Evaluator
from .flops import count_flops
from .inputs import forward
from .metrics import Metrics, score_outputs
from .modes import changed_modules, stamp
from .tables import Table
from .tokens import is_token_task

PROGRESSIVE_FLOPS = 2e10  # FLOPs of a full pass above which samples are measured progressively
CACHE_BYTES = 512 * 2**20  # default budget for the activations cached between evaluations


class Meter:
    """Measures one model on fixed evaluation data.

    Args:
        model: the model (in its current, masked state when measured).
        inputs, targets: the evaluation data.
        total: samples of the data before any subset was taken (Metrics.data names it).
        classes: the number of classes for class-index targets, else 0.
        layer_names: the prunable layers (FLOPs are counted per layer).
        batch_size: evaluation batch size (at most; blocks shrink so one block's activations fit
            256 MiB).
        cache_bytes: the budget for activations cached between evaluations.
        seed: seeds the stratified measuring order.
        output: the output selector (:func:`~prunelab.core.inputs.forward`).

    Example:
        >>> meter = Meter(model, x, y, total=len(x), classes=10, layer_names=["0"])  # doctest: +SKIP
        >>> meter.evaluate(0, changed=set, sparsity=lambda: {"0": 0.0}, counts=lambda: (100, 0, 0))  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, total: int, classes: int,
                 layer_names: list[str], batch_size: int = 1024, cache_bytes: int = CACHE_BYTES, seed: int = 0,
                 output=None):
        self.model, self.inputs, self.targets, self.total, self.classes = model, inputs, targets, total, classes
        self.layer_names, self.seed, self.output = layer_names, seed, output
        self.evaluator = Evaluator(model, inputs, batch_size=batch_size, cache_bytes=cache_bytes, output=self.output)
        self._flops: tuple[int, dict[str, int]] | None = None
        self._metrics: dict[int, Metrics] = {}
        self._stamp = stamp(model)

    def forget(self, retrace: bool = False) -> None:
        """Drop every cached output and measurement (the model changed in a way not tracked);
        ``retrace``: trace the model anew too (its Parameter objects were replaced)."""
        if retrace:
            old = self.evaluator
            self.evaluator = Evaluator(self.model, self.inputs, batch_size=old.batch_size, cache_bytes=old.cache_bytes,
                                       output=self.output)
        self.evaluator.forget()
        self._metrics.clear()

    def _outside(self) -> set[str] | None:
        """Modules whose buffers or hooks changed since the last measurement (their cached
        Metrics dropped); None when that cannot be placed (a global hook), so all is rerun."""
        moved = changed_modules(self._stamp, stamp(self.model))
        if moved:
            self._metrics.clear()
        return None if "*" in moved else moved

    def _layout(self) -> Evaluator:
        """The evaluator, its measuring order chosen before its first run: stratified and
        progressive when a full pass is expensive (see :data:`PROGRESSIVE_FLOPS`)."""
        ev = self.evaluator
        if ev.blocks is None and ev.order is None and self.flops()[0] * len(self.targets) > PROGRESSIVE_FLOPS:
            ev.order, ev.progressive = stratified_order(self.targets, self.seed), True
        return ev

    def outputs(self, changed: set[str] | None) -> torch.Tensor:
        """Outputs on the inputs; ``changed``: modules changed since the last call (None: unknown)."""
        outside = self._outside()
        out = self._layout().outputs(None if outside is None or changed is None else changed | outside)
        self._stamp = stamp(self.model)  # after the run: it restores any buffer the forward wrote
        return out

    def flops(self) -> tuple[int, dict[str, int]]:
        """(FLOPs per sample of the dense model, FLOPs per prunable layer), counted on first use."""
        if self._flops is None:
            self._flops = count_flops(self.model, self.inputs[:1], self.layer_names)
        return self._flops

    def evaluate(self, token: int, *, changed: Callable[[], set[str]], sparsity: Callable[[], Mapping[str, float]],
                 counts: Callable[[], tuple[int, int, int]], metric: Callable | None = None,
                 loss: Callable | None = None, time_budget: float | None = None) -> Metrics:
        """The Metrics of the state named ``token``, measured on first request (with a
        ``time_budget``, on the samples that fit in it, continuing where the last call on the
        same state stopped; only complete Metrics are cached).

        Args:
            token: names the state (a history step's token).
            changed: returns the modules changed since the last outputs.
            sparsity: returns ``{layer name: fraction masked}``.
            counts: returns (parameter entries, entries masked, entries under a mask).
            metric, loss: as the Pruner holds them now (see
                :func:`~prunelab.core.evaluation.score_outputs`).

        Returns:
            The state's :class:`~prunelab.core.metrics.Metrics`.
        """
        deadline = None if time_budget is None else time.perf_counter() + time_budget
        outside = self._outside()
        if outside == set() and token in self._metrics:
            return self._metrics[token]
        total_flops, layer_flops = self.flops()  # counted first: inside the budget
        moved = changed()
        index, out = self._layout().run(None if outside is None else moved | outside, deadline)
        self._stamp = stamp(self.model)
        y = self.targets if len(index) == len(self.targets) and self.evaluator.order is None else self.targets[index.to(self.targets.device)]
        acc, loss, per_class, interval = score_outputs(out, y, classes=self.classes, metric=metric, loss=loss)
        perplexity = math.exp(loss) if is_token_task(out, y) and loss is not None else None
        nonzero_flops = total_flops - sum(layer_flops[n] * s for n, s in sparsity().items())
        params, masked, mask_bits = counts()
        metrics = Metrics(
            accuracy=acc, loss=loss, per_class=per_class, samples=len(y), of=len(self.targets),
            data="validation" if len(y) == self.total else f"validation (subset of {self.total})",
            params=params, nonzero_params=params - masked, dense_bytes=4 * params,
            sparse_bytes=4 * (params - masked) + (mask_bits + 7) // 8,
            flops=total_flops, nonzero_flops=int(round(nonzero_flops)),
            metric_name="accuracy" if metric is None else getattr(metric, "__name__", "metric"),
            accuracy_interval=interval, perplexity=perplexity)
        if metrics.complete:
            self._metrics[token] = metrics
        return metrics


@dataclass(frozen=True)
class Holdings:
    """What a Pruner holds in memory, in bytes (``pruner.memory()``): the unmasked weights it keeps
    (the originals, and every other set of weights in its history), the masks of the plans and those
    in effect (one bit per entry), the cached activations and outputs of the evaluation, and the
    cached scores and rankings. The model's own parameters and the evaluation data are not counted
    (the user holds them)."""

    weights_copy: int
    plans: int
    caches: int
    cache_budget: int
    outputs: int
    scores: int

    @property
    def total(self) -> int:
        return self.weights_copy + self.plans + self.caches + self.outputs + self.scores

    def table(self) -> Table:
        """The holdings as a :class:`~prunelab.Table` (one row each, in MB)."""
        rows = [{"held": k, "MB": round(getattr(self, k) / 2**20, 1)}
                for k in ("weights_copy", "plans", "caches", "outputs", "scores")]
        return Table(["held", "MB"], rows + [{"held": "total", "MB": round(self.total / 2**20, 1)}])


class Measuring:
    """The measuring surface of :class:`~prunelab.core.base.BasePruner` (a base class of it): it
    uses the Pruner's meter, masks and history as the Pruner sets them up."""

    def forward(self, x) -> torch.Tensor:
        """The model's measured output on ``x`` (a tensor, or Inputs for keyword inputs), selected
        by the Pruner's ``output=`` (:func:`~prunelab.core.inputs.forward`), in the model's
        current mode and state.

        Returns: A tensor. Example: ``pruner.forward(pruner.val_inputs[:4]).argmax(-1)``
        """
        return forward(self.model, x, self.output)

    def outputs(self) -> torch.Tensor:
        """Model outputs on the evaluation data in the current state, recomputed only from the
        first module changed since the last call.

        Returns: A tensor with one row per evaluation sample.
        Example: ``predicted = pruner.outputs().argmax(1)``
        """
        self._guard()
        return self._meter.outputs(self._masks.take_changed())

    @property
    def incremental(self) -> bool:
        """Whether evaluation resumes from the first changed module (the model traces with fx)."""
        return self._meter.evaluator.incremental

    def flops(self) -> tuple[int, dict[str, int]]:
        """FLOPs per sample of the dense model, and per prunable layer (counted once).

        Returns: ``(total, {layer name: flops})``.
        Example: ``total, per_layer = pruner.flops()``
        """
        return self._meter.flops()

    def evaluate(self, time_budget: float | None = None) -> Metrics:
        """Measure the current state on the evaluation data (cached per state).

        Args:
            time_budget: seconds. Measure only the samples that fit (at least one more block),
                taken in a fixed, class-stratified, seeded order; call again (with or without a
                budget) on the same state to continue from where it stopped. None: every sample.
                Cheap models are always measured whole.

        Returns:
            :class:`~prunelab.Metrics`: accuracy (or the metric), loss, per-class accuracy,
            sizes, FLOPs, ``samples`` measured ``of`` the evaluation data (``complete``) and, for
            top-1 accuracy, its 95% interval.
        Example:
            >>> first = pruner.prune(0.9).evaluate(time_budget=1.0)   # e.g. on 24 of 1,000 samples
            >>> while not first.complete: first = pruner.evaluate(time_budget=1.0)
        """
        self._guard()
        return self._meter.evaluate(self._history.current.token, changed=self._masks.take_changed,
                                    sparsity=self.sparsity, counts=self._masks.counts, metric=self.metric,
                                    loss=self.loss, time_budget=time_budget)

    def memory(self) -> Holdings:
        """What the Pruner holds, in bytes: weights copies, plans, evaluation caches and outputs,
        scores. Example: ``print(pruner.memory().table())``"""
        steps = self.history.steps
        weights = [t for s in steps for t in s.weights.values()]
        keeps = [p.bits for s in steps for p in s.plans.values()] + self._masks.held()  # one bit per entry
        ev = self._meter.evaluator
        return Holdings(weights_copy=distinct_bytes(weights), plans=unique_nbytes(keeps), caches=ev.cached_bytes,
                        cache_budget=ev.cache_bytes, outputs=ev.output_bytes, scores=self._scores.nbytes())
