"""What the zoo tests measure for themselves, never through prunelab: the model's own outputs in a
plain loop, zeros counted in the masks and the parameters, and the shapes masks must have."""

from __future__ import annotations

import math

import torch
from torch import nn

from .models import Entry, Heads, batches, call, next_token_accuracy, next_token_loss


def matrix_weights(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{parameter name: shape}`` of every matrix weight: a parameter with two or more dimensions
    longer than 1 (so a Linear/Conv/Conv1D/RNN weight, an embedding table, ViT's position
    embeddings [1, 17, 16]; not a class token [1, 1, 16])."""
    return {n: tuple(p.shape) for n, p in model.named_parameters() if sum(d > 1 for d in p.shape) >= 2}


def named_by(pruner) -> dict[str, str]:
    """``{parameter name: how it is covered}`` for every parameter the Pruner prunes (a layer's
    weight) or names in ``skipped`` (by the parameter's name or by its module's)."""
    covered = {l.weight_name: "layer" for l in pruner.layers}
    for name, _ in pruner.model.named_parameters():
        if name in covered:
            continue
        module = name.rpartition(".")[0]
        for key in (name, module):
            if key in pruner.skipped:
                covered[name] = f"skipped: {pruner.skipped[key]}"
    return covered


def own_measure(entry: Entry, model: nn.Module, data) -> dict[str, float]:
    """Accuracy and loss from the model's own outputs, in eval mode (its mode restored after):
    top-1 against class labels; for a language model next-token accuracy, the mean next-token
    cross-entropy over the counted tokens, and its exp, the perplexity."""
    was = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            outs, labels = zip(*[(call(model, x), y) for x, y in batches(data)])
    finally:
        for m, flag in was.items():
            m.train(flag)
    out, y = torch.cat(outs), torch.cat(labels)
    if entry.language:
        loss = float(next_token_loss(out, y))
        return {"accuracy": next_token_accuracy(out, y), "loss": loss, "perplexity": math.exp(loss),
                "samples": len(y)}
    return {"accuracy": int((out.argmax(1) == y).sum()) / len(y),
            "loss": float(nn.functional.cross_entropy(out, y)), "samples": len(y)}


def assert_measures_like_own_loop(entry: Entry, pruner, data) -> None:
    """``pruner.evaluate()`` equals the plain loop over the model's own outputs: the same accuracy
    (the same count of right answers), the same loss to 1e-5, the same perplexity for an LM."""
    m = pruner.evaluate()
    own = own_measure(entry, pruner.model, data)
    assert m.samples == own["samples"]
    assert round(m.accuracy * own["samples"]) == round(own["accuracy"] * own["samples"]), (m.accuracy, own)
    assert abs(m.accuracy - own["accuracy"]) < 1e-9, (m.accuracy, own)
    assert m.loss is not None and math.isclose(m.loss, own["loss"], rel_tol=1e-5, abs_tol=1e-6), (m.loss, own)
    if entry.language and entry.hf:  # perplexity is reported for language models taken as they come
        assert math.isclose(m.perplexity, own["perplexity"], rel_tol=1e-5), (m.perplexity, own)


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2's matrices): a Linear whose weight is stored [in, out]."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def as_rows(model: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (shaped like parameter ``name``) as [output units, inputs per unit]: Conv1D
    weights transposed, a convolution's kernel flattened into its rows."""
    module = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if is_conv1d(module):
        tensor = tensor.t()
    return tensor.reshape(tensor.shape[0], -1)


def assert_counts_exact(pruner) -> None:
    """The sparsity the Pruner reports equals zeros counted directly: per layer, in its mask and in
    the weight itself; overall, over all prunable weights."""
    sparsity = pruner.sparsity()
    params = dict(pruner.model.named_parameters())
    zeros = total = 0
    for layer in pruner.layers:
        mask, weight = pruner.mask(layer.name), params[layer.weight_name]
        assert mask.shape == weight.shape
        dropped = int((~mask).sum())
        assert int((weight[~mask] != 0).sum()) == 0, f"{layer.name}: a masked weight is not zero"
        assert int((weight == 0).sum()) == dropped, f"{layer.name}: zeros in the weight differ from the mask"
        # the same fraction, to the last bits of a float (1 - kept/n and dropped/n may round apart)
        assert math.isclose(sparsity[layer.name], dropped / weight.numel(), rel_tol=0, abs_tol=1e-12), \
            (layer.name, sparsity[layer.name], dropped)
        zeros, total = zeros + dropped, total + weight.numel()
    assert math.isclose(pruner.overall_sparsity(), zeros / total, rel_tol=0, abs_tol=1e-12)


def removed_units(model: nn.Module, name: str, mask: torch.Tensor | None, inputs: bool = False) -> set[int]:
    """Output units (or, with ``inputs``, input features) of parameter ``name`` whose weights
    are all masked."""
    if mask is None:
        return set()
    rows = as_rows(model, name, mask)
    if inputs:
        module = model.get_submodule(name.rpartition(".")[0])
        w = mask.t() if is_conv1d(module) else mask
        rows = w.transpose(0, 1).reshape(w.shape[1], -1)
    return set(torch.nonzero(~rows.any(1)).flatten().tolist())


def assert_whole_units(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Each structured mask is whole units: an output row is kept or dropped entirely apart from
    the input features dropped across every row (a mask that is an outer product)."""
    for name, mask in masks.items():
        if mask.dim() < 2:
            continue
        module = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        m = mask.t() if is_conv1d(module) else mask
        m = m.reshape(m.shape[0], m.shape[1], -1)
        assert bool((m == m[:, :, :1]).all()), f"{name}: a kernel is partly masked"
        m = m[:, :, 0]
        rows, cols = m.any(1), m.any(0)
        assert torch.equal(m, rows[:, None] & cols[None, :]), f"{name}: masked weights that are not whole units"


def assert_two_of_four(model: nn.Module, masks: dict[str, torch.Tensor], layers, warned: str,
                       blocked: dict[str, str]) -> None:
    """Every layer has 2 of every 4 consecutive weights of each row kept, or is left dense and
    listed, with its row length, in ``pruner.blocked("2:4")``, and the warning 2:4 gave says so
    (short: a row length shared by many layers once, with the count)."""
    params = dict(model.named_parameters())
    for layer in layers:
        mask = masks.get(layer.weight_name)
        rows = as_rows(model, layer.weight_name, torch.ones_like(params[layer.weight_name]) if mask is None else mask)
        if rows.shape[1] % 4:
            said = f"rows are {rows.shape[1]} weights long"
            assert mask is None and said in blocked.get(layer.name, "") and said in warned, \
                f"2:4 left {layer.name} (rows of {rows.shape[1]}) dense without saying so: {warned!r}"
            continue
        assert mask is not None, f"{layer.name}: rows of {rows.shape[1]} but left dense by 2:4"
        kept = rows.reshape(rows.shape[0], -1, 4).sum(-1)
        assert bool((kept == 2).all()), f"{layer.name}: not 2 of every 4"


def state_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Within ``tol`` of each other, relative to the outputs' scale (at least 1)."""
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def removed_heads(model: nn.Module, block: Heads, masks: dict[str, torch.Tensor]) -> dict[str, set[int]]:
    """``{"q" | "k" | "v": heads whose features are all removed, "o": heads whose input
    features of the output projection are all removed}``, after checking that no head is removed
    in part (the issue: q/k/v keeping 50 of 64 features, which no reshape into heads survives)."""
    out = {}
    for part, count in (("q", block.heads), ("k", block.kv_heads), ("v", block.kv_heads), ("o", block.heads)):
        if part == "o":
            name, offset = block.o, 0
            gone = removed_units(model, name, masks.get(name), inputs=True)
        else:
            name, offset = getattr(block, part)
            gone = removed_units(model, name, masks.get(name))
        heads = set()
        for h in range(count):
            features = set(range(offset + h * block.head_dim, offset + (h + 1) * block.head_dim))
            hit = features & gone
            assert not hit or hit == features, f"{name}: head {h} loses {len(hit)} of its {block.head_dim} features"
            if hit:
                heads.add(h)
        out[part] = heads
    return out


def assert_whole_heads(model: nn.Module, blocks: list[Heads], masks: dict[str, torch.Tensor]) -> int:
    """Every attention block lost whole heads, the same in q, k, v and o (grouped-query
    attention: whole key/value groups, with all the query heads that read them).

    Returns: the number of query heads removed, over all blocks."""
    removed = 0
    for block in blocks:
        gone = removed_heads(model, block, masks)
        per_group = block.heads // block.kv_heads
        groups = gone["k"]
        assert gone["v"] == groups, f"{block.q[0]}: keys and values lose different heads {gone}"
        assert gone["q"] == {h for h in range(block.heads) if h // per_group in groups}, \
            f"{block.q[0]}: the query heads removed are not those of the key/value heads removed {gone}"
        assert gone["o"] == gone["q"], f"{block.o}: its input columns do not follow the heads removed {gone}"
        removed += len(gone["q"])
    return removed


def pruner_for(entry: Entry):
    """``(model, data, Pruner)``: a fresh model and data from ``entry``, and a Pruner on them
    (with the entry's options)."""
    import prunelab as pl

    model, data = entry.build(), entry.data()
    return model, data, pl.Pruner(model, data, **entry.options)
