"""The score cache: importance scores per criterion and weights, and their sorted rankings.

Scores are taken on the dense model, once per (criterion, weights version, weights or units);
a :class:`~prunelab.core.masks.Ranking` ranks them once per (criterion, granularity, layers,
weights version), so any later sparsity is one selection. A new weights version (fine-tuning,
``set_weights``) makes new keys; old entries stay valid for undo.

Scores that are a function of each layer's weight alone (magnitude's ``|w|``:
:meth:`~prunelab.core.criteria.Criterion.weight_function`) are never held per weight: they are
computed from the unmasked weights, a layer at a time, where a ranking reads them (a held copy
would be as large as the weights).

Criteria are keyed by name when given by name, and by the instance otherwise (kept alive while
its id is a key, so no later instance can reuse the id and be served its scores; keying by the
instance itself would fail for unhashable dataclasses).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from .blocking import distinct_bytes, output_bytes
from .checks import check_scores
from .criteria import Criterion, ScoringContext, get_criterion
from .data import batches, first_samples
from .inputs import forward
from .masks import Derived, Ranking
from .modes import untouched
from .units import UnitGroup

GRADIENT_BYTES = 2**30  # a scoring batch's activations, kept for its backward pass, fit this
SCORING_SAMPLES = 2048  # data-driven criteria score on the first this many samples (by default)


def criterion_key(criterion: str | Criterion, refs: dict[int, Criterion] | None = None) -> object:
    """The cache key of a criterion: its name when given as a string, else its instance's id.

    Args:
        criterion: a criterion name or a Criterion instance.
        refs: where to keep the instance alive while its id is used as a key.

    Returns:
        A hashable key.

    Example:
        >>> criterion_key("magnitude")
        'magnitude'
    """
    if isinstance(criterion, str):
        return criterion
    crit = get_criterion(criterion)
    if refs is not None:
        refs[id(crit)] = crit
    return id(crit)


def scoring_samples(pruner, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data criteria score on: the first ``samples`` of ``pruner.train_data``, else of its
    validation data, on its device (class targets as int64, as cross-entropy wants them).

    Args:
        pruner: the Pruner (read through its public attributes).
        samples: how many to take at most.

    Returns:
        ``(inputs, targets)``.

    Example:
        >>> x, y = scoring_samples(pruner, 256)
    """
    train = pruner.train_data
    if train is None:  # read already (labels shifted once, for a causal LM): sliced, not read again
        x, y = pruner.val_inputs[:samples], pruner.val_targets[:samples]
    else:
        x, y = first_samples(train, samples, "train_data", device=pruner.device, label_key=pruner.label_key)
    return x, (y.long() if pruner.classification and not y.dtype.is_floating_point else y)


def scoring_context(pruner, x: torch.Tensor, y: torch.Tensor) -> ScoringContext:
    """A :class:`~prunelab.core.criteria.ScoringContext` over ``pruner``'s model and layers, in
    batches of ``(x, y)`` (:func:`scoring_batch`), with its loss and seed.

    Example:
        >>> ctx = scoring_context(pruner, *scoring_samples(pruner, 256))
    """
    batch = scoring_batch(pruner, x)
    return ScoringContext(pruner.model, pruner.layers, lambda: batches(x, y, batch), pruner.loss or _missing_loss,
                          pruner.classification, pruner.seed, pruner.output)


def scoring_batch(pruner, x) -> int:
    """Samples per scoring batch: at most 256 (or the Pruner's batch size), and few enough that the
    activations a gradient keeps for its backward pass (every module's output, measured on one
    sample of ``x``) fit :data:`GRADIENT_BYTES`, whatever the model's size (a ResNet-50 at 224 px
    keeps about 0.2 GB a sample: 256 of them would be 50 GB).

    Example:
        >>> scoring_batch(pruner, pruner.val_inputs)   # doctest: +SKIP
        256
    """
    with torch.no_grad(), untouched(pruner.model):
        per_sample, _ = output_bytes(pruner.model, lambda: forward(pruner.model, x[:1], pruner.output))
    return max(1, min(pruner.batch_size, 256, GRADIENT_BYTES // max(per_sample, 1)))


def score_dense(pruner, criterion: Criterion, units: bool) -> dict[str, torch.Tensor]:
    """``criterion``'s weight (or unit) scores on ``pruner``'s dense model (its unmasked weights
    loaded for the call, the masks written back after), checked (:func:`~prunelab.core.checks.check_scores`:
    every layer, its shape, finite) before anything is cached or planned from them.

    Example:
        >>> score_dense(pruner, Magnitude(), units=True)["0"].shape
    """
    with pruner.dense():
        ctx = pruner.scoring_context()
        scores = criterion.unit_scores(ctx) if units else criterion.weight_scores(ctx)
    return check_scores(scores, pruner.layers, criterion, units)


def _missing_loss(outputs, targets):
    raise ValueError("this needs a loss: pass loss=f(outputs, targets) -> scalar tensor to the Pruner.")


class ScoreCache:
    """Scores and rankings, cached per criterion, units or weights, and weights version.

    Args:
        compute: ``compute(criterion, units) -> {layer: scores}`` on the dense model (the Pruner
            loads its unmasked weights around the call).
        weights: ``weights() -> {layer name: unmasked weight}`` of the weights version in effect
            (where weight-function criteria read their scores from); None: always ``compute``.

    Example:
        >>> cache = ScoreCache(lambda crit, units: {"0": torch.tensor([0.3, 0.1, 0.2])})
        >>> cache.ranking("magnitude", "unstructured", ("0",), version=0).masks(1 / 3)[0]
        tensor([ True, False,  True])
    """

    def __init__(self, compute: Callable[[Criterion, bool], dict[str, torch.Tensor]],
                 weights: Callable[[], Mapping[str, torch.Tensor]] | None = None):
        self._compute = compute
        self._weights = weights
        self._scores: dict = {}
        self._refs: dict[int, Criterion] = {}
        self._rankings: dict = {}

    def scores(self, criterion: str | Criterion, *, units: bool, version: int) -> dict[str, torch.Tensor]:
        """Scores of every weight (or output unit, with ``units=True``) per layer, for the weights
        named ``version``: computed on first use, then served from the cache.

        Returns:
            ``{layer name: scores}`` (the cache's own dict: do not modify it; for a weight-function
            criterion's weight scores, a new dict computed from the weights of ``version``, which
            must be the version in effect).
        """
        crit = get_criterion(criterion)
        key = (criterion_key(criterion, self._refs), units, version)
        derived = None if units or key in self._scores else self._derived(crit)
        if derived is not None:
            return {n: d() for n, d in derived.items()}
        if key not in self._scores:
            self._scores[key] = self._compute(crit, units)
        return self._scores[key]

    def ranking(self, criterion: str | Criterion, granularity: str, names: tuple[str, ...], *, version: int,
                groups: Mapping[str, UnitGroup] | None = None) -> Ranking:
        """The entries of layers ``names`` sorted by score, ranked together.

        Args:
            criterion: a criterion name or instance.
            granularity: "structured" ranks units (one score per unit group, ``groups`` by layer
                name, rooted at the names given), anything else ranks weights.
            names: the layers (for structured, the root layer of each group).
            version: the weights version the scores belong to.
            groups: the unit groups, for structured.

        Returns:
            A :class:`~prunelab.core.masks.Ranking` with one score tensor per name.
        """
        key = (criterion_key(criterion, self._refs), granularity, names, version)
        if key not in self._rankings:
            if granularity == "structured":
                unit = self.scores(criterion, units=True, version=version)
                per_group = [groups[n].unit_scores(unit) for n in names]  # a head's rows: one unit
                if len(per_group) > 1:  # comparable across layers: each layer's scores over their mean
                    per_group = [s / s.mean().clamp_min(1e-12) for s in per_group]
                    # Each layer's best unit ranks last, so a global amount below 1 never cuts a
                    # layer off entirely (which would disconnect the network).
                    per_group = [s.float().index_fill(0, s.argmax().reshape(1), float("inf")) for s in per_group]
                self._rankings[key] = Ranking(per_group)
            else:
                held = (criterion_key(criterion, self._refs), False, version) in self._scores
                derived = None if held else self._derived(get_criterion(criterion))
                w = derived if derived is not None else self.scores(criterion, units=False, version=version)
                self._rankings[key] = Ranking([w[n] for n in names])
        return self._rankings[key]

    def _derived(self, crit: Criterion) -> dict[str, Derived] | None:
        """``{layer: Derived scores}`` over the weights in effect, for a weight-function criterion."""
        fn = crit.weight_function()
        if fn is None or self._weights is None:
            return None
        return {n: Derived(fn, w) for n, w in self._weights().items()}

    def nbytes(self) -> int:
        """Bytes of the scores and rankings cached now (tensors shared between entries once)."""
        tensors = [t for d in self._scores.values() for t in d.values()]
        tensors += [t for r in self._rankings.values() for t in r.parts]
        return distinct_bytes(tensors)

    def add(self, criterion: str, scores: Mapping[str, torch.Tensor], *, units: bool, version: int) -> bool:
        """Adopt scores of the built-in criterion named ``criterion`` computed elsewhere.

        Returns:
            True when adopted; False (ignored) when ``criterion`` is not a built-in's name.
        """
        if get_criterion(criterion).name != criterion:
            return False
        self._scores[(criterion, units, version)] = dict(scores)
        return True
