"""The input features each weight reads, as sums of squares over the data (Wanda's ``||X_j||``).

Linear and transformers' Conv1D read their input's last dim; a convolution each input channel at
each kernel position (the unfolded patches, padded as it pads); a recurrent layer's
``weight_ih_l0`` the module's input and its last layer's ``weight_hh`` the hidden states before
each step; MultiheadAttention's ``in_proj_weight`` the query, key and value, one per block of rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Layer


def input_sq(layer: Layer, inputs: tuple, output) -> torch.Tensor | None:
    """The sum of squares of each input feature of ``layer``'s weight in one call of its module
    (``inputs`` and ``output`` as a forward hook gets them), shaped as
    :meth:`prunelab.core.criteria.Wanda.feature_norms` gives them; None when that input is not seen.

    Args:
        layer: the layer.
        inputs: its module's positional inputs.
        output: its module's output.

    Returns:
        A tensor of sums of squares, or None.

    Example:
        >>> layer = find_layers(nn.Linear(3, 2))[0][0]  # doctest: +SKIP
        >>> input_sq(layer, (torch.ones(4, 3),), None)  # doctest: +SKIP
        tensor([4., 4., 4.])
    """
    m = layer.module
    if isinstance(m, nn.RNNBase):
        return _recurrent_sq(layer, inputs, output)
    if isinstance(m, nn.MultiheadAttention):
        if layer.attr != "in_proj_weight" or len(inputs) < 3 or not all(isinstance(t, torch.Tensor) for t in inputs[:3]):
            return None
        return torch.stack([_linear_sq(t.detach().float()) for t in inputs[:3]])
    if not inputs or not isinstance(inputs[0], torch.Tensor):  # called by keyword: left to the fallback
        return None
    x = inputs[0].detach().float()
    return _conv_sq(x, m) if isinstance(m, nn.modules.conv._ConvNd) else _linear_sq(x)


def _recurrent_sq(layer: Layer, inputs: tuple, output) -> torch.Tensor | None:
    """Input features of a recurrent weight: the module's input for ``weight_ih_l0`` (and
    ``_reverse``), the output hidden states (each step's previous one) for the last layer's
    ``weight_hh``; None for the rest (their inputs stay inside the module)."""
    m, attr = layer.module, layer.attr
    if attr in ("weight_ih_l0", "weight_ih_l0_reverse"):
        x = inputs[0] if inputs else None
        x = x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x
        return _linear_sq(x.detach().float()) if isinstance(x, torch.Tensor) else None
    last = m.num_layers - 1
    if attr not in (f"weight_hh_l{last}", f"weight_hh_l{last}_reverse"):
        return None
    out = output[0] if isinstance(output, tuple) else output
    if not isinstance(out, torch.Tensor):  # a packed sequence: its steps are not laid out in time
        return None
    width = layer.shape[1]
    h = out.detach().float()
    time = 1 if m.batch_first and h.dim() == 3 else 0
    if attr.endswith("_reverse"):  # the reverse direction reads step t+1's state at step t
        h = h[..., width:].narrow(time, 1, h.shape[time] - 1)
    else:
        h = h[..., :width].narrow(time, 0, h.shape[time] - 1)
    return _linear_sq(h)


def _linear_sq(x: torch.Tensor) -> torch.Tensor:
    """Sum of squares of each input feature (the last dim) over every other dim."""
    return x.reshape(-1, x.shape[-1]).pow(2).sum(0)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_sq(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """``(groups, in_channels / groups, *kernel)``: the sum of squares of each input channel at each
    kernel position over every patch the convolution sees (padding as it pads), i.e. the squared
    column norms of the unfolded input. Taken as the weight gradient of a one-filter convolution
    of ``x**2`` whose output gradient is 1 everywhere."""
    dims = x.dim() - 2
    if dims not in _CONV:  # an unbatched input
        x, dims = x.unsqueeze(0), x.dim() - 1
    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    if isinstance(conv.padding, str):  # 'valid' or 'same' (stride 1), as torch pads them
        pads = [0] * (2 * dims)
        if conv.padding == "same":
            for i in range(dims):
                total = dilation[i] * (kernel[i] - 1)
                pads[2 * (dims - 1 - i)], pads[2 * (dims - 1 - i) + 1] = total // 2, total - total // 2
    else:
        pads = [p for p in reversed(conv.padding) for _ in range(2)]
    if any(pads):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pads, mode=mode)
    probe = torch.ones((1, x.shape[1], *kernel), device=x.device, dtype=x.dtype, requires_grad=True)
    with torch.enable_grad():
        _CONV[dims](x.pow(2), probe, stride=stride, dilation=dilation).sum().backward()
    groups = conv.groups
    return probe.grad[0].reshape(groups, x.shape[1] // groups, *kernel)
