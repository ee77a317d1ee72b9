"""Finding the prunable layers of a model, and the groups of parameters that must shrink together.

A *layer* is one matrix weight that prunelab masks: the ``weight`` of Linear and Conv1d/2d/3d
(subclasses included, such as MultiheadAttention's ``out_proj``) and of transformers' ``Conv1D``
(GPT-2's c_attn, c_proj, c_fc: stored ``[in, out]``, so its output units are *columns*); each
``weight_ih_l*`` / ``weight_hh_l*`` of nn.RNN, nn.LSTM and nn.GRU (the gates stacked on the rows);
and MultiheadAttention's packed ``in_proj_weight`` (query, key, value stacked on the rows). A
layer's *rows* are its output units' weights (:meth:`Layer.rows`): scores, 2:4 groups and unit
sums run along them whatever axis the weight stores its units on. Every other parameter with two
or more dimensions (an Embedding's table, a position embedding) is listed in ``skipped`` with the
reason, so nothing of matrix shape escapes silently.

A *unit group* is what structured pruning removes as one: output unit ``i`` of a layer together
with every parameter slice that only exists for it (its bias, BatchNorm entries, the input
columns of the layers it feeds, and the same unit of layers coupled to it by a residual
addition). The groups come from torch-pruning's dependency graph, so concatenations, flattening
and depthwise convolutions map indices correctly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .masks import fits_n_of_m, row_length
from .modes import untouched
from .kinds import is_conv1d, tp_pruners

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Modules whose per-channel parameters can be zeroed so that a removed channel outputs exactly 0.
_CHANNEL_AFFINE = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
_RNN_WEIGHT = re.compile(r"weight_(ih|hh|hr)_l\d+(_reverse)?$")
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def is_module_weight(module) -> bool:
    """Whether ``module``'s ``weight`` is a prunable layer (Linear, Conv, transformers' Conv1D).

    Example:
        >>> is_module_weight(nn.Conv2d(1, 2, 3)), is_module_weight(nn.LSTM(2, 2))
        (True, False)
    """
    return isinstance(module, PRUNABLE_TYPES) or is_conv1d(module)


def holds_layers(module) -> bool:
    """Whether ``module`` holds prunable weights of its own: a Linear, Conv or Conv1D weight, a
    recurrent layer's matrices, or MultiheadAttention's packed projection.

    Example:
        >>> holds_layers(nn.GRU(2, 2)), holds_layers(nn.ReLU())
        (True, False)
    """
    return is_module_weight(module) or isinstance(module, (nn.RNNBase, nn.MultiheadAttention))


@dataclass(frozen=True)
class Layer:
    """A prunable layer: ``name`` is its qualified module name (for a recurrent or attention
    weight, the parameter's: ``"lstm.weight_hh_l0"``), ``params`` its weight count.

    ``attr`` is the weight's attribute on ``module``; ``out_dim`` the weight's axis of output units
    (0, or 1 for transformers' Conv1D)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    module: nn.Module = field(repr=False, compare=False)
    param: str | None = field(default=None, repr=False, compare=False)  # its name when tied to another's
    attr: str = field(default="weight", repr=False, compare=False)
    out_dim: int = field(default=0, repr=False, compare=False)

    @property
    def weight(self) -> nn.Parameter:
        """The weight itself (the model's own Parameter)."""
        return getattr(self.module, self.attr)

    @property
    def units(self) -> int:
        """Output units (Linear, Conv1D columns, gate rows of a recurrent weight) or filters (Conv)."""
        return self.shape[self.out_dim]

    @property
    def row_length(self) -> int:
        """Weights per output unit (:func:`prunelab.core.masks.row_length`)."""
        return row_length(self.shape, self.out_dim)

    def fits_n_of_m(self, m: int = 4) -> bool:
        """Whether its rows take an n:m pattern (:func:`prunelab.core.masks.fits_n_of_m`)."""
        return fits_n_of_m(self.shape, m, self.out_dim)

    @property
    def weight_name(self) -> str:
        """The weight's name in ``model.named_parameters()`` (the root module's is ``"weight"``; a
        weight tied to an earlier module's, as a language model's head to its embedding, has that
        module's name, since ``named_parameters`` lists a shared tensor once)."""
        if self.param:
            return self.param
        if self.attr != "weight":
            return self.name
        return f"{self.name}.weight" if self.name else "weight"

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (shaped like the weight) as ``[units, row_length]``: one row per output unit.

        Example:
            >>> layer = find_layers(nn.Linear(3, 2))[0][0]
            >>> layer.rows(torch.zeros(2, 3)).shape
            torch.Size([2, 3])
        """
        return t.movedim(self.out_dim, 0).reshape(self.units, -1)

    def from_rows(self, r: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`rows`: ``[units, row_length]`` back to the weight's shape."""
        moved = (self.shape[self.out_dim], *(d for i, d in enumerate(self.shape) if i != self.out_dim))
        return r.reshape(moved).movedim(0, self.out_dim)

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


EMBEDDING_REASON = ("a lookup table (its rows are looked up by index, not multiplied): zeroing entries "
                    "would blank token vectors rather than connections, so it is not pruned")


def find_layers(model: nn.Module) -> tuple[list[Layer], dict[str, str]]:
    """Prunable layers in module order, and ``{name: reason}`` for matrix parameters that are not
    pruned (keyed by module name, or by parameter name for a lone parameter).

    A weight shared by two prunable modules (``b.weight = a.weight``) is one layer, the first;
    the second is listed in ``skipped``. A weight tied to a module that is not prunable (a
    language model's head tied to its embedding) is the layer's, under the name
    ``named_parameters`` gives it. Every parameter with two or more dimensions is either a layer's
    weight or named in ``skipped``.

    Example:
        >>> layers, skipped = find_layers(nn.ModuleDict({"emb": nn.Embedding(5, 4), "rnn": nn.GRU(4, 4)}))
        >>> [l.name for l in layers], list(skipped)
        (['rnn.weight_ih_l0', 'rnn.weight_hh_l0'], ['emb'])
    """
    layers, skipped = [], {}
    names = _param_names(model)
    owner: dict[int, str] = {}

    def add(name, module, attr, kind, out_dim=0):
        weight = getattr(module, attr)
        if isinstance(weight, nn.parameter.UninitializedParameter):
            skipped[name] = "lazy layer not initialised yet: run one forward pass first"
            return
        if id(weight) in owner:
            skipped[name] = f"its weight is tied to layer {owner[id(weight)]!r} (the same tensor): pruned as that layer"
            return
        own = name if attr != "weight" else (f"{name}.weight" if name else "weight")
        tied = names.get(id(weight))
        owner[id(weight)] = name
        layers.append(Layer(name, kind, tuple(weight.shape), weight.numel(), module,
                            tied if tied not in (None, own) else None, attr, out_dim))

    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if is_module_weight(module):
            add(name, module, "weight", type(module).__name__, 1 if is_conv1d(module) else 0)
        elif isinstance(module, nn.RNNBase):
            for attr, _ in module.named_parameters(recurse=False):
                if _RNN_WEIGHT.match(attr):
                    add(prefix + attr, module, attr, type(module).__name__)
        elif isinstance(module, nn.MultiheadAttention):
            for attr in _MHA_WEIGHTS:
                if getattr(module, attr, None) is not None:
                    add(prefix + attr, module, attr, type(module).__name__)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            if id(module.weight) in owner:  # pruned as the layer tied to it (a language model's head)
                continue
            skipped.setdefault(name, f"{type(module).__name__}: {EMBEDDING_REASON}")
    listed = set(skipped)
    for pname, p in model.named_parameters():
        module_name = pname.rpartition(".")[0]
        lazy = isinstance(p, nn.parameter.UninitializedParameter)
        if module_name in listed or pname in listed or id(p) in owner or lazy or p.dim() < 2:
            continue
        kind = type(model.get_submodule(module_name)).__name__
        skipped[pname] = (f"a {kind} parameter shaped {'x'.join(map(str, p.shape))}: prunelab prunes the weights "
                          "of Linear, Conv, transformers' Conv1D, recurrent and attention layers, not this")
    return layers, skipped


def _param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


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
    give a reason for every layer whose units cannot be removed by masking."""
    import torch_pruning as tp  # imported here: building the graph is the only use

    blocked: dict[str, str] = {}
    for layer in layers:
        why = _not_unit_prunable(layer)
        if why:
            blocked[layer.name] = why
    layers = [l for l in layers if l.name not in blocked]
    if not layers:
        return {}, blocked
    names = _param_names(model)
    by_module = {l.module: l for l in layers}
    # torch-pruning switches the model to eval mode while tracing and leaves it there: every
    # module's own flag, and every buffer, are restored (modes.untouched).
    try:
        with untouched(model), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False,
                                                          output_transform=output_transform,
                                                          customized_pruners=tp_pruners(model))
    except Exception as e:  # structured pruning is then unavailable, with the reason; never a crash
        reason = f"torch-pruning could not build the model's dependency graph ({type(e).__name__}: {e})"
        return {}, {**blocked, **{l.name: reason for l in layers}}

    groups: dict[str, UnitGroup] = {}
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
                slices.append(Slice(names[id(target.weight)], 0, idx, root))
                if target.bias is not None:
                    slices.append(Slice(names[id(target.bias)], 0, idx, root))
            elif isinstance(target, (nn.Embedding, nn.EmbeddingBag)) and out_fn:
                reason = (f"its units are tied (by a residual addition) to the output of {type(target).__name__} "
                          f"{names[id(target.weight)].rpartition('.')[0]!r}, whose table is not pruned")
                break
            elif any(True for _ in target.parameters(recurse=False)):
                reason = f"it feeds a {type(target).__name__}, which prunelab cannot mask unit by unit"
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
