"""Counting FLOPs: per sample, in total and per prunable layer (matched by weight storage), with
forward hooks when every matrix product is a plain Linear/Conv module, else FlopCounterMode.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from .layers import PRUNABLE_TYPES
from .modes import untouched


def count_flops(model: nn.Module, example: torch.Tensor, layer_names: list[str]) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass on ``example`` (one sample), in total and per named layer.

    A layer's FLOPs are those of the operations that read its weight (matched by storage), so a
    layer used functionally inside another module, like MultiheadAttention's ``out_proj``, counts.
    Models whose only matrix products are plain Linear/Conv modules are counted with hooks instead,
    to the same numbers, because FlopCounterMode imports torch._dynamo (seconds, on opening)."""
    counted = hooked_flops(model, example, layer_names)
    if counted is not None:
        return counted
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    modules = dict(model.named_modules())
    owner = {_storage(modules[n].weight): n for n in layer_names}
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
    with untouched(model), torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(example)
    return int(counter.get_total_flops()), per_layer


def _storage(t) -> int | None:
    return t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else None


# Ops that FlopCounterMode counts (matrix products, convolutions, attention), by name fragment.
_MATMUL_NAMES = ("matmul", "mm", "einsum", "tensordot", "linear", "conv", "attention", "multi_dot", "bilinear",
                 "inner", "dot")


def hooked_flops(model: nn.Module, example: torch.Tensor, layer_names: list[str]):
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
    try:
        gm = fx.symbolic_trace(model)
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
    layer_of = {id(modules[n].weight): n for n in layer_names}
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
