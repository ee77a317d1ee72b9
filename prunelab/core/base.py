"""The Pruner's core, composed of parts with one job each: :mod:`.checks` (input checks),
:mod:`.maskstate` (masks written in place; the mask semantics are there), :mod:`.history`
(immutable steps, undo, redo), :mod:`.planning` (requests into plans), :mod:`.scores` (the score
cache) and :mod:`.meter` (measuring).

Side effects, all undone by ``reset()``: the model's parameter values change in place; one copy
of the original parameters and buffers is kept. While a Pruner is in use it owns the weights
(one Pruner per model, :mod:`.ownership`): change them through it (``prune``, ``finetune``), not
behind its back; a change behind its back is noticed, and then ``sync()`` adopts it or ``reset()``
discards it. Every change is a transaction: it is checked before anything is written, and on
any exception (KeyboardInterrupt included) the model, the history and the caches stay as before. Each call to ``prune`` sets the pruning
of the layers it names (a slider, not a ratchet); layers it does not name keep their masks.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from . import planning
from .checks import check_count, check_layer_names, check_model, check_scores, check_seed
from .criteria import Criterion, ScoringContext
from .datachecks import check_data, default_loss
from .history import History, HistoryView, Step
from .layers import Layer
from .units import UnitGroup, find_unit_groups
from .masks import Ranking
from .maskstate import MaskState
from .inputs import check_label_key, check_output, plain_example, select_output
from .meter import CACHE_BYTES, Measuring, Meter
from .ownership import Custody
from .transitions import Transitions
from .plan import Plan
from .scores import SCORING_SAMPLES, ScoreCache, score_dense, scoring_context, scoring_samples

__all__ = ["BasePruner", "Plan"]  # Plan lives in .plan; importable from here too


class BasePruner(Measuring):
    """Masks over ``model``'s own weights, with history, scoring and measurement on ``val_data``.

    The workflows (retraining, sensitivity, export, recipes) take a BasePruner through its public
    surface; :class:`prunelab.Pruner` adds them as methods.

    Args (all as for :class:`prunelab.Pruner`): model, val_data, train_data=None, and keyword-only
        output=None, label_key="labels", metric=None, loss=None, eval_samples=None, batch_size=1024,
        seed=0, cache_bytes=512 MiB. Measuring (outputs, flops, evaluate, memory) comes from
        :class:`~prunelab.core.meter.Measuring`.

    Example:
        >>> demo = pl.demos.load("digits-mlp")
        >>> BasePruner(demo.model, demo.val).prune(0.5).overall_sparsity()
        0.5
    """

    def __init__(self, model: nn.Module, val_data, train_data=None, *, output=None, label_key: str = "labels",
                 metric: Callable | None = None, loss: Callable | None = None, eval_samples: int | None = None,
                 batch_size: int = 1024, seed: int = 0, cache_bytes: int = CACHE_BYTES):
        batch_size, seed = check_count(batch_size, "batch_size"), check_seed(seed)
        cache_bytes = check_count(cache_bytes, "cache_bytes")
        check_output(output)
        self.model, self.output, self.label_key = model, output, check_label_key(label_key)
        self.layers, self.skipped = check_model(model)
        weight = self.layers[0].weight
        self.device, self.seed, self.batch_size, self.train_data = weight.device, seed, batch_size, train_data
        self.metric, self._by_name = metric, {l.name: l for l in self.layers}
        x, y, self.val_total, self.classes = check_data(model, val_data, train_data, metric=metric, seed=seed,
                                                        eval_samples=eval_samples, device=self.device,
                                                        dtype=weight.dtype, loss=loss, output=output,
                                                        label_key=self.label_key)
        self.val_inputs, self.val_targets, self.classification = x, y, self.classes > 0
        self.loss = default_loss(self.classes, y) if loss is None else loss

        original = {n: p.detach().clone() for n, p in model.named_parameters()}
        self._masks = MaskState(model, self.layers, original, self.unit_groups)
        self._history = History(Step({}, original, 0, 0, buffers=self._masks.original_buffers))
        self._scores = ScoreCache(lambda criterion, units: score_dense(self, criterion, units),
                                  lambda: {l.name: self._history.current.weights[l.weight_name] for l in self.layers})
        self._meter = Meter(model, x, y, total=self.val_total, classes=self.classes, layer_names=self.layer_names,
                            batch_size=batch_size, cache_bytes=cache_bytes, seed=seed, output=output)
        self._score_data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._groups: tuple[dict[str, UnitGroup], dict[str, str]] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._custody = Custody(self, self._masks, self._meter)
        self._guard, self._take_outside = self._custody.guard, self._custody.take_outside
        self._moves = Transitions(self._history, self._masks, self.unit_groups, self._notify)

    # ------------------------------------------------------------------ introspection

    @property
    def layer_names(self) -> list[str]:
        """Names of the prunable layers, in module order (e.g. ``["0", "2", "4"]``)."""
        return [l.name for l in self.layers]

    def layer(self, name: str | Layer) -> Layer:
        """The prunable layer called ``name`` (an unknown name is a ValueError with a did-you-mean).

        Returns: Its :class:`~prunelab.Layer` (name, kind, shape, params, module).
        Example: ``pruner.layer("0").shape`` gives ``(32, 64)``
        """
        return self._by_name[check_layer_names([name], self.layer_names)[0]]

    @property
    def structured_blocked(self) -> dict[str, str]:
        """``{layer name: reason}`` for the layers whose units cannot be removed."""
        self.unit_groups()
        return dict(self._groups[1])

    @property
    def plans(self) -> dict[str, Plan]:
        """``{layer name: Plan}``: the pruning now in effect (layers absent are dense)."""
        return dict(self._history.current.plans)

    @property
    def history(self) -> HistoryView:
        """A read-only :class:`~prunelab.core.history.HistoryView`: ``steps`` up to the current
        one, ``original``, ``cursor``; e.g. ``pruner.prune(0.5).history.cursor == 1``."""
        return self._history.view()

    def sparsity(self) -> dict[str, float]:
        """Fraction of each layer's weights that are zero in effect (masked).

        Returns: ``{layer name: fraction}`` for every prunable layer (0.0 when dense).
        Example: ``pruner.prune({"0": 0.5}).sparsity()["0"]`` gives ``0.5``
        """
        self._guard()
        return self._masks.sparsity(self.layers)

    def overall_sparsity(self) -> float:
        """Fraction of all prunable weights that are masked (e.g. 0.9 after ``prune(0.9)``)."""
        return self._overall(self.sparsity())

    unit_sparsity = planning.unit_sparsity  # fraction of the removable units removed now (a method)
    blocked = planning.blocked  # {layer: reason} for the layers a granularity cannot prune (a method)

    def _overall(self, sparsity: Mapping[str, float]) -> float:
        return sum(round(s * l.params) for s, l in zip(sparsity.values(), self.layers)) / sum(l.params for l in self.layers)

    def mask(self, layer: str) -> torch.Tensor:
        """The effective keep-mask of a layer's weight.

        Returns: A bool tensor shaped like the weight, True = kept (a copy: changing it changes nothing).
        Example: ``(~pruner.prune({"0": 0.5}).mask("0")).sum()`` counts the weights pruned.
        """
        self._guard()
        return self._masks.mask(self.layer(layer).weight_name)

    def masks(self) -> dict[str, torch.Tensor]:
        """Effective keep-masks (copies) of every masked parameter: weights, and the biases or
        norms that structured pruning zeroes.

        Returns: ``{parameter name: bool tensor}``; dense parameters are absent.
        Example: ``sorted(pruner.prune({"0": 0.5}).masks())`` gives ``['0.weight']``
        """
        self._guard()
        return self._masks.masks()

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change of state.

        Returns: A function that unsubscribes ``callback``.
        Example: ``stop = pruner.on_change(lambda: print("changed"))``
        """
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    # ------------------------------------------------------------------ scoring

    def dense(self):
        """A context manager loading the unmasked weights into the model (for scoring): it yields
        the model and writes the masks back after. Example: ``with pruner.dense() as model: ...``"""
        self._guard()
        return self._masks.dense()

    def scoring_context(self, samples: int = SCORING_SAMPLES) -> ScoringContext:
        """What a criterion scores on: the model, its layers, batches of the first ``samples`` of
        train_data (else val_data; taken once), the loss, and the seed.

        Returns: A :class:`~prunelab.core.criteria.ScoringContext`.
        Example: ``scores = pl.Magnitude().weight_scores(pruner.scoring_context())``
        """
        if self._score_data is None:
            self._score_data = scoring_samples(self, samples)
        return scoring_context(self, *self._score_data)

    def scores(self, criterion: str | Criterion = "magnitude", *, units: bool = False) -> dict[str, torch.Tensor]:
        """Importance of every weight (or, with ``units=True``, every output unit) per layer, on
        the dense model; cached per criterion and weights version.

        Returns: ``{layer name: scores}`` shaped like each weight (or ``(units,)``); higher matters more.
        Example: ``pruner.scores("magnitude")["0"].shape`` gives ``torch.Size([32, 64])``
        """
        self._guard()
        return self._scores.scores(criterion, units=units, version=self.weights_version)

    def ranking(self, criterion: str | Criterion, granularity: str, names: tuple[str, ...]) -> Ranking:
        """The weights of layers ``names`` (structured: their unit groups) sorted by score, ranked
        together; cached per weights version.

        Returns: A :class:`~prunelab.core.masks.Ranking`: ``masks(amount)`` gives one keep-mask per name.
        Example: ``keep = pruner.ranking("magnitude", "unstructured", ("0",)).masks(0.5)[0]``
        """
        groups = self.unit_groups() if granularity == "structured" else None
        return self._scores.ranking(criterion, granularity, names, version=self.weights_version, groups=groups)

    def add_scores(self, criterion: str, scores: Mapping[str, torch.Tensor], *, units: bool,
                   weights_version: int) -> bool:
        """Adopt scores of a built-in criterion computed elsewhere (the explorer scores a copy of
        the model on a background thread), so pruning by them needs no recomputation.

        Returns: True when adopted; False (ignored) when the weights changed since ``weights_version``.
        Example: ``pruner.add_scores("magnitude", scores, units=False, weights_version=pruner.weights_version)``
        """
        if weights_version != self.weights_version:
            return False
        scores = check_scores(dict(scores) if isinstance(scores, Mapping) else scores, self.layers, criterion, units)
        return self._scores.add(criterion, scores, units=units, version=weights_version)

    def unit_groups(self) -> dict[str, UnitGroup]:
        """Units that shrink together: each layer's output units with the inputs of the layers
        they feed, and coupled layers (residual additions); built on first use. Layers absent
        are in :attr:`structured_blocked`.

        Returns: ``{layer name: UnitGroup}`` (coupled layers share one group).
        Example: ``pruner.unit_groups()["0"].layers`` gives ``('0',)``
        """
        if self._groups is None:
            with self.dense():
                self._groups = find_unit_groups(self.model, self.layers, plain_example(self.val_inputs[:1]),
                                                lambda out: select_output(out, self.output))
        return self._groups[0]

    # ------------------------------------------------------------------ changing the state

    def prune(self, amount: float | Mapping[str, float] | None = None, *,
              threshold: float | Mapping[str, float] | None = None,
              criterion: str | Criterion = "magnitude", granularity: str = "unstructured",
              scope: str = "global", round_to: int | None = None) -> "BasePruner":
        """Set the sparsity of some or all layers, as one step of history.

        Args:
            amount: a fraction in [0, 1] for every layer (ranked together when ``scope="global"``,
                or each layer on its own when ``scope="layer"``), or ``{layer name: fraction}``.
                For ``"structured"`` it is the fraction of units (filters) removed; ``"2:4"`` is
                always 0.5 (pass 0 to undo it).
            threshold: instead of ``amount``: prune weights with ``|w|`` below this (for
                structured: units whose mean ``|w|`` is below it); a number or ``{layer: number}``.
            criterion: "magnitude", "random", "taylor", "attribution", or a Criterion instance.
            granularity: "unstructured", "structured" (output units / filters; the layers they
                feed lose the matching inputs) or "2:4" (2 of every 4 consecutive weights).
            scope: "global" or "layer" for a single ``amount``.
            round_to: structured only: every layer keeps a multiple of this many units (the
                nearest to what was asked, the highest scored; e.g. 16, the channel block of
                oneDNN's kernels on AVX-512 CPUs, so an exported model runs its channels in full blocks).

        Returns:
            The Pruner, so calls chain. Nothing changes if any argument is invalid.
        Example:
            >>> pruner.prune(0.9).prune({"0": 0.5}, granularity="structured")
        """
        self._guard()
        self._moves.commit(planning.requested_plans(self, amount, threshold, criterion, granularity, scope, round_to))
        return self

    def set_plans(self, plans: Mapping[str, Plan | None], weights: Mapping | None = None, *, buffers=None) -> None:
        """Set explicit plans, and optionally new unmasked weights (and ``buffers``, as :meth:`set_weights`),
        as one step of history: for masks computed outside ``prune`` (regrowth, a state trained on a copy).

        Args:
            plans: ``{layer name: Plan, or None for dense}``. Layers not named keep their plans;
                a structured plan applies to every layer coupled with the one named.
            weights: ``{parameter name: tensor}`` to become the unmasked weights (optional).

        Returns: None; nothing changes if anything is invalid (an unknown layer, a keep mask's shape).
        Example: ``pruner.set_plans({"0": None})`` makes layer "0" dense again.
        """
        everything = self._guard() if weights is None and buffers is None else self._take_outside()
        self._moves.commit(planning.checked_plans(self, plans), weights, everything, buffers)

    def set_weights(self, weights: Mapping[str, torch.Tensor], note: str = "weights", *, buffers: Mapping | None = None):
        """Make ``weights`` (and ``buffers``, named as in ``model.named_buffers()``) the new unmasked
        weights (and buffers), as one step of history; masks stay. Fine-tuning and recalibration
        use this; undo brings the buffers back too, ``reset()`` the originals.

        Args:
            weights: ``{parameter name: tensor}`` (None: the same), names as in ``model.named_parameters()``,
                same shapes; parameters (buffers) not named keep theirs. ``note`` is unused.

        Returns: None. Nothing changes if a name or shape is wrong.
        Example: ``pruner.set_weights({"0.bias": torch.zeros(32)})``
        """
        self._moves.commit({}, weights, self._take_outside(), buffers)

    def sync(self) -> "BasePruner":
        """Adopt weights changed behind the Pruner's back (an in-place edit, ``load_state_dict``)
        as the new unmasked weights, as one step of history; the masks stay and are written over
        them. ``reset()`` still returns the originals.

        Returns: The Pruner. Example: ``model.load_state_dict(sd, assign=True); pruner.sync()``
        """
        if self._take_outside():  # nothing to adopt otherwise
            self._moves.commit({}, {n: p.detach() for n, p in self.model.named_parameters()}, True)
        return self

    def close(self) -> None:
        """Release the model (another Pruner may then take it); it keeps the weights it has now
        (``reset().close()`` returns the originals first). The Pruner cannot be used after.
        Example: ``old.close(); pruner = pl.Pruner(model, data)``"""
        self._custody.close()
        self._meter.forget()  # its cached activations are released with the model

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._custody.closed

    def _notify(self) -> None:
        for cb in list(self._listeners):
            cb()

    def reset(self) -> "BasePruner":
        """Back to the original parameters and buffers (bit for bit) with no masks, as one step of
        history; weights changed behind the Pruner's back are overwritten too.

        Returns: The Pruner (nothing is recorded when it is in the original state already).
        Example: ``pruner.prune(0.9).reset().overall_sparsity()`` gives ``0.0``
        """
        self._moves.reset(self._take_outside())
        return self

    def undo(self) -> bool:
        """Step back in history.

        Returns: True, or False when there is nothing to undo.
        Example: ``pruner.prune(0.5).undo()`` gives ``True``
        """
        return self._moves.enter(self._history.undo, self._take_outside())

    def redo(self) -> bool:
        """Step forward in history (after undo).

        Returns: True, or False when there is nothing to redo.
        Example: ``pruner.undo() and pruner.redo()`` gives ``True``
        """
        return self._moves.enter(self._history.redo, self._take_outside())

    @property
    def can_undo(self) -> bool:
        """Whether :meth:`undo` would change anything."""
        return self._history.can_undo

    @property
    def can_redo(self) -> bool:
        """Whether :meth:`redo` would change anything."""
        return self._history.can_redo

    @property
    def weights_version(self) -> int:
        """Names the unmasked weights in effect (0: the originals); changes with set_weights, or
        reset, undo and redo across it (views then rebuild their dense references)."""
        return self._history.current.weights_version

    @property
    def original_weights(self) -> dict[str, torch.Tensor]:
        """The parameters as they were when the Pruner was made, by name (the Pruner's own
        tensors: read them, do not modify them)."""
        return dict(self._history.original.weights)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}, {len(self.layers)} prunable layers, "
                f"sparsity {self._overall(self._masks.sparsity(self.layers)):.1%}{', closed' if self.closed else ''})")

