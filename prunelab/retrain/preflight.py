"""What a training run checks before it trains: everything that can be known up front, so a run
that starts does not stop on a mistake one could see before it.

Two parts, in this order, both in ``prepare`` of the jobs: :func:`preflight` on the Pruner (data,
loss, trainable parameters, batches, class targets; nothing is copied or changed), then
:func:`rehearse` on the private copy just taken (one forward of two samples through the loss, and
the optimizer built), which leaves the copy's flags and buffers as they were.

Example:
    >>> batches = preflight(pruner, batch_size=32)              # doctest: +SKIP
    >>> copy = PrunerCopy.of(pruner)                            # doctest: +SKIP
    >>> rehearse(copy, FinetuneSettings())                      # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.copies import PrunerCopy
from ..core.data import first_samples
from ..core.inputs import forward
from .batches import Batches
from ..core.modes import untouched
from .loop import check_scalar_loss, make_optimizer
from .settings import TrainingSettings, require_training


def check_trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that train (``requires_grad``), or a ValueError when there are none.

    Example:
        >>> check_trainable(nn.Linear(2, 2).requires_grad_(False))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: every parameter of the model has requires_grad=False, ...
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("every parameter of the model has requires_grad=False, so training has nothing to train. "
                         "Unfreeze what should train first: model.requires_grad_(True), or "
                         "layer.requires_grad_(True) for the layers to fine-tune.")
    return trainable


def preflight(pruner, batch_size: int) -> Batches:
    """On the Pruner's thread, before anything is copied: check what training needs and make the
    batches (their class targets checked: all at once for tensors, else batch by batch).

    Args:
        pruner: a BasePruner.
        batch_size: the training batch size.

    Returns:
        The :class:`~prunelab.retrain.batches.Batches` to train on.

    Raises:
        ValueError, TypeError: no train_data or loss, nothing trainable, a stream, a bad batch
            size, class targets out of range. Nothing has changed then.
    """
    require_training(pruner.train_data, pruner.loss)
    check_trainable(pruner.model)
    return Batches(pruner.train_data, batch_size, pruner.device, pruner.seed, classes=pruner.classes,
                   label_key=pruner.label_key)


def rehearse(copy: PrunerCopy, settings: TrainingSettings) -> None:
    """On the private copy, before training: the loss on two training samples (in eval mode, under
    autograd) must be a scalar with a gradient, and the optimizer must build. (Whether it stays
    finite is checked at every batch: that can depend on the learning rate.) The copy's
    flags and buffers come back as they were.

    Args:
        copy: the :class:`~prunelab.core.copies.PrunerCopy` the run will train.
        settings: the run's :class:`~prunelab.retrain.settings.TrainingSettings`.

    Raises:
        TypeError, ValueError: as :func:`prunelab.retrain.loop.check_scalar_loss` and
            :func:`prunelab.retrain.loop.make_optimizer` raise them.
    """
    model = copy.model
    device = next(model.parameters()).device
    x, y = first_samples(copy.train_data, 2, "train_data", device=device, label_key=copy.label_key)
    with untouched(model), torch.enable_grad():
        check_scalar_loss(copy.loss(forward(model, x, copy.output), y))
        model.zero_grad(set_to_none=True)
    make_optimizer(settings.optimizer, check_trainable(model), settings.lr)
