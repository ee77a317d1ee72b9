"""Regrowth (RigL): swap the smallest kept weights for the pruned ones with the largest gradients.

Used by :func:`prunelab.retrain.iterate` with ``regrow=``; each tensor keeps its sparsity, and the
regrown weights start at zero, where the next fine-tuning trains them.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import nn

from ..core.inputs import forward
from .loop import Batches, training_mode


def dense_gradients(model: nn.Module, batches: Batches, loss: Callable,
                    max_batches: int = 8, output=None) -> dict[str, torch.Tensor]:
    """Gradient of the loss for every weight, pruned ones included (at the current sparse
    weights), summed over the first ``max_batches`` batches: what RigL grows by.

    Args:
        model: the (private) model, with its pruned weights at zero.
        batches: training batches.
        loss: ``f(outputs, targets) -> scalar tensor``.
        max_batches: how many batches to sum over.
        output: the Pruner's output selector (:func:`prunelab.core.inputs.forward`).

    Returns:
        Parameter name -> summed gradient (the model's gradients are cleared after).

    Example:
        >>> data = Batches((torch.randn(8, 3), torch.randint(0, 2, (8,))), 4, "cpu")
        >>> sorted(dense_gradients(nn.Linear(3, 2), data, nn.functional.cross_entropy))
        ['bias', 'weight']
    """
    grads: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    with training_mode(model):
        for i, (x, y) in enumerate(batches):
            if i >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            loss(forward(model, x, output), y).backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] = grads[n] + p.grad if n in grads else p.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return grads


def regrow_masks(keep: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor],
                 grads: Mapping[str, torch.Tensor], fraction: float) -> tuple[dict[str, torch.Tensor], int]:
    """RigL's swap, per weight tensor: prune the ``fraction`` of the kept entries with the
    smallest magnitude and regrow as many pruned entries, those with the largest gradient
    magnitude (at zero), so each tensor keeps its sparsity. The fraction counts kept entries (as
    RigL's drop fraction does): at 95% sparsity a fraction of the pruned ones would exceed all
    the kept ones.

    Args:
        keep: parameter name -> keep-mask now.
        weights: parameter name -> current weights (magnitudes rank the kept entries).
        grads: parameter name -> dense gradient (magnitudes rank the pruned entries); a tensor
            without one (a frozen parameter, which would never train what regrows) is left as it is.
        fraction: of the kept entries to swap, in [0, 1).

    Returns:
        ``(new keep-masks of the tensors that changed, how many entries were regrown)``.

    Example:
        >>> keep = torch.tensor([True, True, False, False])
        >>> new, grown = regrow_masks({"w": keep}, {"w": torch.tensor([0.1, 0.9, 0.0, 0.0])},
        ...                           {"w": torch.tensor([0.0, 0.0, 0.2, 5.0])}, 0.5)
        >>> new["w"].tolist(), grown
        ([False, True, False, True], 1)
    """
    out, grown = {}, 0
    for n, k in keep.items():
        if n not in grads:
            continue
        n_swap = min(int(round(fraction * int(k.sum()))), int((~k).sum()))
        if n_swap == 0:
            continue
        g = grads[n].abs().flatten().clone()
        g[k.flatten()] = -math.inf
        grow = torch.topk(g, n_swap).indices
        w = weights[n].abs().flatten().clone()
        w[~k.flatten()] = math.inf
        drop = torch.topk(w, n_swap, largest=False).indices
        new = k.flatten().clone()
        new[drop] = False
        new[grow] = True
        out[n] = new.reshape(k.shape)
        grown += n_swap
    return out, grown
