"""Folding eval-mode BatchNorm into the convolution or linear layer before it, a standard
deployment step: ``bn(conv(x))`` becomes ``conv'(x)`` with ``w' = w * s`` and
``b' = (b - mean) * s + beta`` per output channel, where ``s = gamma / sqrt(var + eps)``. The
BatchNorm is replaced by ``nn.Identity``, so each fold removes one operation (and its pass over
the activations) from every forward.

A BatchNorm is folded only when the traced graph shows it reads the output of a Conv1d/2d/3d or
Linear that nothing else reads, each module is called once, the channel counts match and the
BatchNorm has running statistics. :func:`fold_batchnorms` checks the folded network against the
unfolded one and folds nothing when they differ beyond the tolerance given.

The structured export records the folds (``[[batchnorm, into], ...]``), and
:func:`refold` makes a fresh instance of the model take the same shape when it is loaded back.
Its other deployment step, :func:`channels_last`, stores convolution weights in the layout
oneDNN's CPU kernels compute in.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import fx, nn

from ..core.tracing import symbolic_trace

FOLDS_INTO = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``[(batchnorm name, conv or linear name), ...]`` that :func:`fold_batchnorms` would fold.

    Args:
        model: the model (traced with torch.fx; an untraceable model has no pairs).

    Returns:
        The pairs, in graph order.

    Example:
        >>> foldable_pairs(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval())
        [('1', '0')]
    """
    try:
        graph = symbolic_trace(model).graph
    except Exception:
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    owners: dict[int, int] = {}
    for m in modules.values():
        if isinstance(getattr(m, "weight", None), torch.Tensor):
            owners[id(m.weight)] = owners.get(id(m.weight), 0) + 1
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if type(bn) not in BATCHNORMS or bn.training or bn.running_mean is None or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer = modules.get(src.target)
        if type(layer) not in FOLDS_INTO or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        if layer.weight.shape[0] != bn.num_features or owners.get(id(layer.weight), 0) != 1:
            continue
        if isinstance(layer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
            continue
        pairs.append((node.target, src.target))
    return pairs


@torch.no_grad()
def fold_one(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn``'s eval-mode transform into ``layer``'s weight and bias, in place (a bias is
    added when the layer had none).

    Example:
        >>> conv, bn = nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2).eval()
        >>> fold_one(conv, bn); conv.bias.shape
        torch.Size([2])
    """
    w = layer.weight
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    bias = layer.bias.double() * scale + shift if layer.bias is not None else shift
    w.copy_((w.double() * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(bias.to(w.dtype), requires_grad=w.requires_grad)
    else:
        layer.bias.copy_(bias.to(layer.bias.dtype))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def fold_batchnorms(model: nn.Module, same: Callable[[nn.Module], bool]) -> tuple[nn.Module, list[list[str]]]:
    """Fold every foldable eval-mode BatchNorm of ``model`` into the layer before it.

    Args:
        model: the network (eval mode); it is not modified.
        same: ``same(folded) -> bool``: whether the folded network still gives ``model``'s
            outputs (the caller's check and tolerance); when not, nothing is folded.

    Returns:
        ``(network, folds)``: a folded copy and ``[[batchnorm name, into name], ...]``, or
        ``(model, [])`` when nothing could be folded (or folding changed the outputs).

    Example:
        >>> small, folds = fold_batchnorms(net.eval(), lambda m: torch.allclose(m(x), net(x), atol=1e-5))
    """
    pairs = foldable_pairs(model)
    if not pairs:
        return model, []
    folded = copy.deepcopy(model)
    for bn_name, layer_name in pairs:
        fold_one(folded.get_submodule(layer_name), folded.get_submodule(bn_name))
        _replace(folded, bn_name, nn.Identity())
    if not same(folded):
        return model, []
    return folded, [[b, l] for b, l in pairs]


def refold(model: nn.Module, folds: list, shapes: dict[str, torch.Size]) -> None:
    """Give a fresh instance of the exported class the shape of a folded export, in place: each
    folded BatchNorm becomes ``nn.Identity`` and each layer it went into gets a bias (of the
    shape stored) if it had none. The weights are loaded after.

    Args:
        model: the fresh instance (already resized to the exported shapes).
        folds: ``[[batchnorm name, into name], ...]`` as the export recorded them.
        shapes: the stored tensors' shapes by state-dict key.

    Raises:
        ValueError: a fold names a module the model lacks, or is not a ``[name, name]`` pair.

    Example:
        >>> refold(fresh, [["1", "0"]], {"0.bias": torch.Size([2])})   # doctest: +SKIP
    """
    named = dict(model.named_modules())
    for fold in folds:
        if not (isinstance(fold, list) and len(fold) == 2 and all(isinstance(n, str) and n in named for n in fold)):
            raise ValueError(f"the export folded BatchNorm {fold!r}, which this {type(model).__name__} cannot take: "
                             "pass a fresh instance of the exported class, or export again.")
    for bn_name, layer_name in folds:
        layer = named[layer_name]
        if getattr(layer, "bias", None) is None:
            shape = shapes.get(f"{layer_name}.bias")
            if shape is None:
                raise ValueError(f"the export folded {bn_name!r} into {layer_name!r} but stored no bias for it: "
                                 "the file is damaged. Export it again.")
            layer.bias = nn.Parameter(torch.empty(shape, dtype=layer.weight.dtype, device=layer.weight.device))
        _replace(model, bn_name, nn.Identity())


def channels_last(model: nn.Module, same: Callable[[nn.Module], bool]) -> tuple[nn.Module, bool]:
    """``model`` with its 4-d parameters and buffers stored channels-last (a copy), and True; or
    ``model`` as it is and False when it has no 2-d convolution or ``same(copy)`` is False (its
    outputs moved). Convolutions run in the layout of their input or weight, so the activations
    follow the weights from the first convolution on."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model, False
    moved = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return (moved, True) if same(moved) else (model, False)
