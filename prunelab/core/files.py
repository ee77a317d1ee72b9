"""Writing export files all-or-nothing, and reading them back only when they are ours and intact.

Every export goes to a temporary file in the destination folder and is renamed into place
(``os.replace``, atomic on one filesystem) only when it is complete. On any error the temporary
files are removed and an ``OSError`` says which path failed and what to do, so a full disk or an
unwritable folder never leaves a half-written model behind.

Files carry a format marker (``"format": "prunelab.<kind>"``) and a SHA-256 of their tensor data
in the safetensors header, so a foreign or damaged file is refused with a ``ValueError`` naming
the file instead of loading garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

import torch

MARKER_PREFIX = "prunelab."
VERSION = 1


def marker(kind: str) -> str:
    return MARKER_PREFIX + kind


# ---------------------------------------------------------------------------- writing

def write_all(f, data: bytes) -> None:
    """Write ``data`` to the open file ``f`` in chunks; every export writes through here (one
    place, so tests can simulate a full disk).

    Example:
        >>> with open(tmp, "wb") as f:
        ...     write_all(f, b"bytes")
    """
    view = memoryview(data)
    step = 1 << 24
    for i in range(0, len(view), step):
        f.write(view[i:i + step])


def _explain(paths: list[Path], error: OSError) -> OSError:
    reason = error.strerror or str(error)
    names = " and ".join(str(p) for p in paths)
    return type(error)(error.errno, f"could not write {names}: {reason}. Nothing was written there. Check that the "
                                "folder exists and is writable and that the disk has free space, or choose "
                                "another path.")


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield temporary paths beside each of ``paths``; when the block succeeds, move each into
    place. On any error remove every temporary (and any file already moved, so a multi-file
    export is all-or-nothing) and re-raise; an ``OSError`` gets the paths and what to do."""
    finals = [Path(p) for p in paths]
    for final in finals:
        if final.is_dir():
            raise IsADirectoryError(21, f"{final} is a folder; give a file name inside it, such as "
                                        f"{final / 'model'}")
    temps: list[Path] = []
    moved: list[Path] = []
    try:
        for final in finals:
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; exports get the usual permissions
        for tmp, final in zip(temps, finals):
            os.chmod(tmp, mode)
            os.replace(tmp, final)
            moved.append(final)
    except BaseException as e:
        for p in temps + moved:
            with contextlib.suppress(OSError):
                p.unlink()
        if isinstance(e, OSError) and not getattr(e, "_prunelab_explained", False):
            err = _explain(finals, e)
            err._prunelab_explained = True
            raise err from None
        raise


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (a temporary from :func:`atomic_paths`) and flush it to disk."""
    with open(path, "wb") as f:
        write_all(f, data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` all-or-nothing."""
    path = Path(path)
    with atomic_paths(path) as (tmp,):
        write_file(tmp, data)
    return path


# ---------------------------------------------------------------------------- safetensors with a marker

def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory (safetensors refuses shared storage; tied
    weights are stored once per name, so ``load_state_dict`` on a fresh model just works)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().to("cpu")
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else None
        if key in seen or not t.is_contiguous():
            t = t.contiguous().clone()
        elif key is not None:
            seen.add(key)
        out[name] = t
    return out


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], kind: str, info: Mapping | None = None) -> bytes:
    """``tensors`` as safetensors with the prunelab marker ``kind``, a checksum, and ``info``
    (JSON) in the header."""
    from safetensors.torch import save

    tensors = plain_tensors(tensors)
    meta = {"format": marker(kind), "version": str(VERSION), "sha256": digest(tensors),
            "prunelab": json.dumps(dict(info or {}), separators=(",", ":"))}
    return save(tensors, metadata=meta)


def save_safetensors(path, tensors: Mapping[str, torch.Tensor], kind: str, info: Mapping | None = None) -> Path:
    """Write :func:`safetensors_bytes` to ``path`` all-or-nothing."""
    return write_bytes(path, safetensors_bytes(tensors, kind, info))


def load_safetensors(path, kind: str, loader_name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and info of a prunelab ``kind`` file; a clear ValueError for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    data = read_file(path)
    try:
        tensors = load(data)
        meta = _header_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (it is damaged, truncated or of another "
                         f"kind): {e}. Export it again with prunelab.") from None
    check_marker(path, meta.get("format"), kind, loader_name)
    if meta.get("sha256") != digest(tensors):
        raise ValueError(f"{path} is damaged: its tensor data does not match the checksum written at export. "
                         "Export it again (or copy it again: the copy may have been cut short).")
    try:
        info = json.loads(meta.get("prunelab", "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is damaged: its prunelab header is not valid JSON ({e}).") from None
    return tensors, info


def _header_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("the header length is out of range")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    return header.get("__metadata__") or {}


def read_file(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(2, f"{path} does not exist: check the path (exports are written where "
                                   "pruner.export(path, ...) was told).")
    if path.is_dir():
        raise IsADirectoryError(21, f"{path} is a folder, not an exported file.")
    return path.read_bytes()


FORMAT_LOADERS = {
    "state_dict": "prunelab.load_state_dict",
    "sparse": "prunelab.load_sparse",
    "structured": "prunelab.load_structured",
    "program": "prunelab.load_structured (or load_program)",
    "recipe": "prunelab.apply_recipe",
}


def check_marker(path: Path, found: str | None, kind: str, loader_name: str) -> None:
    if found == marker(kind):
        return
    if isinstance(found, str) and found.startswith(MARKER_PREFIX):
        other = found[len(MARKER_PREFIX):]
        how = FORMAT_LOADERS.get(other, "the matching prunelab loader")
        raise ValueError(f"{path} is a prunelab {other!r} export, not {kind!r}: load it with {how}, "
                         f"not {loader_name}.")
    raise ValueError(f"{path} is not a prunelab {kind!r} export (no prunelab format marker in it). "
                     f"{loader_name} reads files written by pruner.export(path, format={kind!r}).")
