"""Which parameters shrink together when structured pruning removes a unit.

A *unit group* is what structured pruning removes as one: output unit ``i`` of a layer together
with every parameter slice that only exists for it (its bias, BatchNorm entries, the input
columns of the layers it feeds, and the same unit of layers coupled to it by a residual
addition). The groups come from torch-pruning's dependency graph, so concatenations, flattening
and depthwise convolutions map indices correctly. Attention projections come from :mod:`.heads`, where a unit is a whole head.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

import torch
from torch import nn

from .heads import Attention, find_attention, head_slices
from .kinds import is_conv1d, tp_pruners
from .layers import PRUNABLE_TYPES, Layer, is_module_weight, param_names
from .modes import untouched

# Modules whose per-channel parameters can be zeroed so that a removed channel outputs exactly 0.
_CHANNEL_AFFINE = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
# torch-pruning's nodes for ops that take some channels of a tensor: its cut maps their indices
# wrongly in some graphs (seen: a split after a concat removed every unit of a convolution).
_SPLITS = {"_SplitOp", "_UnbindOp", "_SliceOp"}


def kinds_in(group) -> set[str]:
    """The type names of what a torch-pruning group's items act on (modules and op nodes)."""
    return {type(item.dep.target.module).__name__ for item in group.items}


@dataclass(frozen=True)
class Slice:
    """Entries ``index`` along ``dim`` of parameter ``param`` belong to root units ``root``."""

    param: str
    dim: int
    index: torch.Tensor
    root: torch.Tensor


@dataclass
class UnitGroup:
    """Units removed together by structured pruning. ``layers`` are the coupled layers whose
    output units these are (one, unless a residual addition ties several). For attention
    (``heads`` set) a unit is a whole head (or key/value group) of each layer's rows."""

    layers: tuple[str, ...]
    units: int
    slices: list[Slice]
    heads: Attention | None = None

    def unit_scores(self, scores) -> torch.Tensor:
        """One score per unit from ``{layer: score per output row}``: each layer's rows of a unit
        averaged (a head's rows), summed over the group's layers."""
        return sum(scores[l].reshape(self.units, -1).mean(1) for l in self.layers)

    @property
    def params(self) -> set[str]:
        return {s.param for s in self.slices}

    def keep_masks(self, keep: torch.Tensor, masks: dict[str, torch.Tensor]) -> None:
        """Clear, in ``masks`` (param name -> bool tensor), every entry of a unit not in ``keep``.
        Parameters absent from ``masks`` are left out."""
        for s in self.slices:
            if s.param not in masks:
                continue
            dropped = s.index[~keep[s.root]]
            if len(dropped):
                masks[s.param].index_fill_(s.dim, dropped, False)


def _not_unit_prunable(layer: Layer) -> str | None:
    """Why structured pruning does not take ``layer`` whatever the graph, or None."""
    if isinstance(layer.module, nn.RNNBase):
        return (f"a recurrent weight ({layer.kind}): a hidden unit spans the rows of every gate in both of a "
                "layer's weights, which prunelab does not remove as one; prune it unstructured or 2:4")
    if isinstance(layer.module, nn.MultiheadAttention):
        return ("MultiheadAttention's packed query/key/value weight: its units are attention heads, which "
                "structured pruning does not remove here; prune it unstructured or 2:4")
    return None


def find_unit_groups(
    model: nn.Module, layers: list[Layer], example_inputs: torch.Tensor, output_transform=None
) -> tuple[dict[str, UnitGroup], dict[str, str]]:
    """Map each structurally prunable layer name to its UnitGroup (coupled layers share one), and
    give a reason for every layer whose units cannot be removed by masking. Attention projections
    come from :mod:`.heads` (a unit is a whole head); the rest from torch-pruning's graph."""
    import torch_pruning as tp  # imported here: building the graph is the only use

    blocked: dict[str, str] = {}
    for layer in layers:
        why = _not_unit_prunable(layer)
        if why:
            blocked[layer.name] = why
    layers = [l for l in layers if l.name not in blocked]
    if not layers:
        return {}, blocked
    names = param_names(model)
    by_module = {l.module: l for l in layers}
    # torch-pruning switches the model to eval mode while tracing and leaves it there: every
    # module's own flag, and every buffer, are restored (modes.untouched).
    try:
        with untouched(model), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False,
                                                          output_transform=output_transform,
                                                          customized_pruners=tp_pruners(model))
    except Exception as e:  # structured pruning is then unavailable, with the reason; never a crash
        reason = _graph_reason(e)
        return {}, {**blocked, **{l.name: reason for l in layers}}

    groups: dict[str, UnitGroup] = {}
    attentions, not_heads = find_attention(model, [l.name for l in layers])  # whole heads: core/heads.py
    blocked.update(not_heads)
    for att in attentions:
        slices = [Slice(*t) for t in head_slices(att, set(names.values()), layers[0].weight.device)]
        groups.update(dict.fromkeys(att.layers, UnitGroup(att.layers, att.units, slices, att)))
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    tied = {i for i, n in owners.items() if n > 1}
    for layer in layers:
        if layer.name in groups or layer.name in blocked:
            continue
        module = layer.module
        if module not in graph.module2node:
            inside = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) and m.out_proj is module]
            blocked[layer.name] = (f"it runs inside {inside[0]}'s fused MultiheadAttention forward, where its units "
                                   "cannot be followed" if inside else "not reached by a forward pass of the model")
            continue
        if _feeds_output(graph.module2node[module]):
            blocked[layer.name] = "its outputs are the model's outputs (removing them changes the output size)"
            continue
        pruner = graph.get_pruner_of_module(module)
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(layer.units)))
        except Exception as e:  # e.g. an index mapping it cannot follow (slicing after a recurrent layer)
            blocked[layer.name] = f"torch-pruning could not follow its units through the graph ({type(e).__name__}: {e})"
            continue
        slices, coupled, reason = [], [], None
        for item in group.items:
            target, handler = item.dep.target.module, item.dep.handler
            out_fn = graph.is_out_channel_pruning_fn(handler)
            idx = torch.as_tensor(item.idxs, dtype=torch.long, device=layer.weight.device)
            root = torch.as_tensor(item.root_idxs, dtype=torch.long, device=layer.weight.device)
            if isinstance(target, nn.MultiheadAttention) or isinstance(target, nn.RNNBase):
                reason = f"its units feed a {type(target).__name__}, which cannot be masked unit by unit"
                break
            if type(target).__name__ == "_ReshapeOp" and kinds_in(group) >= {"_ConcatOp"}:
                reason = ("its units are concatenated with others and the result reshaped (a channel shuffle, "
                          "say): the structured cut does not follow that channel order exactly")
                break
            if type(target).__name__ in _SPLITS:
                reason = ("its units pass through a channel split (torch.split, chunk or a slice), whose "
                          "channel indices the structured cut does not follow exactly")
                break
            if not isinstance(target, nn.Module):
                continue
            if is_conv1d(target):  # weight [in, out]: units are columns, inputs rows
                if out_fn:
                    slices.append(Slice(names[id(target.weight)], 1, idx, root))
                    if target.bias is not None:
                        slices.append(Slice(names[id(target.bias)], 0, idx, root))
                    if target in by_module:
                        coupled.append(by_module[target].name)
                else:
                    slices.append(Slice(names[id(target.weight)], 0, idx, root))
            elif isinstance(target, PRUNABLE_TYPES):
                depthwise = isinstance(target, nn.modules.conv._ConvNd) and target.groups > 1
                if depthwise and target.groups != target.in_channels:
                    reason = f"it feeds a grouped convolution ({names[id(target.weight)]})"
                    break
                if out_fn or depthwise:
                    slices.append(Slice(names[id(target.weight)], 0, idx, root))
                    if target.bias is not None:
                        slices.append(Slice(names[id(target.bias)], 0, idx, root))
                    if out_fn and target in by_module:
                        coupled.append(by_module[target].name)
                else:
                    slices.append(Slice(names[id(target.weight)], 1, idx, root))
            elif isinstance(target, _CHANNEL_AFFINE) and out_fn:
                if getattr(target, "weight", None) is None:
                    reason = f"it feeds a {type(target).__name__} without affine parameters"
                    break
                if isinstance(target, nn.GroupNorm) and target.num_groups != target.num_channels:
                    reason = "it feeds a GroupNorm whose statistics mix channels"
                    break
                if isinstance(target, nn.LayerNorm):  # one mean and variance over all the units
                    reason = (f"its units are normalised together by LayerNorm {names[id(target.weight)][:-7]!r}, "
                              "so removing some would change the others")
                    break
                slices.append(Slice(names[id(target.weight)], 0, idx, root))
                if target.bias is not None:
                    slices.append(Slice(names[id(target.bias)], 0, idx, root))
            elif any(True for _ in target.parameters(recurse=False)):
                reason = _foreign_reason(model, target, out_fn)
                break
        params = dict(model.named_parameters())
        if reason is None and any(id(params[s.param]) in tied for s in slices):
            reason = "a parameter it would shrink is tied to another module (one tensor used twice), whose units " \
                     "would be cut along two axes: prune it unstructured"
        if reason is None and any(int(s.index.max()) >= params[s.param].shape[s.dim] for s in slices if len(s.index)):
            reason = "torch-pruning could not map its channel indices through the graph (a concatenation " \
                     "whose output is flattened, for example)"
        if reason:
            blocked[layer.name] = reason
            continue
        unit_group = UnitGroup(tuple(dict.fromkeys(coupled)), layer.units, slices)
        for name in unit_group.layers:
            groups[name] = unit_group
    return groups, blocked


def _graph_reason(error: Exception) -> str:
    """Why torch-pruning's graph failed, in the model's terms where the failure says which."""
    frames = traceback.extract_tb(error.__traceback__)
    if any("reshape" in f.name for f in frames if "torch_pruning" in f.filename):
        return ("torch-pruning cannot follow channels through a reshape that regroups them (a channel shuffle, "
                "as ShuffleNet's view-transpose-reshape), so no unit of this model can be removed: prune it "
                "'unstructured' or '2:4'")
    return f"torch-pruning could not build the model's dependency graph ({type(error).__name__}: {error})"


def _foreign_reason(model: nn.Module, target: nn.Module, out_fn: bool) -> str:
    """Why a group reaching ``target`` (a module prunelab cannot cut) is blocked: fed by the layer,
    or sharing its units (a residual addition to ``target``'s output, as BERT's embeddings)."""
    name = next((n for n, m in model.named_modules() if m is target), "?")
    what = f"{type(target).__name__} {name!r}"
    if out_fn:
        return (f"its outputs are added (a residual connection) to those of {what}, so its units are that "
                f"module's output features, which prunelab cannot remove")
    return f"it feeds {what}, which prunelab cannot mask unit by unit"


def _feeds_output(node) -> bool:
    """True when a path from this layer reaches the model's output without passing through
    another Linear/Conv (whose input columns would absorb the removal)."""
    stack, seen = list(node.outputs), set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if is_module_weight(n.module):
            continue
        if not n.outputs:
            return True
        stack.extend(n.outputs)
    return not node.outputs
