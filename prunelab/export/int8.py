"""Format "int8": int8 weights on top of the pruned model, saved and loaded without pickle.

The rule, once (:func:`quantize_weight`): every Linear and Conv1d/2d/3d weight is stored as int8
with one scale per output channel, symmetric (torch.ao's ``PerChannelMinMaxObserver`` with
``per_channel_symmetric``: scale = max |w| of the channel / 127.5, zero point 0). Pruned weights
(exact zeros) stay exact zeros. Everything else (biases, norms, running statistics) stays float.
When the state removes units (structured pruning), the structured cut comes first
(``"structured+int8"``): the smaller network is what gets quantized.

What runs after loading (:func:`load_int8`, :func:`int8_model`):
- ``nn.Linear``: torch.ao dynamic quantization (``torch.ao.nn.quantized.dynamic.Linear``) holding
  exactly the stored int8 values and scales: int8 matrix products, activations quantized per batch.
- convolutions: int8 on disk, dequantized on load (weights = int8 x scale in float): smaller
  files, float speed. (torch.ao's static quantization of convolutions needs calibrated observers
  and fused modules per architecture; weight-only int8 works on any model.)

One file, ``<path>`` (``.safetensors``): the int8 weights under their own names, the scales
under ``<name>:scale``, the other tensors as they are, and in the header (JSON, under the
checksum) which tensors are int8 and, for a structured cut, the new module shapes. Nothing in the
file is executed: :func:`load_int8` needs a fresh instance of the model's class.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core.files import load_safetensors, save_safetensors
from ..core.layers import PRUNABLE_TYPES
from .structured import resize_modules, shrink

KIND = "int8"
SCALE = ":scale"


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 values, float32 scale per output channel)`` of ``w`` (per-channel symmetric, axis 0).

    Example:
        >>> q, scale = quantize_weight(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
        >>> q.tolist(), q.dtype
        ([[127, -64], [0, 0]], torch.int8)
    """
    from torch.ao.quantization import PerChannelMinMaxObserver

    w = w.detach().float().cpu()
    with warnings.catch_warnings():  # torch marks its quantized tensors deprecated; they still work
        warnings.simplefilter("ignore")
        observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        observer(w)
        scale, zero = observer.calculate_qparams()
        q = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
        return q.int_repr().contiguous(), q.q_per_channel_scales().float().contiguous()


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float weights from :func:`quantize_weight`'s output."""
    return q.float() * scale.reshape(-1, *([1] * (q.dim() - 1)))


def int8_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``model``'s state_dict with every Linear/Conv weight as int8 plus its scale; and those names."""
    tensors = dict(model.state_dict())
    names = []
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE_TYPES) and isinstance(getattr(m, "weight", None), nn.Parameter):
            key = f"{name}.weight" if name else "weight"
            tensors[key], tensors[key + SCALE] = quantize_weight(m.weight)
            names.append(key)
    return tensors, names


def _run_int8(model: nn.Module, tensors: dict[str, torch.Tensor], names: list[str]) -> nn.Module:
    """Load the dequantized weights into ``model`` and swap each plain ``nn.Linear`` for a dynamic
    int8 Linear holding exactly the stored int8 values (in place; returned in eval mode)."""
    import torch.ao.nn.quantized.dynamic as nnqd

    quantized = set(names)
    with torch.no_grad():
        for key in names:
            owner = model.get_submodule(key.rpartition(".")[0])
            owner.weight.copy_(dequantize_weight(tensors[key], tensors[key + SCALE]))
    for name, m in list(model.named_modules()):
        key = f"{name}.weight" if name else "weight"
        if type(m) is not nn.Linear or key not in quantized or not name:
            continue
        with warnings.catch_warnings():  # torch marks its quantized modules deprecated; they still run
            warnings.simplefilter("ignore")
            scale = tensors[key + SCALE].double()
            q = torch._make_per_channel_quantized_tensor(tensors[key], scale, torch.zeros(len(scale), dtype=torch.long), 0)
            small = nnqd.Linear(m.in_features, m.out_features, bias_=m.bias is not None, dtype=torch.qint8)
            small.set_weight_bias(q, None if m.bias is None else m.bias.detach().float())
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, small)
    return model.eval()


def int8_model(model: nn.Module) -> tuple[nn.Module | None, str]:
    """A copy of ``model`` as :func:`load_int8` gives it back (int8 Linear layers, convolutions
    rounded through int8), or None and why not.

    Returns:
        ``(model, "")`` or ``(None, reason)``: dynamic quantization runs on the CPU only, and needs
        a Linear or Conv layer.

    Example:
        >>> small, why = int8_model(pruner.model)
    """
    if not any(isinstance(m, PRUNABLE_TYPES) for m in model.modules()):
        return None, "int8 skipped: int8 weights cover Linear and Conv layers and this model has none"
    if next(model.parameters()).device.type != "cpu":
        return None, "int8 skipped: torch's dynamic quantization runs on the CPU only"
    try:
        twin = copy.deepcopy(model).eval()
        tensors, names = int8_tensors(twin)
        return _run_int8(twin, tensors, names), ""
    except Exception as e:  # a build without quantized engines, an unsupported layer
        return None, f"int8 skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def save_int8(pruner, path, structured: bool | None = None) -> tuple[Path, dict]:
    """Write ``pruner``'s state as int8 weights to ``path`` (all or nothing).

    Args:
        pruner: the Pruner; its model is never modified.
        path: the ``.safetensors`` file.
        structured: cut the removed units first; None: when the state removes any (a structured
            cut that would change the outputs raises ValueError, as ``format="structured"``).

    Returns:
        ``(path, details)``: ``structured`` (whether the cut came first), ``quantized`` (the int8
        tensors), ``units_removed``.
    """
    from .structured import removable_units

    cut = bool(removable_units(pruner)) if structured is None else structured
    info = {"model_class": type(pruner.model).__qualname__, "modules": {}, "units": {}}
    if cut:
        shrunk = shrink(pruner)
        model = shrunk.model.cpu()
        info["modules"], info["units"] = shrunk.module_attrs, {k: list(v) for k, v in shrunk.units.items()}
        info["folded"] = shrunk.folded  # BatchNorms folded into the layer before: the loader folds them too
    else:
        model = copy.deepcopy(pruner.model).cpu().eval()
    tensors, names = int8_tensors(model)
    info["int8"] = names
    written = save_safetensors(path, tensors, KIND, info)
    removed = sum(b - a for b, a in info["units"].values())
    return written, {"structured": cut, "quantized": len(names), "units_removed": removed}


def load_int8(path, model: nn.Module) -> nn.Module:
    """Load an "int8" export, without pickle.

    Args:
        path: the ``.safetensors`` file written by ``export(path, "int8")``.
        model: a fresh instance of the exported model's class (same constructor arguments); it is
            resized in place when the export cut units first.

    Returns:
        ``model`` in eval mode: its Linear layers dynamic int8 with the stored values, its
        convolutions holding the dequantized int8 weights.

    Raises:
        ValueError: a damaged or foreign file, or a ``model`` that does not fit. OSError: unreadable.

    Example:
        >>> small = pl.load_int8("model-int8.safetensors", pl.demos.architecture("digits-cnn"))
    """
    tensors, info = load_safetensors(path, KIND, "prunelab.load_int8")
    names = info.get("int8")
    if not isinstance(names, list) or not all(isinstance(n, str) and n in tensors and n + SCALE in tensors
                                              for n in names):
        raise ValueError(f"{path} is damaged: its list of int8 tensors does not match the tensors stored. "
                         "Export it again.")
    expected = resize_modules(path, model, tensors, info)
    floats = {k: (dequantize_weight(v, tensors[k + SCALE]) if k in names else v)
              for k, v in tensors.items() if not k.endswith(SCALE)}
    try:
        result = model.load_state_dict(floats, strict=False)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the given {type(model).__name__} ({str(e).splitlines()[-1]}): pass "
                         f"a fresh instance of {expected} built with the same arguments.") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path} does not fit the given {type(model).__name__} (missing: {result.missing_keys[:3]}, "
                         f"unexpected: {result.unexpected_keys[:3]}): pass a fresh instance of {expected}.")
    return _run_int8(model, tensors, names)
