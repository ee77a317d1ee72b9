"""The values an :class:`~prunelab.core.evaluation.Evaluator` keeps at its cut points, for every
block of samples, within a byte budget.

Each kept value (one traced node's output) lives in one tensor for all samples, a *slab*: a row per
sample in measuring order, with the value's own strides, allocated on first store and kept until the
cache is cleared. A block's value is a view of its rows, one view object that every cut of the
block names. So consecutive blocks read as one batch without a copy; the bytes held are the rows
written, what memory holds; rows a move makes stale are written again by the next pass in place
(their memory neither handed back nor mapped afresh, which cost a fault per page); and the cache's
memory stays apart from the heap that each pass's activations churn through. A batch of every
sample (a small model's whole evaluation set) is kept as it is: it is a slab already. (Kept as views of each batch's own outputs, the
values were scattered through that heap: at ResNet-50 size with 1.75 GiB cached, the peak resident
memory was 0.3 GB higher.)

Graphs that may write values in place key a slab by (node, cut): a value that two cuts share may
differ between them, so each cut keeps its own copy.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocking import batch_aligned


def dense_rows(v: torch.Tensor) -> bool:
    """Whether each sample of ``v`` is one dense, non-overlapping run of memory and the samples
    follow one another, so that rows of ``v``'s layout stack into one tensor with its strides.

    Example:
        >>> dense_rows(torch.zeros(2, 3, 4).transpose(1, 2)), dense_rows(torch.zeros(2, 6)[:, :3])
        (True, False)
    """
    if v.dim() == 0 or v.stride(0) != math.prod(v.shape[1:]):
        return False
    expected = 1
    for d in sorted(range(1, v.dim()), key=v.stride):
        if v.shape[d] != 1 and v.stride(d) != expected:
            return False
        expected *= v.shape[d]
    return True


class CutCache:
    """Values kept at cut points per block (``cuts[block][cut]``: the values of that cut's live
    nodes, in order), held in slabs (see the module's docstring).

    Args:
        counts: samples per block, in measuring order.
        inplace: whether the graph may write values in place (each cut then keeps its own copies).
    """

    def __init__(self, counts: list[int], inplace: bool):
        self.counts, self.inplace = counts, inplace
        self.starts = [sum(counts[:b]) for b in range(len(counts))]  # each block's first row
        self.cuts: list[dict[int, list]] = [{} for _ in counts]
        self.held = 0  # bytes of the rows written in the slabs alive
        self._keys: list[dict[int, list]] = [{} for _ in counts]  # the slab key of each value (None: a parameter)
        self._slabs: dict = {}  # key -> tensor of every sample's row
        self._rows: dict = {}  # (key, block) -> the view of that block's rows, while a cut names it (valid)
        self._named: dict = {}  # (key, block) -> the cuts naming it
        self._written: dict = {}  # key -> blocks whose rows were ever written (resident, valid or not)

    def store(self, group: list[int], cut: int, live: list, values: list, budget: int) -> bool:
        """Keep ``values`` (the values of the nodes ``live`` over the batch of the consecutive
        blocks ``group``) at ``cut`` for each block of the group. Nothing is kept, and False
        returned, when the new rows would take the bytes held past ``budget`` or a value cannot be
        kept by rows (not one row per sample, or samples not dense in memory)."""
        k = sum(self.counts[b] for b in group)
        keys, extra = [], 0
        for n, v in zip(live, values):
            if isinstance(v, nn.Parameter):  # the model holds it: named, not copied
                keys.append(None)
                continue
            if not (batch_aligned(v, k) and dense_rows(v)):
                return False
            key = (n, cut) if self.inplace else n
            slab = self._slabs.get(key)
            if slab is not None and (slab.shape[1:] != v.shape[1:] or slab.stride()[1:] != v.stride()[1:]
                                     or slab.dtype != v.dtype or slab.device != v.device):
                return False
            keys.append(key)
            written = self._written.get(key, ())
            extra += sum(self.counts[b] for b in group if b not in written) * _row_bytes(v)
        if self.held + extra > budget:
            return False
        first = self.starts[group[0]]
        for v, key in zip(values, keys):
            if key is not None:
                self._write(key, v, group, first)
        for b in group:
            self.cuts[b][cut] = [v if key is None else self._rows[key, b] for v, key in zip(values, keys)]
            self._keys[b][cut] = keys
            for key in keys:
                if key is not None:
                    self._named.setdefault((key, b), set()).add(cut)
        return True

    def _write(self, key, v: torch.Tensor, group: list[int], first: int) -> None:
        """Copy the group's rows of ``v`` that the slab of ``key`` does not hold for the current state."""
        slab = self._slabs.get(key)
        whole = len(group) == len(self.counts) and not self.inplace and _owns_storage(v)
        if whole and not any((key, b) in self._rows for b in group):  # a batch of every sample: v is the slab
            if slab is not None:
                self.held -= sum(self.counts[b] for b in self._written[key]) * _row_bytes(v)
            slab = self._slabs[key] = v  # (no copy: on small models one batch is the whole set)
            self._written[key] = set()
        if slab is None:
            slab = torch.empty_strided((sum(self.counts), *v.shape[1:]), v.stride(), dtype=v.dtype, device=v.device)
            self._slabs[key], self._written[key] = slab, set()
        for b in group:
            if (key, b) in self._rows:  # held already (this value, reached again from a later cut)
                continue
            start, c = self.starts[b], self.counts[b]
            rows = slab[start:start + c]
            if slab is not v:  # (taken whole above: the rows are v's own)
                rows.copy_(v[start - first:start - first + c])
            self._rows[key, b] = rows
            if b not in self._written[key]:
                self._written[key].add(b)
                self.held += c * _row_bytes(v)

    def drop_after(self, start: int) -> None:
        """Forget the cuts after node ``start`` (their values are stale). Their rows stay in memory,
        counted as held, for the next pass to write again."""
        for b, cuts in enumerate(self.cuts):
            for c in [c for c in cuts if c > start]:
                del cuts[c]
                for key in self._keys[b].pop(c):
                    if key is not None:
                        named = self._named[key, b]
                        named.discard(c)
                        if not named:
                            del self._named[key, b], self._rows[key, b]

    def clear(self) -> None:
        """Forget everything (the slabs freed)."""
        self.__init__(self.counts, self.inplace)


def _owns_storage(v: torch.Tensor) -> bool:
    """Whether ``v`` is all of its storage (so taking it as a slab holds nothing more)."""
    return v.untyped_storage().nbytes() == v.numel() * v.element_size()


def _row_bytes(v: torch.Tensor) -> int:
    return math.prod(v.shape[1:]) * v.element_size()
