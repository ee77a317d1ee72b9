"""Language models: outputs per token, scored per token.

A model whose outputs are shaped ``[batch, tokens, vocabulary]`` with integer labels shaped
``[batch, tokens]`` is scored token by token: accuracy is the fraction of labelled tokens whose
top-1 prediction is the label, the loss is the mean cross-entropy over them, and
``Metrics.perplexity`` is its exponential. Labels of ``-100`` (:data:`IGNORE`) are not scored, as
in Hugging Face.

A causal language model is told by its labels: labels equal to the token inputs (``input_ids``,
or the input tensor itself) wherever they are not -100, the Hugging Face convention
``labels=input_ids``. Its labels are then shifted once, when the data is read
(:func:`next_token_targets`): the target at position t is the token at t + 1, and the last position
is ignored. So ``logits[:, :-1]`` are scored against ``labels[:, 1:]`` exactly as the model's own
``loss`` does, and ``exp(out.loss)`` equals the perplexity. Other token labels (token
classification, masked LM labels) are scored where they stand.

Example:
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> next_token_targets(ids).tolist()
    [[6, 7, -100]]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def is_token_task(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether ``outputs`` ``[batch, tokens, vocab]`` and integer ``targets`` ``[batch, tokens]``
    are scored per token.

    Example:
        >>> is_token_task(torch.zeros(2, 5, 10), torch.zeros(2, 5, dtype=torch.long))
        True
    """
    return (isinstance(outputs, torch.Tensor) and outputs.dim() == 3 and targets.dim() == 2
            and not targets.dtype.is_floating_point and not targets.is_complex() and targets.dtype != torch.bool
            and tuple(outputs.shape[:2]) == tuple(targets.shape))


def is_causal(token_ids, labels: torch.Tensor) -> bool:
    """Whether ``labels`` are the token inputs themselves (a causal LM's ``labels=input_ids``):
    same shape, 2-D integers, equal wherever the label is not -100, and at least one label.

    Args:
        token_ids: the input ids (a tensor), or None when the inputs have none.
        labels: the labels.

    Example:
        >>> is_causal(torch.tensor([[1, 2]]), torch.tensor([[1, -100]]))
        True
    """
    if not isinstance(token_ids, torch.Tensor) or token_ids.shape != labels.shape or labels.dim() != 2:
        return False
    if token_ids.dtype.is_floating_point or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        return False
    kept = labels != IGNORE
    return bool(kept.any()) and bool((labels[kept] == token_ids.to(labels.device)[kept]).all())


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Causal LM labels shifted as Hugging Face shifts them: position t's target is the label at
    t + 1; the last position gets -100 (not scored).

    Example:
        >>> next_token_targets(torch.tensor([[1, 2, 3]])).tolist()
        [[2, 3, -100]]
    """
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], 1)


def token_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens (labels -100 ignored): the default loss of a
    token model, and the one its perplexity is the exponential of.

    Example:
        >>> float(token_cross_entropy(torch.zeros(1, 2, 4), torch.tensor([[1, -100]])))  # log(4)
        1.3862943649291992
    """
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE)


def token_scores(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float, int, int]:
    """``(accuracy, mean cross-entropy, correct tokens, labelled tokens)`` over the labelled
    tokens (those not -100).

    Raises:
        ValueError: when no token is labelled.

    Example:
        >>> token_scores(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), torch.tensor([[1, 1]]))[::2]
        (0.5, 1)
    """
    kept = targets != IGNORE
    count = int(kept.sum())
    if count == 0:
        raise ValueError("every token label is -100 (ignored), so there is nothing to score: give the "
                         "evaluation data some labelled tokens.")
    correct = int((outputs.argmax(-1)[kept] == targets[kept]).sum())
    loss = float(token_cross_entropy(outputs, targets))
    return correct / count, loss, correct, count
