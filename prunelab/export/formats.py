"""Which formats exist, what each gives, and the one call that writes any of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.checks import did_you_mean
from ..recipe import save_recipe
from .int8 import save_int8
from .onnx_export import save_onnx
from .sparse import save_sparse
from .state_dict import save_state_dict
from .structured import save_structured

FORMATS = ("state_dict", "sparse", "structured", "onnx", "recipe", "int8")
SUFFIXES = {"state_dict": ".safetensors", "sparse": ".safetensors", "structured": "", "onnx": ".onnx",
            "recipe": ".json", "int8": ".safetensors"}
GIVES = {"state_dict": "neither: same size and speed as dense (zeros stored as numbers)",
         "sparse": "size only: loads back to dense shapes, runs at dense speed",
         "structured": "size and speed: units are removed, every forward does less work",
         "onnx": "size and speed when units were removed (it carries the structured network)",
         "recipe": "no weights: replays the pruning on a fresh model",
         "int8": "size (int8 weights, a quarter of float) and int8 Linear layers; the structured cut first "
                 "when units are removed (structured+int8)"}


@dataclass(frozen=True)
class Exported:
    """What an export wrote: ``files`` (one, or two for "structured"), their total ``bytes``, and
    format-specific ``details`` (for example the checked output difference)."""

    format: str
    files: tuple[Path, ...]
    bytes: int
    details: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.files[0]

    def __str__(self) -> str:
        names = " + ".join(str(f) for f in self.files)
        return f"{self.format}: {names} ({self.bytes / 1e3:,.1f} kB)"


def check_format(format: str) -> None:
    """A ValueError, with a did-you-mean, unless ``format`` is one of :data:`FORMATS`.

    Example:
        >>> check_format("sparse")
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}.{did_you_mean(format, FORMATS, n=1)} "
                         f"Formats: {list(FORMATS)}.")


def export(pruner, path, format: str = "state_dict") -> Exported:
    """Write ``pruner``'s current state to ``path`` in ``format`` (see :mod:`prunelab.export`).

    Args:
        pruner: the Pruner; its model is never modified.
        path: used as given, except for "structured", which writes ``<path>.safetensors`` and
            ``<path>.pt2`` (a ``.safetensors``/``.pt2`` suffix on ``path`` is dropped first).
        format: one of :data:`FORMATS`.

    Returns:
        An :class:`Exported`: the files written, their total bytes, format-specific details.

    Raises:
        OSError (nothing left behind) when the files cannot be written; ValueError for an unknown
        format, or a structured/onnx export that would change the outputs.

    Example:
        >>> pl.export.export(pruner, "model.safetensors", "sparse").bytes
    """
    check_format(format)
    if format == "state_dict":
        files, details = (save_state_dict(pruner.model, path),), {}
    elif format == "sparse":
        files, details = (save_sparse(pruner.model, path),), {}
    elif format == "structured":
        files, shrunk = save_structured(pruner, path)
        details = {"units": shrunk.units, "units_removed": shrunk.removed, "max_abs_diff": shrunk.max_abs_diff,
                   "checked": shrunk.checked, "flops_ratio": shrunk.flops_ratio,
                   "batchnorms_folded": len(shrunk.folded), "folded": shrunk.folded,
                   "channels_last": shrunk.channels_last}
    elif format == "onnx":
        file, details = save_onnx(pruner, path)
        files = (file,)
    elif format == "int8":
        file, details = save_int8(pruner, path)
        files = (file,)
    else:
        files, details = (save_recipe(pruner, path),), {}
    return Exported(format, tuple(files), sum(f.stat().st_size for f in files), details)
