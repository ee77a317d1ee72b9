"""The class-free half of a "structured" export: a ``torch.export`` program in a ``.pt2`` file,
written without pickle, and loaded only from the bytes prunelab itself has checked.

``torch.export.load`` is not pickle-free in general: the graph is JSON and plain weights are raw
bytes, but tensor subclasses, custom objects and sample inputs go through ``torch.load`` (falling
back to ``weights_only=False``, arbitrary code) or ``pickle.loads``. And a zip archive can hold two
entries of one name: Python's ``zipfile`` reads the last, torch's reader the first. So prunelab
never hands torch the file. :func:`load_program` reads every entry once (CRCs checked), refuses
duplicate, compressed or unexpected entries, parses every JSON entry, refuses pickled weights,
pickled constants, custom objects and sample inputs, checks the SHA-256 written at export over all
entries, and then gives ``torch.export.load`` an archive rebuilt in memory from exactly those
checked bytes. What torch reads is what was checked, by construction.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import types
import warnings
import zipfile
import zlib
from pathlib import Path

import torch
from torch import nn

from ..core.files import check_marker, marker, read_file
from ..core.inputs import select_output

PROGRAM_KIND = "program"
PROGRAM_INFO = "extra/prunelab.json"  # our entry inside the .pt2 archive, below its root folder
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
REQUIRED = ("archive_format", "models/model.json", WEIGHTS_CONFIG, CONSTANTS_CONFIG, PROGRAM_INFO)
OPTIONAL = ("archive_version", "byteorder", ".data/version", ".data/serialization_id", SAMPLE_INPUTS)
PAYLOADS = {WEIGHTS_CONFIG: ("data/weights/", re.compile(r"weight_\d+")),
            CONSTANTS_CONFIG: ("data/constants/", re.compile(r"tensor_\d+"))}
JSON_ENTRIES = ("models/model.json", WEIGHTS_CONFIG, CONSTANTS_CONFIG, PROGRAM_INFO)


class Selected(nn.Module):
    """``model`` with only its measured output (:func:`prunelab.core.inputs.forward`): what the
    program captures when the full output cannot be (a language model's cache object, say)."""

    def __init__(self, model: nn.Module, output=None):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, *args, **kwargs):
        return select_output(self.model(*args, **kwargs), self.output)


def _capture(model: nn.Module, args, kwargs, dynamic):
    try:
        return torch.export.export(model, args, kwargs, dynamic_shapes=dynamic)
    except Exception:  # a model that fixes its batch size: export it for the example's batch
        return torch.export.export(model, args, kwargs)


def program_bytes(model: nn.Module, example: torch.Tensor, info: dict, output=None) -> bytes:
    """``model`` as a ``torch.export`` program archive (dynamic batch where the model allows),
    with ``info``, the prunelab marker and a SHA-256 of every other entry inside. When the model's
    full output cannot be captured, the program returns the output ``output`` selects (the
    logits), and ``info["program_output"]`` says so."""
    batch = torch.export.Dim("batch")
    if isinstance(example, torch.Tensor):
        args, kwargs, dynamic = (example,), None, ({0: batch},)
    else:  # keyword inputs (prunelab.core.inputs.Inputs): the program takes them by name
        args, kwargs = (), dict(example)
        dynamic = {k: {0: batch} for k in kwargs}
    try:
        program = _capture(model, args, kwargs, dynamic)
    except Exception as e:
        try:
            program = _capture(Selected(model, output), args, kwargs, dynamic)
            info = {**info, "program_output": "the measured output only (the full output could not be captured)"}
        except Exception:
            raise ValueError(f"torch.export could not capture {type(model).__name__} as a program ({e}), so "
                             "the structured export was not written. Export 'sparse' or 'state_dict', which "
                             "work for any model.") from None
    try:  # torch.export.save would pickle them; without them the archive holds no pickle at all
        program.example_inputs = None
    except AttributeError:  # older torch: no setter
        program._example_inputs = None
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # channels-last weights do not span their storage as a contiguous
        # tensor would; torch then writes the whole storage (strides are kept in the graph), and says so
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, buffer)
    with zipfile.ZipFile(buffer) as z:
        names = z.namelist()
        root = names[0].split("/", 1)[0]
        entries = {n[len(root) + 1:]: z.read(n) for n in names}
    entries[PROGRAM_INFO] = json.dumps({"format": marker(PROGRAM_KIND), **info,
                                        "sha256": entries_digest(entries)}).encode()
    return rebuilt(root, entries).getvalue()


def program_module(program: "torch.export.ExportedProgram") -> nn.Module:
    """The program's module, on which ``.eval()``, ``.train()`` and ``.to()`` work as on any
    nn.Module (torch's own ``.module()`` raises on ``eval()`` and ``train()``).

    The program was captured in eval mode and always computes that way (dropout off, BatchNorm
    on its running statistics): ``train()`` sets the flags, and warns that the graph stays as it
    is. To fine-tune, load the weights into the class instead (``load_structured(path, model)``).

    Returns:
        The ``torch.fx.GraphModule``, in eval mode.

    Example:
        >>> small = program_module(load_program("model.pt2")).eval().to("cpu")
    """
    module = program.module()

    def train(self, mode: bool = True):
        if mode:
            warnings.warn("a structured export's program computes as in eval mode whatever train() says (it "
                          "was captured that way); to fine-tune, load it into the class: "
                          "pl.load_structured(path, model).", stacklevel=2)
        return nn.Module.train(self, mode)

    module.train = types.MethodType(train, module)
    module.eval = types.MethodType(lambda self: nn.Module.train(self, False), module)
    return module.eval()


def entries_digest(entries: dict[str, bytes]) -> str:
    """SHA-256 over the names and bytes of every entry but prunelab's own (in name order)."""
    h = hashlib.sha256()
    for name in sorted(entries):
        if name != PROGRAM_INFO:
            h.update(f"{name}|{len(entries[name])}|".encode())
            h.update(entries[name])
    return h.hexdigest()


def rebuilt(root: str, entries: dict[str, bytes]) -> io.BytesIO:
    """A fresh zip archive in memory holding exactly ``entries`` (stored, one of each name)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(zipfile.ZipInfo(f"{root}/{name}", date_time=(1980, 1, 1, 0, 0, 0)), data)
    buffer.seek(0)
    return buffer


def load_program(path) -> "torch.export.ExportedProgram":
    """Load the ``.pt2`` program of a "structured" export; ``.module()`` runs it without the
    original class. Nothing in the file is unpickled or executed (see the module's docstring).

    Args:
        path: the ``.pt2`` file.

    Returns:
        The ``torch.export.ExportedProgram``.

    Raises:
        ValueError: not a zip archive, a failing checksum, duplicate or unexpected entries, no
            prunelab marker, pickled content, or a graph torch.export cannot read.

    Example:
        >>> out = pl.load_program("model.pt2").module()(x)
    """
    path = Path(path)
    root, entries = checked_entries(path, read_file(path))
    try:
        return torch.export.load(rebuilt(root, entries))
    except Exception as e:  # a graph that torch.export cannot make sense of
        raise ValueError(f"{path} is damaged: torch.export could not read its program "
                         f"({type(e).__name__}: {str(e)[:200]}). Export it again.") from None


def checked_entries(path: Path, data: bytes) -> tuple[str, dict[str, bytes]]:
    """The root folder and ``{name: bytes}`` of every entry of the ``.pt2`` archive ``data``,
    each read once and checked; a ValueError naming ``path`` for anything prunelab did not write."""
    damaged = f"{path} is not a readable .pt2 program (damaged, truncated or of another kind)"
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{damaged}: it is not a zip archive ({e}). Export it again with prunelab.") from None
    with z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise ValueError(f"{damaged}: its entries are not all inside one folder. Export it again with prunelab.")
        root = roots.pop()
        entries: dict[str, bytes] = {}
        for info in infos:
            name = info.filename[len(root) + 1:]
            if name in entries:
                raise ValueError(f"{path} holds two entries named {info.filename!r}: readers disagree on which "
                                 "one counts, so prunelab refuses it. Export it again with prunelab.")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: entry {info.filename!r} is compressed; prunelab writes programs "
                                 "uncompressed and refuses others.")
            if name not in REQUIRED + OPTIONAL and not _is_payload(name):
                raise ValueError(f"{path} holds an entry prunelab does not write ({info.filename!r}); prunelab "
                                 "loads only the programs it exported. Export it again with prunelab.")
            try:
                entries[name] = z.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
                raise ValueError(f"{damaged}: entry {info.filename!r} cannot be read ({e}). Export it again.") from None
    missing = [n for n in REQUIRED if n not in entries]
    if missing and PROGRAM_INFO in missing:
        check_marker(path, None, PROGRAM_KIND, "prunelab.load_program")
    if missing:
        raise ValueError(f"{damaged}: entries {missing} are missing. Export it again with prunelab.")
    parsed = {}
    for name in JSON_ENTRIES:
        try:
            parsed[name] = json.loads(entries[name].decode("utf-8"))
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{path} is damaged: its entry {name!r} is not valid JSON ({e}). Export it again.") from None
    info = parsed[PROGRAM_INFO]
    check_marker(path, info.get("format") if isinstance(info, dict) else None, PROGRAM_KIND, "prunelab.load_program")
    if "sha256" not in info:
        raise ValueError(f"{path} was written by an older prunelab whose program has no checksum: export it again.")
    if info["sha256"] != entries_digest(entries):
        raise ValueError(f"{path} is damaged: its entries do not match the checksum written at export. Export it "
                         "again (or copy it again: the copy may have been cut short).")
    for config_name, (folder, pattern) in PAYLOADS.items():
        _check_payloads(path, entries, parsed[config_name], folder, pattern)
    if entries.get(SAMPLE_INPUTS):
        raise ValueError(f"{path} holds pickled sample inputs; prunelab writes programs without them and loads "
                         "programs without pickle.")
    return root, entries


def _is_payload(name: str) -> bool:
    return any(name.startswith(folder) and pattern.fullmatch(name[len(folder):])
               for folder, pattern in PAYLOADS.values())


def _check_payloads(path: Path, entries: dict, config, folder: str, pattern) -> None:
    """Every weight or constant is raw tensor bytes of an entry that exists: no pickle, no object."""
    body = config.get("config") if isinstance(config, dict) else None
    if not isinstance(body, dict):
        raise ValueError(f"{path} is damaged: its {folder} config has no 'config' map. Export it again.")
    for fqn, meta in body.items():
        raw = (isinstance(meta, dict) and meta.get("use_pickle") is False and isinstance(meta.get("tensor_meta"), dict)
               and isinstance(meta.get("path_name"), str) and pattern.fullmatch(meta["path_name"]))
        if not raw:
            raise ValueError(f"{path} stores {fqn!r} with pickle or as a custom object; prunelab loads programs "
                             "without pickle and refuses it.")
        if folder + meta["path_name"] not in entries:
            raise ValueError(f"{path} is damaged: {fqn!r} points at {meta['path_name']!r}, which is not in it.")

