"""Nothing from a file is executed, and every loader refuses a damaged, edited or foreign file with
an error naming it: a crafted .pt2 with a pickle payload (duplicate entries, pickled constants,
custom objects, sample inputs) never runs it, and fuzzed files (truncated, bit-flipped,
duplicated-entry, foreign) never crash raw."""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import prunelab as pl
from prunelab.export.program import PROGRAM_INFO, entries_digest


class Payload:
    """Unpickling this writes ``flag``: the proof that code from a file ran."""

    def __init__(self, flag):
        self.flag = str(flag)

    def __reduce__(self):
        return exec, (f"open({self.flag!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every file format, from the MLP demo with half its units pruned."""
    folder = tmp_path_factory.mktemp("trust")
    d = pl.demos.load("digits-mlp")
    pruner = pl.Pruner(d.model, d.val)
    pruner.prune(0.5, granularity="structured")
    files = {fmt: pruner.export(folder / f"{fmt}.safetensors", fmt).path for fmt in ("state_dict", "sparse")}
    weights, program = pruner.export(folder / "structured", "structured").files
    files.update(structured=weights, program=program, recipe=pruner.export(folder / "r.json", "recipe").path)
    return files


LOADERS = {
    "state_dict": pl.load_state_dict,
    "sparse": pl.load_sparse,
    "structured": lambda path: pl.load_structured(path, pl.demos.load("digits-mlp").model),
    "program": pl.load_program,
    "recipe": lambda path: pl.recipe.as_recipe(path),
}


def entries(path) -> tuple[str, list[tuple[str, bytes]]]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        return names[0].split("/")[0], [(n.split("/", 1)[1], z.read(n)) for n in names]


def archive(path, root: str, items: list[tuple[str, bytes]], reseal: bool = True):
    """Write ``items`` (duplicates allowed) as a zip; with ``reseal``, recompute prunelab's checksum as
    an attacker would, so that only the content checks stand between the file and torch."""
    if reseal:
        last = dict(items)
        info = json.loads(last[PROGRAM_INFO])
        info["sha256"] = entries_digest(last)
        items = [(n, json.dumps(info).encode() if n == PROGRAM_INFO else b) for n, b in items]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names: that is the point
        with zipfile.ZipFile(path, "w") as z:
            for name, body in items:
                z.writestr(f"{root}/{name}", body)
    return path


def pointing_at_pickle(items, config: str, fqn: str, path_name: str, use_pickle: bool):
    body = json.loads(dict(items)[config])
    body["config"][fqn] = {"path_name": path_name, "is_param": False, "use_pickle": use_pickle,
                           "tensor_meta": None}
    return json.dumps(body).encode()


CONSTANTS = "data/constants/model_constants_config.json"
WEIGHTS = "data/weights/model_weights_config.json"


def crafted(program, folder, flag) -> dict:
    """Archives that would run ``Payload(flag)`` if any reader unpickled what they point at."""
    root, items = entries(program)
    payload = pickle.dumps(Payload(flag))
    harmless = dict(items)[CONSTANTS]
    opaque = pointing_at_pickle(items, CONSTANTS, "evil", "opaque_obj_0", True)
    pickled_tensor = pointing_at_pickle(items, CONSTANTS, "evil", "tensor_9", True)
    pickled_weight = json.loads(dict(items)[WEIGHTS])
    next(iter(pickled_weight["config"].values()))["use_pickle"] = True
    others = [(n, b) for n, b in items if n != CONSTANTS]
    cases = {
        # the case of issue 10: zipfile reads the last duplicate, torch's reader the first
        "duplicate config, harmless then pickled": others + [(CONSTANTS, harmless), (CONSTANTS, opaque),
                                                             ("data/constants/opaque_obj_0", payload)],
        "duplicate config, pickled then harmless": others + [(CONSTANTS, opaque), (CONSTANTS, harmless),
                                                             ("data/constants/opaque_obj_0", payload)],
        "pickled opaque constant": others + [(CONSTANTS, opaque), ("data/constants/opaque_obj_0", payload)],
        "pickled tensor constant": others + [(CONSTANTS, pickled_tensor), ("data/constants/tensor_9", payload)],
        "custom object": others + [(CONSTANTS, pointing_at_pickle(items, CONSTANTS, "evil", "custom_obj_0", True)),
                                   ("data/constants/custom_obj_0", payload)],
        "pickled weight": [(n, json.dumps(pickled_weight).encode() if n == WEIGHTS else b) for n, b in items],
        "sample inputs": [(n, payload if n == "data/sample_inputs/model.pt" else b) for n, b in items],
        "legacy weights file": items + [("data/weights/model.pt", payload)],
        "duplicate payload entry": items + [(items[0][0], payload)],
    }
    return {name: archive(folder / f"{i}.pt2", root, case) for i, (name, case) in enumerate(cases.items())}


def test_the_payload_is_live(tmp_path):
    flag = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(flag)))  # what an unpickler would do
    assert flag.read_text() == "ran"


def test_torch_alone_would_run_it(exported, tmp_path):
    """Without prunelab's check torch.export.load unpickles the opaque constant: the cases below matter."""
    flag = tmp_path / "ran"
    path = crafted(exported["program"], tmp_path, flag)["pickled opaque constant"]
    try:
        torch.export.load(path)
    except Exception:  # whether it then fails or not, the payload ran first
        pass
    assert flag.read_text() == "ran"


def test_no_crafted_program_runs_its_payload(exported, tmp_path):
    flag = tmp_path / "ran"
    for name, path in crafted(exported["program"], tmp_path, flag).items():
        for load in (pl.load_program, lambda p: pl.load_structured(p)):
            with pytest.raises(ValueError, match=str(path.name)):
                load(path)
            assert not flag.exists(), f"{name}: the payload ran"


@pytest.mark.parametrize("case, message", [
    ("duplicate config, harmless then pickled", "two entries named"),
    ("pickled opaque constant", "an entry prunelab does not write"),
    ("pickled tensor constant", "with pickle or as a custom object"),
    ("pickled weight", "with pickle or as a custom object"),
    ("sample inputs", "pickled sample inputs"),
    ("legacy weights file", "an entry prunelab does not write"),
])
def test_crafted_programs_are_refused_for_what_they_are(exported, tmp_path, case, message):
    path = crafted(exported["program"], tmp_path, tmp_path / "ran")[case]
    with pytest.raises(ValueError, match=message):
        pl.load_program(path)


def test_broken_json_inside_a_program_is_a_clear_error(exported, tmp_path):
    root, items = entries(exported["program"])
    for name in ("models/model.json", CONSTANTS, WEIGHTS):
        path = archive(tmp_path / "b.pt2", root, [(n, b"{not json" if n == name else b) for n, b in items])
        with pytest.raises(ValueError, match=f"b.pt2 is damaged: its entry '{name}' is not valid JSON"):
            pl.load_program(path)


def test_an_edited_program_fails_its_checksum(exported, tmp_path):
    root, items = entries(exported["program"])
    edited = [(n, b + b" " if n == "models/model.json" else b) for n, b in items]  # still valid JSON
    with pytest.raises(ValueError, match="do not match the checksum"):
        pl.load_program(archive(tmp_path / "e.pt2", root, edited, reseal=False))


def test_foreign_files_given_to_the_program_loader(exported, tmp_path):
    flag = tmp_path / "ran"
    torch.save({"w": Payload(flag)}, tmp_path / "checkpoint.pt")  # a zip with a pickle inside
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    for path in (tmp_path / "checkpoint.pt", tmp_path / "other.zip", exported["sparse"]):
        with pytest.raises(ValueError, match=path.name):
            pl.load_program(path)
    assert not flag.exists()


# ---------------------------------------------------------------------------- fuzzing every loader

def damaged_copies(good: bytes):
    """Truncations and single-byte flips spread over the whole file (headers included)."""
    for cut in sorted({0, 1, 8, len(good) // 10, len(good) // 2, len(good) - 1}):
        yield f"cut{cut}", good[:cut]
    for i in range(24):
        at = (len(good) - 1) * i // 23
        flipped = bytearray(good)
        flipped[at] ^= 0x5A
        yield f"flip{at}", bytes(flipped)


def same(a, b) -> bool:
    if isinstance(a, torch.export.ExportedProgram):
        a, b = a.module(), b.module()
    if isinstance(a, torch.nn.Module):
        x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
        return torch.equal(a(x), b(x))
    if isinstance(a, dict) and a and all(isinstance(v, torch.Tensor) for v in a.values()):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_fuzzed_files_are_refused_or_load_intact(exported, kind, tmp_path):
    """A damaged file gives a ValueError naming it; where a changed byte is one no loader reads (a
    zip timestamp) the result is the intact one. A recipe (hand-editable JSON, no checksum) may
    load as another recipe, but only one that passes its schema."""
    good = exported[kind].read_bytes()
    intact = LOADERS[kind](exported[kind])
    refused = 0
    for name, data in damaged_copies(good):
        path = tmp_path / f"{kind}-{name}{exported[kind].suffix}"
        path.write_bytes(data)
        try:
            got = LOADERS[kind](path)
        except ValueError as e:
            assert path.name in str(e) or kind == "recipe", str(e)
            refused += 1
            continue
        assert kind == "recipe" or same(got, intact), f"{name} loaded as something else"
    assert refused >= 12


def with_info(data: bytes, edit) -> bytes:
    """The safetensors ``data`` with its prunelab header info changed by ``edit`` (tensors kept)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    info = json.loads(header["__metadata__"]["prunelab"])
    edit(info)
    header["__metadata__"]["prunelab"] = json.dumps(info)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n:]


def first(mapping: dict) -> dict:
    return next(iter(mapping.values()))


EDITS = {
    "sparse shape": ("sparse", lambda info: first(info["tensors"])["shape"].append(2)),
    "sparse mask kind": ("sparse", lambda info: first(info["tensors"]).update(
        mask={"zlib": "packed", "packed": "zlib"}[first(info["tensors"])["mask"]])),
    "sparse layout a list": ("sparse", lambda info: info.update(tensors=[1, 2])),
    "structured attribute": ("structured", lambda info: first(info["modules"])["attrs"].update(forward=1)),
    "structured shape": ("structured", lambda info: first(first(info["modules"])["shapes"]).append(10**6)),
    "structured modules a list": ("structured", lambda info: info.update(modules=[1])),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_layout_or_module_header_is_refused(exported, tmp_path, edit):
    kind, change = EDITS[edit]
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(with_info(exported[kind].read_bytes(), change))
    with pytest.raises(ValueError, match="edited.safetensors is damaged: its tensors or header do not match"):
        LOADERS[kind](edited)


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_header_with_a_recomputed_checksum_is_still_a_clear_error(exported, tmp_path, edit, monkeypatch):
    """A checksum is no signature: with it recomputed, each header entry is still checked before use."""
    from prunelab.core import files

    kind, change = EDITS[edit]
    monkeypatch.setattr(files, "seal", lambda digest, meta: "accepted")  # as if the attacker re-sealed it
    data = with_info(exported[kind].read_bytes(), change)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["sha256"] = "accepted"
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    edited = tmp_path / "resealed.safetensors"
    edited.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    model = pl.demos.load("digits-mlp").model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="resealed.safetensors"):
        pl.load_sparse(edited) if kind == "sparse" else pl.load_structured(edited, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_a_program_archive_or_recipe_given_to_the_weight_loaders(exported):
    for kind in ("state_dict", "sparse"):  # (load_structured takes "x.pt2" to mean "x.safetensors")
        for other in ("program", "recipe"):
            with pytest.raises(ValueError, match=exported[other].name):
                LOADERS[kind](exported[other])


def test_foreign_safetensors_and_an_old_version_are_refused(tmp_path, exported):
    save_file({"w": torch.ones(2)}, tmp_path / "f.safetensors", metadata={"format": "prunelab.sparse"})
    with pytest.raises(ValueError, match="file version None.*Export it again"):
        pl.load_sparse(tmp_path / "f.safetensors")


def test_a_plain_torch_program_is_named_as_not_ours_with_the_export_that_writes_ours(tmp_path):
    plain = torch.export.export(pl.demos.architecture("digits-mlp"), (torch.randn(2, 64),))
    torch.export.save(plain, tmp_path / "plain.pt2")
    with pytest.raises(ValueError) as info:
        pl.load_program(tmp_path / "plain.pt2")
    message = str(info.value)
    assert "plain.pt2 is not the .pt2 program of a prunelab 'structured' export" in message
    assert "pruner.export(path, format='structured')" in message and "format='program'" not in message
