"""Finding the prunable layers of a model.

A *layer* is one matrix weight that prunelab masks: the ``weight`` of Linear and Conv1d/2d/3d
(subclasses included, such as MultiheadAttention's ``out_proj``) and of transformers' ``Conv1D``
(GPT-2's c_attn, c_proj, c_fc: stored ``[in, out]``, so its output units are *columns*); each
``weight_ih_l*`` / ``weight_hh_l*`` of nn.RNN, nn.LSTM and nn.GRU (the gates stacked on the rows);
and MultiheadAttention's packed ``in_proj_weight`` (query, key, value stacked on the rows). A
layer's *rows* are its output units' weights (:meth:`Layer.rows`): scores, 2:4 groups and unit
sums run along them whatever axis the weight stores its units on. Every other parameter with two
or more dimensions (an Embedding's table, a position embedding) is listed in ``skipped`` with the
reason, so nothing of matrix shape escapes silently.

Which units shrink together (structured pruning) is :mod:`.units`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .kinds import is_conv1d
from .masks import fits_n_of_m, row_length

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
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
    names = param_names(model)
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


def param_names(model: nn.Module) -> dict[int, str]:
    """``{id(parameter): its name in model.named_parameters()}`` (a shared tensor: its first name)."""
    return {id(p): n for n, p in model.named_parameters()}
