"""Writing export files all-or-nothing, and reading them back only when they are ours and intact.

Every export goes to a temporary file in the destination folder and is renamed into place
(``os.replace``, atomic on one filesystem) only when it is complete. A failure anywhere (a write,
a rename, an interrupt) leaves every destination with its previous file: a multi-file export keeps
a second name (a hard link) of each file it replaces until all are in place, and puts them back if
one rename fails. Only files the failed call created are removed, and an ``OSError`` says which
paths failed, what happened to them, and what to do.

Files carry a format marker (``"format": "prunelab.<kind>"``) and a SHA-256 in the safetensors
header that covers everything a loader reads: the tensors' names, dtypes, shapes and bytes, and
every metadata entry (layout, shapes, module specs). A foreign, damaged or edited file is refused
with a ``ValueError`` naming the file instead of loading garbage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

import torch

MARKER_PREFIX = "prunelab."
VERSION = 2  # 2: the checksum covers the header's metadata too (1 covered the tensors only)


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


def _explain(paths: list[Path], error: OSError, kept: list[Path], stranded: dict[Path, Path]) -> OSError:
    reason = error.strerror or str(error)
    names = " and ".join(str(p) for p in paths)
    if stranded:  # rolling back failed too: say exactly where the old files are
        where = "; ".join(f"the previous {final} is kept as {backup}" if backup else f"{final} is new and incomplete"
                          for final, backup in stranded.items())
        outcome = f"Putting the previous files back failed as well: {where}. Fix this by hand."
    elif kept:
        outcome = ("The previous " + " and ".join(str(p) for p in kept) + (" are" if len(kept) > 1 else " is")
                   + " unchanged; nothing new was written.")
    else:
        outcome = "Nothing was written there."
    return type(error)(error.errno, f"could not write {names}: {reason}. {outcome} Check that the folder exists "
                                    "and is writable and that the disk has free space, or choose another path.")


def _backup(final: Path) -> Path:
    """A second name for the existing ``final`` beside it (a hard link: no copy; a copy where the
    filesystem has no links), so that a failed multi-file replace can put it back."""
    for _ in range(100):
        backup = final.parent / f".{final.name}.{secrets.token_hex(6)}.old"
        try:
            os.link(final, backup)
            return backup
        except FileExistsError:
            continue
        except OSError:  # no hard links on this filesystem
            break
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old")
    os.close(fd)
    shutil.copy2(final, name)
    return Path(name)


def _roll_back(placed: list[Path], backups: dict[Path, Path]) -> dict[Path, Path]:
    """Undo the replaces done so far: the previous file back where one was, the new one removed
    where there was none. Returns ``{final: backup}`` for the files that could not be put back
    (``backup`` None: a new file that could not be removed)."""
    stranded = {}
    for final in reversed(placed):
        try:
            if final in backups:
                os.replace(backups[final], final)
            else:
                final.unlink()
        except OSError:
            stranded[final] = backups.get(final)
    return stranded


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield temporary paths beside each of ``paths``; when the block succeeds, move each into
    place. All or nothing, whatever fails (a write, a rename, an interrupt): every path keeps its
    previous file, and only the files this call created are removed. Before the first rename each
    existing file gets a second name (a hard link), so that a failure at the second rename puts the
    first one back. An ``OSError`` is re-raised with the paths, what happened to them, and what to do.

    Example:
        >>> with atomic_paths("a.safetensors", "a.pt2") as (tmp_a, tmp_b):
        ...     write_file(tmp_a, data_a); write_file(tmp_b, data_b)
    """
    finals = [Path(p) for p in paths]
    for final in finals:
        if final.is_dir():
            raise IsADirectoryError(21, f"{final} is a folder; give a file name inside it, such as "
                                        f"{final / 'model'}")
    existed = [f for f in finals if f.exists()]
    temps: list[Path] = []
    backups: dict[Path, Path] = {}
    placed: list[Path] = []
    try:
        for final in finals:
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; exports get the usual permissions
        for tmp in temps:
            os.chmod(tmp, mode)
        if len(finals) > 1:  # one rename is atomic by itself; several need the old files kept
            for final in finals:
                if final.exists():
                    backups[final] = _backup(final)
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
            placed.append(final)
    except BaseException as e:
        stranded = _roll_back(placed, backups)
        for p in temps + [b for f, b in backups.items() if f not in stranded]:  # never a stranded backup
            with contextlib.suppress(OSError):
                p.unlink()
        if isinstance(e, OSError) and not getattr(e, "_prunelab_explained", False):
            err = _explain(finals, e, [f for f in existed if f not in stranded], stranded)
            err._prunelab_explained = True
            raise err from None
        raise
    for backup in backups.values():
        with contextlib.suppress(OSError):
            backup.unlink()


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


def seal(tensors_digest: str, meta: Mapping[str, str]) -> str:
    """The checksum written in a header: SHA-256 over the tensors' digest (names, dtypes, shapes,
    bytes: everything the safetensors header says about them, and their data) and every metadata
    entry but the checksum itself (format, version, layout, shapes, module specs). Nothing a loader
    reads is left outside it.

    Example:
        >>> seal(digest(tensors), {"format": "prunelab.sparse", "version": "2", "prunelab": "{}"})
    """
    h = hashlib.sha256(tensors_digest.encode())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], kind: str, info: Mapping | None = None) -> bytes:
    """``tensors`` as safetensors with the prunelab marker ``kind``, ``info`` (JSON) and a
    checksum over both (:func:`seal`) in the header."""
    from safetensors.torch import save

    tensors = plain_tensors(tensors)
    meta = {"format": marker(kind), "version": str(VERSION),
            "prunelab": json.dumps(dict(info or {}), separators=(",", ":"))}
    meta["sha256"] = seal(digest(tensors), meta)
    return save(tensors, metadata=meta)


def save_safetensors(path, tensors: Mapping[str, torch.Tensor], kind: str, info: Mapping | None = None) -> Path:
    """Write :func:`safetensors_bytes` to ``path`` all-or-nothing."""
    return write_bytes(path, safetensors_bytes(tensors, kind, info))


def load_safetensors(path, kind: str, loader_name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and info of a prunelab ``kind`` file, returned only when its checksum covers all
    of it; a clear ValueError for anything else (foreign, damaged, edited, another version)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    data = read_file(path)
    try:
        meta = _header_metadata(data)
        tensors = load(data)
    except (SafetensorError, ValueError, RecursionError, UnicodeDecodeError, OverflowError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (it is damaged, truncated or of another "
                         f"kind): {e}. Export it again with prunelab.") from None
    check_marker(path, meta.get("format"), kind, loader_name)
    if meta.get("version") != str(VERSION):
        raise ValueError(f"{path} was written by a prunelab with file version {meta.get('version')!r}; this one "
                         f"reads version {VERSION} (its checksum covers the whole header). Export it again with "
                         "this prunelab.")
    if meta.get("sha256") != seal(digest(tensors), meta):
        raise ValueError(f"{path} is damaged: its tensors or header do not match the checksum written at export. "
                         "Export it again (or copy it again: the copy may have been cut short).")
    try:
        info = json.loads(meta.get("prunelab", "{}"))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is damaged: its prunelab header is not valid JSON ({e}).") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path} is damaged: its prunelab header is not a JSON object. Export it again.")
    return tensors, info


def _header_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("the header length is out of range")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ValueError("the header's metadata is not a map of strings")
    return meta or {}


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
    "int8": "prunelab.load_int8",
}
EXPORTED_AS = {"program": "structured"}  # the .pt2 program is one half of a "structured" export


def _describe(kind: str) -> str:
    if kind in EXPORTED_AS:
        return f"the .pt2 {kind} of a prunelab {EXPORTED_AS[kind]!r} export"
    return f"a prunelab {kind!r} export"


def check_marker(path: Path, found: str | None, kind: str, loader_name: str) -> None:
    """A ValueError unless the marker ``found`` in ``path`` is the one of ``kind``; it names the
    right loader for another prunelab file and the export that writes ``kind`` for a foreign one.

    Example:
        >>> check_marker(path, meta.get("format"), "sparse", "prunelab.load_sparse")
    """
    if found == marker(kind):
        return
    if isinstance(found, str) and found.startswith(MARKER_PREFIX):
        other = found[len(MARKER_PREFIX):]
        how = FORMAT_LOADERS.get(other, "the matching prunelab loader")
        raise ValueError(f"{path} is {_describe(other)}, not {_describe(kind)}: load it with {how}, "
                         f"not {loader_name}.")
    written_by = EXPORTED_AS.get(kind, kind)
    raise ValueError(f"{path} is not {_describe(kind)} (no prunelab format marker in it). "
                     f"{loader_name} reads files written by pruner.export(path, format={written_by!r}).")
