"""What a retraining run does: keyword-only settings with every default written once, and their checks.

:func:`prunelab.retrain.finetune`, :func:`prunelab.retrain.iterate`, the Pruner's methods and the
explorer's Fine-tune panel all read their defaults from :class:`FinetuneSettings` and
:class:`IterateSettings` (a field's default is also the class attribute: ``FinetuneSettings.epochs``).
Each ``check()`` raises before anything is copied or trained, naming the bad value and what to do.

Example:
    >>> FinetuneSettings(epochs=2).check()            # fine: returns None
    >>> FinetuneSettings.lr, FinetuneSettings.optimizer, FinetuneSettings.batch_size
    (0.001, 'adam', 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch

from ..core.checks import GRANULARITIES, check_fraction
from .schedule import sparsity_schedule

OPTIMIZERS = ("adam", "adamw", "sgd")

VARIABLE_GRANULARITIES = tuple(g for g in GRANULARITIES if g != "2:4")
"""The granularities whose sparsity can be chosen (2:4 is always one half): those that ``iterate``
schedules and sensitivity curves measure."""


def check_whole(value, what: str, minimum: int = 0) -> None:
    """A ValueError unless ``value`` is a whole number >= ``minimum`` (epochs, steps, batch sizes).

    Example:
        >>> check_whole(2.5, "epochs")
        Traceback (most recent call last):
        ...
        ValueError: epochs must be a whole number >= 0, got 2.5.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be a whole number >= {minimum}, got {value!r}.")


def check_batch_size(batch_size) -> None:
    """A ValueError unless ``batch_size`` is a whole number >= 1."""
    check_whole(batch_size, "batch_size", 1)


def check_optimizer(optimizer, lr) -> None:
    """Raise a clear error for an unusable optimizer or learning rate, before any work starts.

    Args:
        optimizer: one of :data:`OPTIMIZERS`, a torch.optim class, or ``f(params, lr) -> Optimizer``.
        lr: the learning rate, a positive finite number.

    Raises:
        ValueError: for a bad learning rate or an unknown optimizer name.
        TypeError: for an optimizer instance (training runs on a private copy) or something else.

    Example:
        >>> check_optimizer("adam", 1e-3)          # fine: returns None
        >>> check_optimizer("adamm", 1e-3)         # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown optimizer 'adamm': choose one of ['adam', 'adamw', 'sgd'], ...
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a positive number (the learning rate, e.g. 1e-3), got {lr!r}.")
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError("pass the optimizer's class or a function f(params, lr) -> Optimizer, not an optimizer "
                        "instance: training runs on a private copy of the model, with its own parameters.")
    if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {list(OPTIMIZERS)}, or pass a "
                         "torch.optim class or a function f(params, lr) -> Optimizer.")
    if not isinstance(optimizer, str) and not callable(optimizer):
        raise TypeError(f"optimizer must be one of {list(OPTIMIZERS)}, a torch.optim class or a function; "
                        f"got {type(optimizer).__name__}.")


def require_training(train_data, loss) -> Callable:
    """The loss to train with, or a ValueError saying what fine-tuning lacks (data or a loss).

    Args:
        train_data: the Pruner's ``train_data``.
        loss: the Pruner's ``loss``.

    Returns:
        ``loss``.

    Example:
        >>> require_training(None, nn.functional.cross_entropy)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: fine-tuning needs training data: ...
    """
    if train_data is None:
        raise ValueError("fine-tuning needs training data: create the Pruner with train_data=... (a DataLoader, a "
                         "Dataset, or an (inputs, targets) pair of tensors). It never trains on val_data, which "
                         "measures the result.")
    if loss is None:
        raise ValueError("fine-tuning needs a loss: pass loss=f(outputs, targets) -> scalar tensor to the Pruner "
                         "(the default, cross-entropy, applies to class-index targets only).")
    return loss


# ---------------------------------------------------------------------- the settings

@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """What every training run shares: the optimizer, its learning rate, the batch size.

    Args:
        lr: the learning rate (it decays to zero along a cosine over each training run).
        optimizer: "adam", "adamw", "sgd" (momentum 0.9), a torch.optim class, or
            ``f(params, lr) -> Optimizer`` (see :data:`OPTIMIZERS`).
        batch_size: training batch size.
    """

    lr: float = 1e-3
    optimizer: object = "adam"
    batch_size: int = 32

    def check(self) -> None:
        """Raise ValueError/TypeError for an unusable optimizer, learning rate or batch size."""
        check_optimizer(self.optimizer, self.lr)
        check_batch_size(self.batch_size)


@dataclass(frozen=True, kw_only=True)
class FinetuneSettings(TrainingSettings):
    """What ``finetune`` does: ``epochs`` of training with the masks held, and the
    :class:`TrainingSettings` (``lr``, ``optimizer``, ``batch_size``).

    Example:
        >>> FinetuneSettings(epochs=-1).check()
        Traceback (most recent call last):
        ...
        ValueError: epochs must be a whole number >= 0, got -1.
    """

    epochs: int = 5

    def check(self) -> None:
        """Raise ValueError/TypeError for a bad number of epochs or training setting."""
        check_whole(self.epochs, "epochs")
        super().check()


@dataclass(frozen=True, kw_only=True)
class IterateSettings(TrainingSettings):
    """What ``iterate`` does (gradual pruning), checked before anything runs.

    Args:
        target: the sparsity to reach (a fraction of prunable weights; for structured pruning,
            of units), or ``{layer: fraction}``. Required.
        steps: how many prune-and-fine-tune steps.
        epochs_per_step: fine-tuning epochs after each pruning step.
        schedule: "agp" (Zhu & Gupta's cubic), "linear", or "constant" (see
            :func:`prunelab.retrain.sparsity_schedule`).
        criterion, granularity: None: those in effect when all layers agree, else "magnitude"
            and "unstructured" (see :meth:`resolved`).
        regrow: a fraction in [0, 1) of the kept weights swapped at every step for the pruned
            ones with the largest gradients (RigL). Unstructured only.
        final_epochs: more fine-tuning after the last step.
        recalibrate: after each step's fine-tuning, re-estimate the running statistics of every
            BatchNorm on the training data (they stay frozen while training, so without this they
            still describe the weights before it); they come back with the step.
        lr, optimizer, batch_size: of the fine-tuning (:class:`TrainingSettings`).

    Example:
        >>> s = IterateSettings(target=0.9, steps=3, epochs_per_step=1, final_epochs=2)
        >>> s.total_epochs
        5
    """

    target: float | Mapping[str, float]
    steps: int = 10
    epochs_per_step: int = 4
    schedule: str = "agp"
    criterion: object = None
    granularity: str | None = None
    regrow: float = 0.0
    final_epochs: int = 10
    recalibrate: bool = True

    @property
    def total_epochs(self) -> int:
        """Epochs of training over the whole run."""
        return self.steps * self.epochs_per_step + self.final_epochs

    def resolved(self, pruner) -> "IterateSettings":
        """These settings with ``criterion`` and ``granularity`` filled in from ``pruner``'s plans
        when None (see :func:`resolve_defaults`)."""
        criterion, granularity = resolve_defaults(pruner, self.criterion, self.granularity)
        return replace(self, criterion=criterion, granularity=granularity)

    def check(self, layer_names: list[str] | None = None) -> None:
        """Raise ValueError/TypeError for anything ``iterate`` cannot do.

        Args:
            layer_names: the Pruner's prunable layers, to check a per-layer target's names.
        """
        if isinstance(self.target, Mapping):
            unknown = [n for n in self.target if layer_names is not None and n not in layer_names]
            if unknown:
                raise ValueError(f"unknown layers {unknown} in target; prunable layers: {layer_names}.")
            for v in self.target.values():
                check_fraction(v)
        else:
            check_fraction(self.target)
        sparsity_schedule(0.0, 0.5, self.steps, self.schedule)
        for what in ("epochs_per_step", "final_epochs"):
            check_whole(getattr(self, what), what)
        if self.granularity is not None and self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}: choose one of {list(GRANULARITIES)}.")
        if self.granularity is not None and self.granularity not in VARIABLE_GRANULARITIES:
            raise ValueError("2:4 sparsity is always one half, so there is nothing to schedule: use "
                             "prune(0.5, granularity='2:4') and then finetune().")
        if isinstance(self.regrow, bool) or not isinstance(self.regrow, (int, float)) or not 0 <= self.regrow < 1:
            raise ValueError(f"regrow must be a fraction in [0, 1) of the pruned weights to regrow per step, "
                             f"got {self.regrow!r}.")
        if not isinstance(self.recalibrate, bool):
            raise ValueError(f"recalibrate must be True or False, got {self.recalibrate!r}.")
        if self.regrow and self.granularity != "unstructured":
            raise ValueError("regrow works with unstructured pruning (it swaps single weights); use "
                             "granularity='unstructured' or regrow=0.")
        super().check()


def resolve_defaults(pruner, criterion=None, granularity: str | None = None) -> tuple[object, str]:
    """The criterion and granularity to prune with: those given, else those of the pruning in
    effect (when all layers agree), else "magnitude" and "unstructured".

    Args:
        pruner: a BasePruner.
        criterion, granularity: given values win; None asks the Pruner.

    Returns:
        ``(criterion, granularity)``; the granularity is never "2:4" unless given.

    Example:
        >>> resolve_defaults(pruner)                  # doctest: +SKIP   (nothing pruned yet)
        ('magnitude', 'unstructured')
    """
    plans = list(pruner.plans.values())
    if criterion is None:
        names = {p.criterion for p in plans}
        criterion = names.pop() if len(names) == 1 else "magnitude"
    if granularity is None:
        kinds = {p.granularity for p in plans}
        granularity = kinds.pop() if len(kinds) == 1 and kinds <= set(VARIABLE_GRANULARITIES) else "unstructured"
    return criterion, granularity
