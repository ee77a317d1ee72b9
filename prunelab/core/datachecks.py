"""Checks of the data against the model, each written once: the inputs run through the model
(and say why not when they do not), the targets fit its outputs, the inputs are finite, and a
user's loss returns a scalar. Value checks (fractions, counts, names) are in :mod:`.checks`.
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import LOSS_FIX, check_count, check_real
from .data import LABEL_KEY, check_class_targets, first_samples, materialize, take
from .inputs import Inputs, call, forward, select_output
from .modes import untouched
from .tokens import is_token_task, token_cross_entropy

CHECK_BYTES = 64 * 2**20  # inputs checked for NaN and inf this many bytes at a time


def forward_check(model: nn.Module, x, what: str, dtype: torch.dtype | None = None, output=None):
    """The model's output tensor on the first two of ``x`` in eval mode (every module's mode and
    every buffer restored after, see :func:`~prunelab.core.modes.untouched`), or a
    ValueError saying why ``what`` does not fit the model (a TypeError when no output tensor can
    be selected, see :func:`~prunelab.core.inputs.select_output`).

    Args:
        model: the model.
        x: a batch of inputs (a tensor, or Inputs for keyword inputs).
        what: the data's name for the message ("val_data", "train_data").
        dtype: the dtype the message says the model expects (default: its first parameter's).
        output: the output selector (None: a tensor, a ModelOutput's logits, a tuple's first).

    Returns:
        The selected output on ``x[:2]``.

    Example:
        >>> forward_check(torch.nn.Linear(4, 2), torch.zeros(3, 4), "val_data").shape
        torch.Size([2, 2])
    """
    try:
        with untouched(model), torch.no_grad():
            out = call(model, x[:2])
    except Exception as e:
        if dtype is None:
            dtype = next((p.dtype for p in model.parameters()), None)
        given = (f"keyword inputs {x.describe()}" if isinstance(x, Inputs)
                 else f"a batch of inputs shaped {tuple(x.shape[1:])} ({x.dtype}, on {x.device})")
        raise ValueError(
            f"{what} does not fit the model: {given} failed in {type(model).__name__}.forward with: {e}. "
            "Check the inputs the model expects (their names, for a dict), their shape, and that "
            f"floating inputs have the model's dtype ({dtype})."
        ) from None
    return select_output(out, output)


def check_fit(model: nn.Module, x, y: torch.Tensor, metric, dtype: torch.dtype | None = None, output=None) -> int:
    """Check that labelled data fits the model, and whether it is classification.

    Args:
        model: the model.
        x, y: inputs and targets.
        metric: the user's metric, or None for top-1 accuracy (then targets must be class indices,
            or token labels ``[batch, tokens]`` for outputs ``[batch, tokens, vocab]``).
        dtype, output: as for :func:`forward_check`.

    Returns:
        The number of classes (the model's outputs; the vocabulary for token outputs) when the
        targets are class indices or token labels, else 0.

    Example:
        >>> check_fit(torch.nn.Linear(4, 3), torch.zeros(5, 4), torch.zeros(5, dtype=torch.long), None)
        3
    """
    out = forward_check(model, x, "val_data", dtype, output)
    is_class = (not y.dtype.is_floating_point and not y.is_complex() and y.dim() == 1
                and out.dim() == 2 and y.dtype != torch.bool)
    if is_class or is_token_task(out, y[:2]):
        check_class_targets(y, int(out.shape[-1]), "val_data")
        return int(out.shape[-1])
    if metric is None:
        raise ValueError(
            f"targets of dtype {y.dtype} and shape {tuple(y.shape)} are not class indices (a 1-D integer "
            "tensor), so accuracy is undefined. Pass metric=f(outputs, targets) -> float (and loss= for "
            "taylor scoring and fine-tuning)."
        )
    return 0


def check_finite_inputs(x, what: str) -> None:
    """A ValueError when floating-point inputs ``x`` hold NaN or inf, with the count of bad rows:
    such rows give NaN outputs, whose argmax counts as class 0, so the accuracy would be wrong.

    Example:
        >>> check_finite_inputs(torch.zeros(3, 2), "val_data")
    """
    if isinstance(x, Inputs):
        for name, v in x.items():
            check_finite_inputs(v, f"{what} ({name})")
        return
    if not x.is_floating_point() or len(x) == 0:
        return
    # isfinite's temporaries are the size of what it checks (|x| among them): checked in chunks
    # of about 64 MB, the data's memory is not doubled on the way in
    rows = max(1, CHECK_BYTES // max(x[:1].numel() * x.element_size(), 1))
    bad = torch.cat([~torch.isfinite(part).reshape(len(part), -1).all(1) for part in x.split(rows)])
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise ValueError(f"{what} has {int(bad.sum())} of {len(x)} rows with NaN or inf inputs (rows "
                         f"{rows[:5].tolist()}{'...' if len(rows) > 5 else ''}): their outputs would be NaN and count "
                         "as class 0, so every number measured on them would be wrong. Drop or fix those rows.")


def default_loss(classes: int, targets: torch.Tensor):
    """The loss used when the user gives none: cross-entropy for class indices, the token
    cross-entropy (-100 ignored) for token labels, None otherwise.

    Example:
        >>> default_loss(3, torch.zeros(4, dtype=torch.long)).__name__
        'cross_entropy'
    """
    if not classes:
        return None
    return token_cross_entropy if targets.dim() == 2 else nn.functional.cross_entropy


def check_data(model: nn.Module, val_data, train_data=None, *, metric=None, eval_samples: int | None = None,
               device=None, seed: int = 0, dtype: torch.dtype | None = None, loss=None, output=None,
               label_key: str = LABEL_KEY):
    """Validation data as tensors on ``device``, checked against the model (and train_data's
    first samples too, so a misfit fails now rather than at the first scoring).

    Args:
        model: the model.
        val_data, train_data: as the Pruner takes them.
        metric: the user's metric, or None (then the targets must be class indices).
        eval_samples: keep a fixed class-stratified subset of this size (None: all).
        device, seed: where the tensors go; the subset's seed.
        dtype: the model's weight dtype, for messages.
        loss: the user's loss, tried once on two samples (it must return a scalar), or None.
        output: the output selector (:func:`~prunelab.core.inputs.select_output`).
        label_key: where dict batches keep their labels.

    Returns:
        ``(inputs, targets, total samples before the subset, classes)``; classes is 0 when the
        targets are not class indices, and class targets come back as int64.

    Example:
        >>> x, y, total, classes = check_data(model, (inputs, targets))  # doctest: +SKIP
    """
    eval_samples = check_count(eval_samples, "eval_samples", allow_none=True)
    x, y = materialize(val_data, "val_data", label_key=label_key)
    total = len(x)
    x, y = take(x, y, "val_data", max_samples=eval_samples, device=device, seed=seed)
    check_finite_inputs(x, "val_data")
    classes = check_fit(model, x, y, metric, dtype, output)
    if loss is not None:
        with untouched(model), torch.no_grad():
            out = forward(model, x[:2], output)
        try:
            value = loss(out, y[:2].long() if classes else y[:2])
        except Exception as e:
            raise ValueError(f"the loss failed on two validation samples ({type(e).__name__}: {e}); {LOSS_FIX}.") from None
        check_real(value, "the loss", LOSS_FIX)
    if classes and y.dtype != torch.long:  # cross-entropy wants int64 class indices
        y = y.long()
    if train_data is not None:
        forward_check(model, first_samples(train_data, 2, "train_data", device=device, label_key=label_key)[0],
                      "train_data", dtype, output)
    return x, y, total, classes
