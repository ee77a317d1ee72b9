"""What a measurement says: :class:`Metrics`, and scoring outputs against targets (top-1 accuracy
with its Wilson interval, cross-entropy, per-class accuracy, or the user's metric and loss).

A measurement may cover a fixed stratified subset of the evaluation data (``evaluate(time_budget=)``):
``samples`` says how many were measured, ``of`` how many the evaluation data holds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .checks import LOSS_FIX, METRIC_FIX, check_real
from .inputs import forward
from .tokens import is_token_task, token_scores


@dataclass(frozen=True)
class Metrics:
    """One measurement of the model's current state.

    ``accuracy`` is top-1 accuracy, or the user's metric when one was given (``metric_name``
    says which). Sizes are bytes: ``dense_bytes`` stores every parameter as fp32; ``sparse_bytes``
    stores masked weights as a bitmask plus their nonzero values. FLOPs are per sample.

    ``samples`` were measured, of the ``of`` samples of the evaluation data: fewer when a time
    budget cut the measurement short (``complete`` is then False, and ``accuracy_interval`` says
    how far the full result may lie). ``of`` is None for Metrics made before it existed (complete).
    For token outputs (a language model, :mod:`~prunelab.core.tokens`) ``accuracy`` is the
    (next-)token accuracy over the labelled tokens, ``loss`` their mean cross-entropy and
    ``perplexity`` its exponential (None for other models).
    """

    accuracy: float
    loss: float | None
    per_class: tuple[float, ...]
    samples: int
    data: str
    params: int
    nonzero_params: int
    dense_bytes: int
    sparse_bytes: int
    flops: int
    nonzero_flops: int
    metric_name: str = "accuracy"
    accuracy_interval: tuple[float, float] | None = field(default=None)
    of: int | None = None
    perplexity: float | None = None

    @property
    def complete(self) -> bool:
        """Whether every evaluation sample was measured (False for a time-budgeted first answer)."""
        return self.of is None or self.samples >= self.of

    @property
    def compression_ratio(self) -> float:
        return self.params / max(self.nonzero_params, 1)

    @property
    def theoretical_speedup(self) -> float:
        return self.flops / max(self.nonzero_flops, 1)

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero_params / max(self.params, 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(compression_ratio=self.compression_ratio, theoretical_speedup=self.theoretical_speedup,
                 complete=self.complete)
        return d

    def __str__(self) -> str:
        on = f"{self.samples} {self.data} samples" if self.complete else \
            f"{self.samples:,} of {self.of:,} {self.data} samples, refining"
        return (f"{self.metric_name} {self.accuracy:.1%} on {on}, "
                f"{self.nonzero_params:,}/{self.params:,} params nonzero "
                f"({self.compression_ratio:.1f}x smaller, {self.theoretical_speedup:.1f}x fewer FLOPs)"
                + ("" if self.perplexity is None else f", perplexity {self.perplexity:.3f}"))


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval for an accuracy measured on n samples."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_scores(logits: torch.Tensor, targets: torch.Tensor, classes: int):
    """(accuracy, mean cross-entropy, per-class accuracy, correct count)."""
    pred = logits.argmax(1)
    hit = (pred == targets)
    loss = float(nn.functional.cross_entropy(logits.float(), targets))
    totals = torch.bincount(targets, minlength=classes)
    # A class without samples has no accuracy: NaN, not a misleading 0.
    per_class = torch.bincount(targets[hit], minlength=classes) / totals
    correct = int(hit.sum())
    return correct / len(targets), loss, tuple(per_class.tolist()), correct


def score_outputs(outputs: torch.Tensor, targets: torch.Tensor, *, classes: int, metric=None,
                  loss=None) -> tuple[float, float | None, tuple[float, ...], tuple[float, float] | None]:
    """Score a model's outputs against the targets, as :meth:`prunelab.Pruner.evaluate` does.

    Args:
        outputs: the model's outputs on the evaluation inputs.
        targets: the targets (token labels ``[batch, tokens]`` for outputs ``[batch, tokens,
            vocab]``: scored per labelled token, see :mod:`~prunelab.core.tokens`).
        classes: the number of classes when the targets are class indices, else 0.
        metric: ``f(outputs, targets) -> float`` replacing top-1 accuracy (required when
            ``classes`` is 0).
        loss: ``f(outputs, targets) -> scalar tensor``, used with ``metric`` (without one, the loss
            is the mean cross-entropy).

    Returns:
        ``(accuracy or metric, loss or None, per-class accuracy or (), Wilson interval or None)``:
        the interval only for top-1 accuracy, the per-class accuracies for class-index targets.

    Example:
        >>> score_outputs(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), classes=2)[0]
        0.5
    """
    tokens = is_token_task(outputs, targets)
    if metric is None and tokens:
        return (*token_scores(outputs, targets)[:2], (), None)
    if metric is None:
        acc, mean_loss, per_class, correct = classification_scores(outputs, targets, classes)
        return acc, mean_loss, per_class, wilson_interval(correct, len(targets))
    per_class = classification_scores(outputs, targets, classes)[2] if classes and not tokens else ()
    value = check_real(metric(outputs, targets), f"the metric {getattr(metric, '__name__', '')}".rstrip(), METRIC_FIX)
    return value, None if loss is None else check_real(loss(outputs, targets), "the loss", LOSS_FIX), per_class, None


def model_accuracy(model, pruner) -> float:
    """Accuracy (or the Pruner's metric) of any ``model`` taking ``pruner``'s evaluation inputs (a
    structured export, an int8 model...) on its evaluation data: a loop of its own over the model in
    the Pruner's batches, scored as ``pruner.evaluate()`` scores (:func:`score_outputs`).

    Example:
        >>> model_accuracy(pl.load_int8("m.safetensors", Net()), pruner)   # doctest: +SKIP
    """
    x, y, bs = pruner.val_inputs, pruner.val_targets, pruner.batch_size
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outs = torch.cat([forward(model, x[i:i + bs], pruner.output).float().cpu() for i in range(0, len(x), bs)])
    finally:
        model.train(was)
    return float(score_outputs(outs, y.cpu(), classes=pruner.classes, metric=pruner.metric, loss=pruner.loss)[0])
