"""The class-free half of a "structured" export: a ``torch.export`` program in a ``.pt2`` file,
written without pickle and loaded only after checking that it holds none."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..core.files import check_marker, marker, read_file

PROGRAM_KIND = "program"
PROGRAM_INFO = "prunelab.json"  # extra file inside the .pt2 archive


def program_bytes(model: nn.Module, example: torch.Tensor, info: dict) -> bytes:
    """``model`` as a ``torch.export`` program archive (dynamic batch where the model allows),
    with ``info`` and the prunelab marker inside."""
    batch = torch.export.Dim("batch")
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception:  # a model that fixes its batch size: export it for the example's batch
        try:
            program = torch.export.export(model, (example,))
        except Exception as e:
            raise ValueError(f"torch.export could not capture {type(model).__name__} as a program ({e}), so "
                             "the structured export was not written. Export 'sparse' or 'state_dict', which "
                             "work for any model.") from None
    try:  # torch.export.save would pickle them; without them the archive holds no pickle at all
        program.example_inputs = None
    except AttributeError:  # older torch: no setter
        program._example_inputs = None
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={PROGRAM_INFO: json.dumps({"format": marker(PROGRAM_KIND),
                                                                              **info})})
    return buffer.getvalue()


def load_program(path) -> "torch.export.ExportedProgram":
    """Load the ``.pt2`` program of a "structured" export; ``.module()`` runs it without the
    original class.

    ``torch.export.load`` is not pickle-free in general: the graph is JSON and plain weights are
    raw bytes, but tensor subclasses, custom objects and sample inputs go through ``torch.load``,
    falling back to ``weights_only=False`` (arbitrary code) when the safe unpickler refuses.
    prunelab writes programs with none of these, and before handing a file to
    ``torch.export.load`` this checks the archive: CRCs intact, the prunelab marker present, no
    pickled payload, custom object, legacy ``.pt`` record or sample inputs. A file from someone
    else thus never reaches an unpickler.

    Args:
        path: the ``.pt2`` file.

    Returns:
        The ``torch.export.ExportedProgram``.

    Raises:
        ValueError: not a zip archive, a failing checksum, no prunelab marker, or pickled content.

    Example:
        >>> out = pl.load_program("model.pt2").module()(x)
    """
    path = Path(path)
    read_file(path)  # exists, not a folder
    _check_program_archive(path)
    return torch.export.load(path)


def _check_program_archive(path: Path) -> dict:
    damaged = f"{path} is not a readable .pt2 program (damaged, truncated or of another kind)"
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{damaged}: it is not a zip archive. Export it again with prunelab.")
    with zipfile.ZipFile(path) as z:
        try:
            bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ValueError(f"{damaged}: {e}.") from None
        if bad is not None:
            raise ValueError(f"{damaged}: record {bad} fails its checksum. Export it again.")
        names = z.namelist()
        info_name = next((n for n in names if n.endswith("/extra/" + PROGRAM_INFO)), None)
        info = json.loads(z.read(info_name)) if info_name else {}
        check_marker(path, info.get("format"), PROGRAM_KIND, "prunelab.load_program")
        for n in names:
            if n.endswith(".pt") and "/data/sample_inputs/" not in n:
                raise ValueError(f"{path} holds a pickled record ({n}); prunelab loads programs without pickle.")
            if n.endswith("_config.json") and "/data/" in n:
                config = json.loads(z.read(n)).get("config", {})
                for fqn, meta in config.items():
                    if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
                        raise ValueError(f"{path} stores {fqn!r} with pickle or as a custom object; prunelab "
                                         "loads programs without pickle.")
            if "/data/sample_inputs/" in n and z.getinfo(n).file_size:
                raise ValueError(f"{path} holds pickled sample inputs ({n}); prunelab writes programs without "
                                 "them and loads programs without pickle.")
    return info
