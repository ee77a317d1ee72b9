"""Finding the prunable layers of a model, and the groups of parameters that must shrink together.

A *layer* is a module whose ``weight`` prunelab masks: Linear and Conv1d/2d/3d (subclasses
included, such as MultiheadAttention's ``out_proj``). Anything else with parameters is left
alone and, where a user might expect it to be pruned, listed in ``skipped`` with the reason.

A *unit group* is what structured pruning removes as one: output unit ``i`` of a layer together
with every parameter slice that only exists for it (its bias, BatchNorm entries, the input
columns of the layers it feeds, and the same unit of layers coupled to it by a residual
addition). The groups come from torch-pruning's dependency graph, so concatenations, flattening
and depthwise convolutions map indices correctly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .modes import untouched

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Modules whose per-channel parameters can be zeroed so that a removed channel outputs exactly 0.
_CHANNEL_AFFINE = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class Layer:
    """A prunable layer: ``name`` is its qualified module name, ``params`` its weight count."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    module: nn.Module = field(repr=False, compare=False)

    @property
    def units(self) -> int:
        """Output units (Linear) or filters (Conv)."""
        return self.shape[0]

    @property
    def weight_name(self) -> str:
        """The weight's name in ``model.named_parameters()`` (the root module's is ``"weight"``)."""
        return f"{self.name}.weight" if self.name else "weight"

    def describe(self) -> str:
        return f"{self.name} ({self.kind} {'x'.join(map(str, self.shape))}, {self.params:,} weights)"


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
    output units these are (one, unless a residual addition ties several)."""

    layers: tuple[str, ...]
    units: int
    slices: list[Slice]

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


def find_layers(model: nn.Module) -> tuple[list[Layer], dict[str, str]]:
    """Prunable layers in module order, and ``{name: reason}`` for parameters that are not pruned."""
    layers, skipped = [], {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            weight = module.weight
            if isinstance(weight, nn.parameter.UninitializedParameter):
                skipped[name] = "lazy layer not initialised yet: run one forward pass first"
                continue
            layers.append(Layer(name, type(module).__name__, tuple(weight.shape), weight.numel(), module))
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            skipped[f"{name}.in_proj_weight" if name else "in_proj_weight"] = (
                "MultiheadAttention packs query, key and value into one tensor; "
                "its out_proj is pruned as a Linear layer"
            )
        elif isinstance(module, (nn.RNNBase, nn.Embedding, nn.EmbeddingBag)):
            skipped[name] = f"{type(module).__name__} weights are not pruned (only Linear and Conv layers)"
    return layers, skipped


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def find_unit_groups(
    model: nn.Module, layers: list[Layer], example_inputs: torch.Tensor
) -> tuple[dict[str, UnitGroup], dict[str, str]]:
    """Map each structurally prunable layer name to its UnitGroup (coupled layers share one), and
    give a reason for every layer whose units cannot be removed by masking."""
    import torch_pruning as tp  # imported here: building the graph is the only use

    names = _param_names(model)
    by_module = {l.module: l for l in layers}
    # torch-pruning switches the model to eval mode while tracing and leaves it there: every
    # module's own flag, and every buffer, are restored (modes.untouched).
    try:
        with untouched(model), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    except Exception as e:  # structured pruning is then unavailable, with the reason; never a crash
        reason = f"torch-pruning could not build the model's dependency graph ({type(e).__name__}: {e})"
        return {}, {l.name: reason for l in layers}

    groups: dict[str, UnitGroup] = {}
    blocked: dict[str, str] = {}
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
            idx = torch.as_tensor(item.idxs, dtype=torch.long, device=layer.module.weight.device)
            root = torch.as_tensor(item.root_idxs, dtype=torch.long, device=layer.module.weight.device)
            if isinstance(target, nn.MultiheadAttention) or isinstance(target, nn.RNNBase):
                reason = f"its units feed a {type(target).__name__}, which cannot be masked unit by unit"
                break
            if not isinstance(target, nn.Module):
                continue
            if isinstance(target, PRUNABLE_TYPES):
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
                slices.append(Slice(names[id(target.weight)], 0, idx, root))
                if target.bias is not None:
                    slices.append(Slice(names[id(target.bias)], 0, idx, root))
            elif any(True for _ in target.parameters(recurse=False)):
                reason = f"it feeds a {type(target).__name__}, which prunelab cannot mask unit by unit"
                break
        params = dict(model.named_parameters())
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


def _feeds_output(node) -> bool:
    """True when a path from this layer reaches the model's output without passing through
    another Linear/Conv (whose input columns would absorb the removal)."""
    stack, seen = list(node.outputs), set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n.module, PRUNABLE_TYPES):
            continue
        if not n.outputs:
            return True
        stack.extend(n.outputs)
    return not node.outputs
