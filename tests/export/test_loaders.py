"""Every loader refuses truncated, foreign and random files with an error naming the file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import prunelab as pl


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export of each weights format from the CNN demo (half its units pruned; the .pt2
    program is left out: loading it is tested with torch.export in test_export.py)."""
    folder = tmp_path_factory.mktemp("exports")
    d = pl.demos.load("digits-cnn")
    pruner = pl.Pruner(d.model, d.val)
    pruner.prune(0.5, granularity="structured", scope="layer")
    mp = pytest.MonkeyPatch()
    mp.setattr("prunelab.export.structured.program_bytes", lambda *a: b"not needed here")
    try:
        files = {fmt: pruner.export(folder / f"{fmt}.safetensors", fmt).path
                 for fmt in ("state_dict", "sparse", "structured")}
    finally:
        mp.undo()
    return files


LOADERS = {
    "state_dict": pl.load_state_dict,
    "sparse": pl.load_sparse,
    "structured": lambda path: pl.load_structured(path, pl.demos.load("digits-cnn").model),
}


def damaged(kind: str, good: bytes, folder):
    """(path, expected message) for a truncated, a random, a foreign and a bit-flipped file."""
    cut = folder / f"{kind}-truncated.safetensors"
    cut.write_bytes(good[: len(good) // 2])
    noise = folder / f"{kind}-random.safetensors"
    noise.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                    dtype=torch.uint8).numpy().tobytes())
    empty = folder / f"{kind}-empty.safetensors"
    empty.write_bytes(b"")
    foreign = folder / f"{kind}-foreign.safetensors"
    save_file({"0.weight": torch.ones(16, 1, 3, 3)}, foreign)  # valid safetensors, not ours
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF  # in the tensor data: the checksum catches it
    bad_bits = folder / f"{kind}-flipped.safetensors"
    bad_bits.write_bytes(bytes(flipped))
    return [(cut, "is not a readable safetensors file"), (noise, "is not a readable safetensors file"),
            (empty, "is not a readable safetensors file"),
            (foreign, f"is not a prunelab '{kind}' export"), (bad_bits, "is damaged")]


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_bad_files_are_refused_with_the_file_named(exported, kind, tmp_path):
    good = exported[kind].read_bytes()
    LOADERS[kind](exported[kind])  # the intact file loads
    for path, message in damaged(kind, good, tmp_path):
        with pytest.raises(ValueError, match=f"{path.name} {message}"):
            LOADERS[kind](path)


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_another_formats_file_names_its_loader(exported, kind):
    other = "sparse" if kind != "sparse" else "state_dict"
    with pytest.raises(ValueError, match=f"is a prunelab '{other}' export, not a prunelab '{kind}' export: load it with"):
        LOADERS[kind](exported[other])


def test_structured_without_a_model_refuses_a_program_that_is_not_one(tmp_path):
    (tmp_path / "m.pt2").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"m.pt2 is not a readable .pt2 program .*not a zip archive"):
        pl.load_structured(tmp_path / "m")


def test_structured_refuses_a_model_of_another_class(exported):
    with pytest.raises(ValueError, match="fresh instance of Sequential"):
        pl.load_structured(exported["structured"], pl.demos.load("digits-mlp").model)


def test_missing_and_folder_paths_say_so(tmp_path):
    for load in (pl.load_state_dict, pl.load_sparse):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load(tmp_path / "nope.safetensors")
        with pytest.raises(IsADirectoryError, match="is a folder"):
            load(tmp_path)
