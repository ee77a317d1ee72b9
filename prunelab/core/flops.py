"""FLOPs of one forward pass, in total and per prunable layer.

A layer's FLOPs are those of the operations that read its weight (matched by storage), counted
with torch's FlopCounterMode, or with hooks when every matrix product is a plain Linear/Conv
module (the same numbers, without importing torch._dynamo). Recurrent weights are counted as one
matrix-vector product per step and sample (CPU LSTM runs a fused kernel the counter misses).
"""

from __future__ import annotations

import torch
from torch import nn

from .inputs import Inputs, call
from .layers import PRUNABLE_TYPES
from .modes import untouched
from .tracing import symbolic_trace


def count_flops(model: nn.Module, example, layer_names: list[str]) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass on ``example`` (one sample), in total and per named layer.

    A layer's FLOPs are those of the operations that read its weight (matched by storage), so a
    layer used functionally inside another module, like MultiheadAttention's ``out_proj``, counts.
    Models whose only matrix products are plain Linear/Conv modules are counted with hooks instead,
    to the same numbers, because FlopCounterMode imports torch._dynamo (seconds, on opening)."""
    counted = hooked_flops(model, example, layer_names)
    if counted is not None:
        return counted
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    owner = {_storage(layer_weight(model, n)): n for n in layer_names}
    per_layer = dict.fromkeys(layer_names, 0)

    def attributing(formula):
        def counted(*args, out_val=None, **kwargs):
            flops = formula(*args, out_val=out_val, **kwargs)
            readers = {owner.get(_storage(a)) for a in (*args, *kwargs.values())} - {None}
            for n in readers:
                per_layer[n] += int(flops)
            return flops
        counted._get_raw = True  # FlopCounterMode passes raw tensors to such formulas
        return counted

    # Grad enabled on purpose: under no_grad, eval-mode MultiheadAttention (and Transformer
    # layers) take a fused fast path whose op FlopCounterMode does not count, hiding its FLOPs.
    mapping = {op: attributing(f) for op, f in flop_registry.items()}
    recurrent, positions = _recurrent_layers(model, layer_names), {}
    hooks = [m.register_forward_hook(lambda m, i, o: positions.__setitem__(m, positions.get(m, 0) + _steps(i)))
             for m in {m for m, _ in recurrent.values()}]
    try:
        with untouched(model), torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            call(model, example)
    finally:
        for h in hooks:
            h.remove()
    total = int(counter.get_total_flops())
    # A recurrent weight multiplies one vector per step and sample; CPU LSTM runs a fused kernel
    # FlopCounterMode does not see, so these layers are counted here, in place of what it saw.
    for n, (m, weight) in recurrent.items():
        flops = 2 * positions.get(m, 0) * weight.numel()
        total += flops - per_layer[n]
        per_layer[n] = flops
    return total, per_layer


def _recurrent_layers(model: nn.Module, layer_names: list[str]) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """``{layer name: (its recurrent module, its weight)}`` for the recurrent weights named."""
    out = {}
    for n in layer_names:
        module = model.get_submodule(n.rpartition(".")[0]) if "." in n else model
        if isinstance(module, nn.RNNBase) and getattr(module, n.rpartition(".")[2], None) is not None:
            out[n] = (module, getattr(module, n.rpartition(".")[2]))
    return out


def _steps(inputs: tuple) -> int:
    """Steps times samples a recurrent module runs on (a packed sequence's, or its input's)."""
    x = inputs[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return int(x.data.shape[0])
    return x.numel() // x.shape[-1]


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight of the prunable layer called ``name``: the ``weight`` of the module of that name,
    or the parameter of that name (a recurrent layer's ``lstm.weight_ih_l0``, an attention's
    ``attn.in_proj_weight``).

    Example:
        >>> layer_weight(nn.Sequential(nn.Linear(2, 3)), "0").shape
        torch.Size([3, 2])
    """
    module = dict(model.named_modules()).get(name)
    weight = getattr(module, "weight", None) if module is not None else None
    return weight if isinstance(weight, torch.Tensor) else model.get_parameter(name)


def _storage(t) -> int | None:
    return t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else None


# Ops that FlopCounterMode counts (matrix products, convolutions, attention), by name fragment.
_MATMUL_NAMES = ("matmul", "mm", "einsum", "tensordot", "linear", "conv", "attention", "multi_dot", "bilinear",
                 "inner", "dot")


def hooked_flops(model: nn.Module, example, layer_names: list[str]):
    """The same count as FlopCounterMode, without it, when every matrix product of the model is a
    plain Linear or Conv module: 2 * multiply-adds of those modules. FlopCounterMode imports
    torch._dynamo (seconds); this takes one forward pass. None when the model does anything else
    that FlopCounterMode would count (or cannot be traced), so the caller falls back to it.

    Args:
        model: the model (its train/eval mode is restored after).
        example: one sample's inputs.
        layer_names: the layers to report.

    Returns:
        ``(total, {layer name: flops})``, or None when hooks cannot count this model.

    Example:
        >>> hooked_flops(nn.Sequential(nn.Linear(4, 2)), torch.zeros(1, 4), ["0"])
        (16, {'0': 16})
    """
    if isinstance(example, Inputs):  # keyword inputs: not traced here
        return None
    try:
        gm = symbolic_trace(model)
    except Exception:
        return None
    modules = dict(model.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = modules.get(node.target)
            if type(m) in PRUNABLE_TYPES:
                continue
            if any(k in type(m).__name__.lower() for k in ("linear", "conv", "attention", "transformer", "rnn",
                                                              "lstm", "gru", "bilinear")):
                return None
        elif node.op in ("call_function", "call_method"):
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            if any(k in name.lower() for k in _MATMUL_NAMES):
                return None
    # Each module's FLOPs go to the layer whose weight it uses (a tied module counts for its layer).
    layer_of = {id(layer_weight(model, n)): n for n in layer_names}
    names = {m: layer_of.get(id(getattr(m, "weight", None)), n) for n, m in modules.items()}
    flops: dict[str, int] = {}

    def count(module, inputs, output):
        n = names[module]
        if isinstance(module, nn.Linear):
            f = 2 * inputs[0].numel() * module.out_features
        else:
            f = 2 * output.numel() * module.weight.shape[1] * module.weight[0, 0].numel()
        flops[n] = flops.get(n, 0) + int(f)

    hooks = [m.register_forward_hook(count) for m in modules.values() if type(m) in PRUNABLE_TYPES]
    try:
        with untouched(model), torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return sum(flops.values()), {n: flops.get(n, 0) for n in layer_names}
