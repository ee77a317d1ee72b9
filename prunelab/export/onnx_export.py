"""Format "onnx": the pruned network as an ONNX file, checked with onnxruntime before it is kept.

The network exported is the structured one (units removed) when the model has removable units
and removing them keeps the outputs; otherwise the masked network with its dense shapes. The
file is written only after onnxruntime, run on validation inputs, reproduces the torch outputs
of the masked model. Needs the optional extra: ``pip install prunelab[onnx]`` (onnx, onnxscript,
onnxruntime).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import torch

from ..core.files import atomic_paths
from ..core.inputs import Inputs
from .structured import CHECK_SAMPLES, exact_outputs, example_inputs, shrink

KIND = "onnx"
INSTALL = "pip install prunelab[onnx]"


def require_onnx() -> None:
    """Raise a clear ImportError when the ONNX extra is missing."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"exporting to ONNX needs {', '.join(missing)}: run `{INSTALL}`.")


def save_onnx(pruner, path) -> tuple[Path, dict]:
    """Export ``pruner``'s model to ``path`` and verify it with onnxruntime. Returns the path and
    ``{"network": ..., "max_abs_diff": ..., "checked": n}``."""
    require_onnx()
    if isinstance(pruner.val_inputs, Inputs):
        raise ValueError(f"ONNX export here takes a model called with one tensor; this one takes keyword inputs "
                         f"({', '.join(pruner.val_inputs.keys())}), so no ONNX file was written. Export 'state_dict' "
                         "or 'sparse' (and convert with your framework's own exporter, e.g. optimum for Hugging Face).")
    try:
        shrunk = shrink(pruner)
        model = shrunk.model
        network = f"structured ({shrunk.removed} units removed)" if shrunk.removed else "masked (no units to remove)"
    except ValueError:
        model = copy.deepcopy(pruner.model)
        network = "masked (removing units would change the outputs)"
    model = model.cpu().eval()
    example = example_inputs(pruner).cpu()
    program = to_onnx(model, example)
    path = Path(path)
    with atomic_paths(path) as (tmp,):
        program.save(tmp, external_data=False)
        x = pruner.val_inputs[:CHECK_SAMPLES]
        diff = check_with_onnxruntime(tmp, x.cpu(), exact_outputs(pruner.model, x, pruner.output).cpu(), path)
    return path, {"network": network, "max_abs_diff": diff, "checked": len(x)}


def to_onnx(model, example):
    """``model`` exported to ONNX on ``example`` (torch.onnx, dynamic batch), its progress lines quiet.

    Returns:
        torch's ONNXProgram (``.model_proto`` holds the ONNX model).

    Example:
        >>> to_onnx(model.eval(), torch.randn(1, 64)).model_proto  # doctest: +SKIP
    """
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its progress lines and torchvision notices are noise here
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations, not the user's
            try:
                return torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                         dynamic_shapes=({0: torch.export.Dim("batch")},))
            except Exception:  # a model that fixes its batch size
                try:
                    return torch.onnx.export(model, (example,), dynamo=True, verbose=False)
                except Exception as e:
                    raise ValueError(f"torch.onnx.export could not convert {type(model).__name__} ({e}), so no "
                                     "ONNX file was written. Export 'structured' or 'state_dict' instead.") from None
    finally:
        quiet.setLevel(level)


def check_with_onnxruntime(onnx_path, inputs: torch.Tensor, expected: torch.Tensor, shown_path=None) -> float:
    """Run the ONNX file on ``inputs`` with onnxruntime; the max abs difference from ``expected``.
    Raises ValueError when it exceeds 1e-4 relative to the output scale."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed != len(inputs):
        got = torch.cat([torch.from_numpy(session.run(None, {name: b.numpy()})[0])
                         for b in inputs[: len(inputs) // fixed * fixed].split(fixed)])
        expected = expected[: len(got)]
    else:
        got = torch.from_numpy(session.run(None, {name: inputs.numpy()})[0])
    diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
    if not diff <= 1e-4 * max(1.0, float(expected.abs().max())):
        raise ValueError(f"the ONNX export of {shown_path or onnx_path} does not reproduce the torch outputs under "
                         f"onnxruntime (max difference {diff:.3g} on {len(inputs)} validation samples), so it "
                         "was not written. Export 'structured' (torch.export) or 'state_dict' instead.")
    return diff
