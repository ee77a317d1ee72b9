"""Measuring a Pruner's states: outputs on the fixed evaluation data (recomputed from the first
changed module on, see :class:`~prunelab.core.evaluation.Evaluator`), FLOPs counted once, and
:class:`~prunelab.core.evaluation.Metrics` cached per state (by its history token).

Nothing stale is served: the caches hold only while the model's buffers and forward hooks are
as they were when measured (:func:`~prunelab.core.modes.stamp`); a module whose buffers were
written or whose hooks changed from outside counts as changed (the run resumes before it), and
cached Metrics of every state are dropped.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import nn

from .evaluation import Evaluator, Metrics, score_outputs
from .flops import count_flops
from .inputs import forward
from .modes import changed_modules, stamp
from .tokens import is_token_task


class Meter:
    """Measures one model on fixed evaluation data.

    Args:
        model: the model (in its current, masked state when measured).
        inputs, targets: the evaluation data.
        total: samples of the data before any subset was taken (Metrics.data names it).
        classes: the number of classes for class-index targets, else 0.
        layer_names: the prunable layers (FLOPs are counted per layer).
        batch_size: evaluation batch size.
        output: the output selector (:func:`~prunelab.core.inputs.forward`).

    Example:
        >>> meter = Meter(model, x, y, total=len(x), classes=10, layer_names=["0"])  # doctest: +SKIP
        >>> meter.evaluate(0, changed=set, sparsity=lambda: {"0": 0.0}, counts=lambda: (100, 0, 0))  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, total: int, classes: int,
                 layer_names: list[str], batch_size: int = 1024, output=None):
        self.model, self.inputs, self.targets, self.total, self.classes = model, inputs, targets, total, classes
        self.layer_names, self.output = layer_names, output
        self.evaluator = Evaluator(model, inputs, batch_size=batch_size, output=output)
        self._flops: tuple[int, dict[str, int]] | None = None
        self._metrics: dict[int, Metrics] = {}
        self._stamp = stamp(model)

    def forget(self, retrace: bool = False) -> None:
        """Drop every cached output and measurement (the model changed in a way not tracked);
        ``retrace``: trace the model anew too (its Parameter objects were replaced)."""
        if retrace:
            self.evaluator = Evaluator(self.model, self.inputs, batch_size=self.evaluator.batch_size, output=self.output)
        self.evaluator.forget()
        self._metrics.clear()

    def _outside(self) -> set[str] | None:
        """Modules whose buffers or hooks changed since the last measurement (their cached
        Metrics dropped); None when that cannot be placed (a global hook), so all is rerun."""
        moved = changed_modules(self._stamp, stamp(self.model))
        if moved:
            self._metrics.clear()
        return None if "*" in moved else moved

    def outputs(self, changed: set[str] | None) -> torch.Tensor:
        """Outputs on the inputs; ``changed``: modules changed since the last call (None: unknown)."""
        outside = self._outside()
        out = self.evaluator.outputs(None if outside is None or changed is None else changed | outside)
        self._stamp = stamp(self.model)  # after the run: it restores any buffer the forward wrote
        return out

    def flops(self) -> tuple[int, dict[str, int]]:
        """(FLOPs per sample of the dense model, FLOPs per prunable layer), counted on first use."""
        if self._flops is None:
            self._flops = count_flops(self.model, self.inputs[:1], self.layer_names)
        return self._flops

    def evaluate(self, token: int, *, changed: Callable[[], set[str]], sparsity: Callable[[], Mapping[str, float]],
                 counts: Callable[[], tuple[int, int, int]], metric: Callable | None = None,
                 loss: Callable | None = None) -> Metrics:
        """The Metrics of the state named ``token``, measured on first request.

        Args:
            token: names the state (a history step's token).
            changed: returns the modules changed since the last outputs.
            sparsity: returns ``{layer name: fraction masked}``.
            counts: returns (parameter entries, entries masked, entries under a mask).
            metric, loss: as the Pruner holds them now (see
                :func:`~prunelab.core.evaluation.score_outputs`).

        Returns:
            The state's :class:`~prunelab.core.evaluation.Metrics`.
        """
        if self._outside() == set() and token in self._metrics:
            return self._metrics[token]
        y, out = self.targets, self.outputs(changed())
        acc, loss, per_class, interval = score_outputs(out, y, classes=self.classes, metric=metric, loss=loss)
        perplexity = math.exp(loss) if is_token_task(out, y) and loss is not None else None
        total_flops, layer_flops = self.flops()
        nonzero_flops = total_flops - sum(layer_flops[n] * s for n, s in sparsity().items())
        params, masked, mask_bits = counts()
        metrics = Metrics(
            accuracy=acc, loss=loss, per_class=per_class, samples=len(y),
            data="validation" if len(y) == self.total else f"validation (subset of {self.total})",
            params=params, nonzero_params=params - masked, dense_bytes=4 * params,
            sparse_bytes=4 * (params - masked) + (mask_bits + 7) // 8,
            flops=total_flops, nonzero_flops=int(round(nonzero_flops)),
            metric_name="accuracy" if metric is None else getattr(metric, "__name__", "metric"),
            accuracy_interval=interval, perplexity=perplexity)
        self._stamp = stamp(self.model)
        self._metrics[token] = metrics
        return metrics


class Measuring:
    """The measuring methods of :class:`~prunelab.core.base.BasePruner` (mixed into it; they use
    its guard, masks, history and :class:`Meter`)."""

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

        Returns:
            A tensor with one row per evaluation sample.
        Example:
            >>> predicted = pruner.outputs().argmax(1)  # doctest: +SKIP
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

    def evaluate(self) -> Metrics:
        """Measure the current state on the evaluation data (cached per state).

        Returns:
            :class:`~prunelab.Metrics`: accuracy (or the metric), loss, per-class accuracy,
            sizes, FLOPs, samples and, for top-1 accuracy, its interval; for a language model
            the token accuracy and the perplexity.
        Example:
            >>> print(pruner.prune(0.9).evaluate())  # doctest: +SKIP
        """
        self._guard()
        return self._meter.evaluate(self._history.current.token, changed=self._masks.take_changed,
                                    sparsity=self.sparsity, counts=self._masks.counts, metric=self.metric,
                                    loss=self.loss)
