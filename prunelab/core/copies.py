"""Private copies of a model, for work away from the Pruner's own (background threads, executors).

The Pruner's model belongs to the Pruner and changes in place with every move, on the thread
that owns it (the kernel's main thread in the explorer). Work that runs elsewhere never touches
it: it runs on a copy made here, once, and fed with tensors taken where the Pruner lives.

- :func:`model_state`: the model's parameters and buffers as they are now (cheap: tensors only).
- :class:`ModelCopy`: a deep copy of the model that loads such states (or weights with masks).
- :class:`PrunerCopy`: what a workflow needs from a Pruner (a :class:`ModelCopy` holding the
  unmasked weights, the plans, masks, data and options), and an independent Pruner over it.

Example:
    >>> state = model_state(pruner.model)              # doctest: +SKIP   (the Pruner's thread)
    >>> copy = ModelCopy(pruner.model)                 # doctest: +SKIP
    >>> copy.load(state)(pruner.val_inputs[:4])        # doctest: +SKIP   (any thread)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from .base import BasePruner
from .layers import find_layers

State = dict[str, torch.Tensor]
"""Parameter name -> tensor, and ``"buffer:" + buffer name`` -> tensor (see :func:`model_state`)."""

BUFFER_PREFIX = "buffer:"


def model_state(model: nn.Module) -> State:
    """A copy of ``model``'s parameters and buffers as they are now.

    Args:
        model: any nn.Module.

    Returns:
        ``{parameter name: tensor}`` plus ``{"buffer:" + buffer name: tensor}``, all cloned and
        detached, so later changes to the model do not reach them.

    Example:
        >>> state = model_state(nn.Linear(2, 3))
        >>> sorted(state)
        ['bias', 'weight']
    """
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"{BUFFER_PREFIX}{n}": b.detach().clone() for n, b in model.named_buffers()})
    return state


class ModelCopy:
    """A private deep copy of a model, for one worker (a thread, a task) at a time.

    Args:
        model: the model to copy (as it is now: masked weights stay masked until a state is loaded).

    Raises:
        RuntimeError: when the model cannot be deep-copied, saying so.

    Attributes:
        model: the copy (an ordinary module).
        layers: its prunable layers (:func:`prunelab.core.layers.find_layers`), on the copy's modules.

    Example:
        >>> copy = ModelCopy(nn.Sequential(nn.Linear(2, 3)))
        >>> w = {"0.weight": torch.ones(3, 2), "0.bias": torch.zeros(3)}
        >>> out = copy.load_masked(w, {"0.weight": torch.eye(3, 2, dtype=torch.bool)})(torch.ones(1, 2))
        >>> out.tolist()
        [[1.0, 1.0, 0.0]]
    """

    def __init__(self, model: nn.Module):
        try:
            self.model = copy.deepcopy(model)
        except Exception as e:
            raise RuntimeError(f"the model cannot be copied ({e}), so this work cannot run on a private copy "
                               "in the background") from None
        self.layers, _ = find_layers(self.model)
        self.params = dict(self.model.named_parameters())
        self.buffers = dict(self.model.named_buffers())

    def load(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """Copy ``state`` into the copy's parameters (all of them) and buffers (those present).

        Args:
            state: as :func:`model_state` returns, e.g. taken on the Pruner's thread.

        Returns:
            The copy, in eval mode.
        """
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n])
            for n, b in self.buffers.items():
                if f"{BUFFER_PREFIX}{n}" in state:
                    b.copy_(state[f"{BUFFER_PREFIX}{n}"])
        self.model.eval()
        return self.model

    def load_masked(self, weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> nn.Module:
        """Load ``weights`` (parameter name -> tensor, every parameter), each multiplied by its
        keep-mask in ``masks`` where it has one (as the Pruner writes ``base * mask``).

        Args:
            weights: the unmasked weights.
            masks: parameter name -> bool keep-mask (True = kept); parameters absent stay dense.

        Returns:
            The copy, in eval mode.
        """
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(weights[n] if n not in masks else weights[n] * masks[n].to(p.device))
        self.model.eval()
        return self.model


@dataclass
class PrunerCopy:
    """What a workflow needs from a Pruner, taken on the Pruner's thread, for work on any other.

    Attributes:
        model: a private copy of the model holding the Pruner's unmasked weights.
        plans: the Pruner's plans (``{layer: Plan}``) when the copy was taken.
        masks: its effective keep-masks (parameter name -> bool tensor).
        layer_names: its prunable layers.
        val: the evaluation ``(inputs, targets)``.
        train_data: its training data (or None).
        options: ``metric``, ``loss``, ``batch_size``, ``seed``: what a Pruner over the copy takes.

    Example:
        >>> copy = PrunerCopy.of(pruner)      # doctest: +SKIP   (the Pruner's thread)
        >>> twin = copy.pruner()              # doctest: +SKIP   (any thread: a Pruner of its own)
        >>> twin.prune(0.5); twin.evaluate()  # doctest: +SKIP   (the original Pruner is untouched)
    """

    model: nn.Module
    plans: dict
    masks: dict[str, torch.Tensor]
    layer_names: list[str]
    val: tuple[torch.Tensor, torch.Tensor]
    train_data: object
    options: dict = field(default_factory=dict)

    @classmethod
    def of(cls, pruner: BasePruner) -> "PrunerCopy":
        """Copy ``pruner``'s model with its unmasked weights, and take its plans, masks and data.

        Args:
            pruner: a BasePruner (or Pruner), on its own thread.

        Returns:
            A PrunerCopy independent of the Pruner's later moves. The Pruner's model is only read
            (not even its weights are swapped, so an interrupt here cannot leave it changed); the
            copy keeps each module's own train/eval flag and the model's buffers.
        """
        copy = ModelCopy(pruner.model)
        unmasked = pruner.history.current.weights
        with torch.no_grad():
            for n, p in copy.params.items():
                p.copy_(unmasked[n])
        model = copy.model
        return cls(model, pruner.plans, pruner.masks(), pruner.layer_names, (pruner.val_inputs, pruner.val_targets),
                   pruner.train_data, dict(metric=pruner.metric, loss=pruner.loss, batch_size=pruner.batch_size,
                                           seed=pruner.seed, output=pruner.output, label_key=pruner.label_key))

    @property
    def loss(self):
        """The Pruner's training loss (None when it has none)."""
        return self.options["loss"]

    @property
    def seed(self) -> int:
        return self.options["seed"]

    @property
    def output(self):
        """The Pruner's output selector (:func:`~prunelab.core.inputs.forward`)."""
        return self.options.get("output")

    @property
    def label_key(self) -> str:
        return self.options.get("label_key", "labels")

    def all_plans(self, plans: Mapping | None = None) -> dict:
        """Plans for every layer (None = dense), so applying them also clears layers pruned since.

        Args:
            plans: ``{layer: Plan}``; default: the plans taken with the copy.

        Returns:
            ``{layer: Plan or None}`` over all of :attr:`layer_names`, for ``set_plans``.
        """
        plans = self.plans if plans is None else plans
        return {n: plans.get(n) for n in self.layer_names}

    def pruner(self) -> BasePruner:
        """An independent Pruner over the copy, in the copied state (its history starts there).

        Returns:
            A BasePruner owning :attr:`model`; make one per worker, and use it on that worker only.
        """
        twin = BasePruner(self.model, self.val, train_data=self.train_data, **self.options)
        if self.plans:
            twin.set_plans(self.plans)
        return twin
