"""Samples in blocks, and the sizes of the values a traced pass makes: the bookkeeping under
:class:`~prunelab.core.evaluation.Evaluator`.

A block is the unit the evaluator caches by (its own cut values, its own outputs); a group is
consecutive blocks run as one batch (joined along the first dimension, split again after), so
blocks can be short for deadlines while full passes run at full batch size.
"""

from __future__ import annotations

import math

import torch
from torch import fx, nn


def plan_blocks(n: int, cap: int, order: torch.Tensor | None, progressive: bool) -> list:
    """Sample indices per block: slices of ``cap`` in the inputs' order, or, with an ``order``,
    chunks of it (growing 2, 2, 4, 4, ... up to ``cap`` when ``progressive``).

    Example:
        >>> [len(b) for b in plan_blocks(10, 4, torch.arange(10), True)]
        [2, 2, 4, 2]
    """
    sizes, done, size = [], 0, 2 if progressive else cap
    while done < n:
        step = min(size, cap, n - done)
        sizes.append(step)
        done += step
        if progressive and len(sizes) % 2 == 0:
            size *= 2
    if order is None:
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [slice(s, s + z) for s, z in zip(starts, sizes)]
    return list(order.split(sizes))


def choose_cuts(cuts: dict[int, list], nodes: int, cost: dict, seconds: list[float], budget: int,
                inplace: bool) -> set[int]:
    """Cut points whose values, for every block, fit ``budget`` bytes, chosen greedily by the
    time they save per byte: a move at any parametrised node resumes at the latest kept cut
    before it, so keeping cut ``c`` saves the probe's time from the previous kept cut to ``c``
    for every cut point between ``c`` and the next kept one. Each move's saving counts relative
    to its own tail (the time from it to the output), the measure a move is judged by: a second
    saved on a late move, whose tail is short, weighs more than a second on an early one.
    (Counted in absolute time, at ResNet-50 size the last block's input lost to the middle
    blocks' cuts at every budget from 0.5 to 2 GiB, and at 1 GiB a move in the last block reran
    from layer3.)

    Args:
        cuts: ``{node index: the nodes live there}``. nodes: how many nodes the graph has.
        cost: bytes of each node's value over all samples. seconds: the probe's time per node.
        budget: bytes for all kept cuts. inplace: values shared by two cuts count twice (copies).

    Returns: the kept node indices.
    """
    order = sorted(cuts)
    done = [0.0]
    for t in seconds:  # done[i]: time to reach node i from the start
        done.append(done[-1] + t)
    total = done[nodes]
    weight = [1.0 / max(total - done[d], 1e-9) for d in range(nodes + 1)]  # 1 / the tail of a move at d
    kept, have = set(), set()

    def extra(c):
        return sum(cost.get(v, 0) for v in cuts[c] if inplace or v not in have)

    while True:
        marks = sorted(kept)
        best, best_value = None, 0.0
        for j, c in enumerate(order):
            if c in kept or extra(c) > budget:
                continue
            before = max((m for m in marks if m < c), default=0)
            after = min((m for m in marks if m > c), default=nodes)
            served = sum(weight[d] for d in order[j:] if d < after)
            value = (done[c] - done[before]) * served / max(extra(c), 1)
            if value > best_value:
                best, best_value = c, value
        if best is None:
            return kept
        budget -= extra(best)
        kept.add(best)
        have.update(cuts[best])


def count(index) -> int:
    """Samples in one block's index (a slice or an index tensor)."""
    return index.stop - index.start if isinstance(index, slice) else len(index)


def indices(index) -> torch.Tensor:
    """One block's index as a tensor of sample indices."""
    return torch.arange(index.start, index.stop) if isinstance(index, slice) else index


def joined_index(parts: list):
    """One index for consecutive blocks: a slice when they are adjacent slices, else a tensor."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, slice) for p in parts) and all(a.stop == b.start for a, b in zip(parts, parts[1:])):
        return slice(parts[0].start, parts[-1].stop)
    return torch.cat([indices(p) for p in parts])


def join(values: list, clone: bool):
    """One value for a group from each block's cached value: the same object when all blocks
    share it (a parameter); a view of their storage when they lie one after another in it (parts
    of the batch they were stored from) and no copy is asked for; else the tensors concatenated
    along the batch dimension."""
    first = values[0]
    if all(v is first for v in values):
        return first.clone() if clone and isinstance(first, torch.Tensor) else first
    if not clone and all(adjacent(u, v) for u, v in zip(values, values[1:])):
        return first.as_strided((sum(len(v) for v in values), *first.shape[1:]), first.stride(), first.storage_offset())
    return torch.cat(values)


def adjacent(u, v) -> bool:
    """Whether batch part ``v`` starts in memory where ``u`` ends (one storage, the same layout,
    each sample's entries dense): the two read as one batch without a copy."""
    return (isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and u.dim() > 0 and v.dim() > 0
            and v.data_ptr() == u.data_ptr() + len(u) * u.stride(0) * u.element_size()  # (the cheap test first)
            and u.shape[1:] == v.shape[1:] and u.stride() == v.stride() and u.dtype == v.dtype and _dense_samples(u)
            and u.untyped_storage().data_ptr() == v.untyped_storage().data_ptr())  # one allocation, not two that touch


def _dense_samples(v: torch.Tensor) -> bool:
    """Whether each sample's entries of ``v`` lie together in memory (so samples follow one another)."""
    return v.stride(0) == math.prod(v.shape[1:])


def split(value, counts: list[int]) -> list | None:
    """Each block's part of a group's value: views along the batch dimension for a batch-aligned
    tensor, the value itself for a parameter; None when it cannot be split (not batch-aligned)."""
    if isinstance(value, nn.Parameter):
        return [value] * len(counts)
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == sum(counts):
        return list(value.split(counts))
    return None


def batch_aligned(v, k: int) -> bool:
    """Whether ``v`` is one tensor whose first dimension is the batch's ``k`` (so it splits by sample)."""
    return isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and v.dim() > 0 and v.shape[0] == k


def aligned_bytes(v, k: int) -> tuple[int, int]:
    """(bytes of the tensors in ``v`` whose first dimension is the batch's ``k``, bytes of the others)."""
    if isinstance(v, torch.Tensor):
        return (nbytes(v), 0) if v.dim() and v.shape[0] == k else (0, nbytes(v))
    if isinstance(v, (tuple, list)):
        parts = [aligned_bytes(t, k) for t in v]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    return 0, 0


def output_bytes(model: nn.Module, run) -> tuple[int, object]:
    """(bytes of every module's output while ``run()`` calls ``model``, what ``run`` returned): an
    upper bound on the activations a forward holds at once, and about what autograd keeps for the
    backward pass of a gradient."""
    total = []
    hooks = [m.register_forward_hook(lambda m, i, o: total.append(tree_bytes(o))) for m in model.modules()]
    try:
        out = run()
    finally:
        for h in hooks:
            h.remove()
    return sum(total), out


def tree_bytes(v) -> int:
    """Bytes of the tensors in ``v`` (a tensor, or nested tuples, lists and dicts of them)."""
    if isinstance(v, dict):
        v = list(v.values())
    return nbytes(v) if isinstance(v, torch.Tensor) else sum(map(tree_bytes, v)) if isinstance(v, (tuple, list)) else 0


def distinct_bytes(tensors) -> int:
    """Bytes of the tensors among ``tensors`` (anything else is skipped), tensors that view the same
    part of one storage counted once (what is held, not how often it is named).

    Example:
        >>> t = torch.zeros(4)
        >>> distinct_bytes([t, t.view(2, 2), None])
        16
    """
    seen = {(t.untyped_storage().data_ptr(), t.storage_offset(), t.numel()): t
            for t in tensors if isinstance(t, torch.Tensor)}
    return sum(nbytes(t) for t in seen.values())


def nbytes(v) -> int:
    return v.numel() * v.element_size() if isinstance(v, torch.Tensor) else 0


def maybe_inplace(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node`` may write one of its inputs in place (so cached values must be copies)."""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return bool(node.kwargs.get("inplace", False)) or (name.endswith("_") and not name.endswith("__"))
    return False
