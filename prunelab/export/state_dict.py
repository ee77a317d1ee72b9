"""Format "state_dict": the masked weights as a plain state_dict of the original architecture.

No ``weight_orig``/``weight_mask`` pairs (what ``torch.nn.utils.prune`` leaves behind): the
masks are baked into the weights, so ``model.load_state_dict(...)`` on a fresh instance of the
same class just works. Saved with safetensors (no pickle). As large as the dense model: zeros
are stored like any other number; use "sparse" for a smaller file, "structured" for speed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.files import load_safetensors, save_safetensors

KIND = "state_dict"


def save_state_dict(model: nn.Module, path) -> Path:
    """Write ``model.state_dict()`` (masks already applied by the Pruner) to ``path``."""
    info = {"model_class": type(model).__qualname__}
    return save_safetensors(path, model.state_dict(), KIND, info)


def load_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a "state_dict" export, without pickle.

    Args:
        path: the ``.safetensors`` file written by ``export(path, "state_dict")``.

    Returns:
        The state_dict, ``{name: tensor}`` (pruned weights are zeros), for ``model.load_state_dict``.

    Raises:
        ValueError: the file is truncated or damaged (its checksum fails), not a safetensors
            file, or not a prunelab "state_dict" export (the error names the file and what to do).
        OSError: the file cannot be read (missing, a folder).

    Example:
        >>> model.load_state_dict(pl.load_state_dict("model.safetensors"))
    """
    tensors, _ = load_safetensors(path, KIND, "prunelab.load_state_dict")
    return tensors
