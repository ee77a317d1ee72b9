"""From scores and an amount to boolean masks (True = kept).

Scores are ranked by selection, never by a full sort (a :class:`Ranking`): any sparsity is the
``k``-th smallest score found in linear time (:func:`kth_smallest`), ties broken by position as a
stable sort would. Counts are exact: ``round(amount * n)`` entries go.
"""

from __future__ import annotations

import torch


def pruned_count(amount: float, n: int) -> int:
    """How many of ``n`` entries a fraction ``amount`` removes: ``round(amount * n)``.

    Example:
        >>> pruned_count(0.5, 7)
        4
    """
    return int(round(amount * n))


def row_length(shape, out_dim: int = 0) -> int:
    """Weights per output unit of a weight shaped ``shape`` (a convolution's kernel included):
    every axis but ``out_dim``, the axis of output units (0 for Linear and Conv; 1 for
    transformers' Conv1D, stored ``[in, out]``). A unit's weights are its *row*.

    Example:
        >>> row_length((8, 3, 3, 3)), row_length((6, 10), out_dim=1)
        (27, 6)
    """
    n = 1
    for i, d in enumerate(tuple(shape)):
        if i != out_dim:
            n *= int(d)
    return n


def fits_n_of_m(shape, m: int = 4, out_dim: int = 0) -> bool:
    """Whether a weight shaped ``shape`` can take an n:m pattern: its rows (see :func:`row_length`),
    which the groups of ``m`` run along, must be a multiple of ``m``. The one place this rule is
    written (a :class:`~prunelab.core.layers.Layer` asks it with its own ``out_dim``).

    Example:
        >>> fits_n_of_m((16, 8)), fits_n_of_m((16, 6)), fits_n_of_m((8, 6), out_dim=1)
        (True, False, True)
    """
    return row_length(shape, out_dim) % m == 0


class Derived:
    """Scores read from a tensor when needed, ``fn(source)``, and never held (magnitude: ``|w|``
    from the weights themselves, so ranking them costs no copy of the weights).

    Example:
        >>> Derived(torch.abs, torch.tensor([-2.0, 1.0]))()
        tensor([2., 1.])
    """

    __slots__ = ("fn", "source")

    def __init__(self, fn, source: torch.Tensor):
        self.fn, self.source = fn, source

    @property
    def shape(self) -> torch.Size:
        return self.source.shape

    def __call__(self) -> torch.Tensor:
        return self.fn(self.source.detach())


class Ranking:
    """Entries of one or more score tensors ranked together in ascending order of score, ties by
    position (the order a stable sort gives), without sorting them: a mask for ``amount`` is one
    selection (:meth:`kth`, linear time), so a global move over millions of weights costs a few
    passes over the scores, not a sort.

    The score tensors are read where they are (a :class:`Derived` one is computed when read, one
    at a time), never concatenated: a ranking holds no copy of its scores.

    Args:
        scores: one score tensor (or :class:`Derived`) per part, in the order their positions rank.

    Example:
        >>> Ranking([torch.tensor([0.3, 0.1, 0.2])]).masks(1 / 3)[0]
        tensor([ True, False,  True])
    """

    def __init__(self, scores: list):
        self.parts = list(scores)
        self.shapes = [s.shape for s in self.parts]
        self.sizes = [s.shape.numel() for s in self.parts]

    @property
    def total(self) -> int:
        return int(sum(self.sizes))

    def nbytes(self) -> int:
        """Bytes of the score tensors this ranking reads (a :class:`Derived` part holds none)."""
        return sum(p.numel() * p.element_size() for p in self.parts if isinstance(p, torch.Tensor))

    def values(self, i: int) -> torch.Tensor:
        """Part ``i``'s scores, flat, as float (computed now for a :class:`Derived` part)."""
        part = self.parts[i]
        return (part() if isinstance(part, Derived) else part).detach().reshape(-1).float()

    def masks(self, amount: float) -> list[torch.Tensor]:
        """Keep-masks, one per score tensor, with the lowest ``amount`` of all entries removed."""
        return list(self.each_mask(amount))

    def each_mask(self, amount: float):
        """:meth:`masks` one part at a time (a generator): only one part's mask is made at once."""
        k = pruned_count(amount, self.total)
        for part, shape in zip(self.keep_all_but(k), self.shapes):
            yield part.reshape(shape)

    def masks_below(self, threshold: float) -> list[torch.Tensor]:
        """Keep-masks that remove every entry scored below ``threshold``."""
        return [(self.values(i) >= float(threshold)).reshape(shape) for i, shape in enumerate(self.shapes)]

    def keep_all_but(self, k: int):
        """The flat keep-masks of each part (a generator) dropping the ``k`` lowest entries of all
        parts together (ties: the earlier positions go first, across parts in order)."""
        if k <= 0 or k >= self.total:
            for i, n in enumerate(self.sizes):
                yield torch.full((n,), k <= 0, dtype=torch.bool, device=self._device(i))
            return
        v, below, _ = self.kth(k)
        need = k - below  # entries equal to v that go: the first ones by position
        for i in range(len(self.parts)):
            flat = self.values(i)
            if need == 0:
                yield flat >= v
                continue
            keep = flat > v
            ties = (flat == v).nonzero().flatten()
            keep[ties[need:]] = True
            need = max(need - len(ties), 0)
            yield keep

    def kth(self, k: int, sample: int = 1 << 16) -> tuple[torch.Tensor, int, int]:
        """The ``k``-th smallest entry of all parts (``1 <= k <= total``), exactly, in linear time:
        a seeded sample brackets the value, one counting pass over the parts confirms the bracket
        and keeps the few entries strictly inside it, which are selected from.

        Returns:
            ``(value as a 0-d tensor, count of entries below it, count of entries equal to it)``.
        """
        n = self.total
        if n > 4 * sample:
            bracket = self._bracket(k, sample)
            if bracket is not None:
                return bracket
        everything = torch.cat([self.values(i) for i in range(len(self.parts))])  # small, or the sample missed
        v = torch.kthvalue(everything.cpu(), k).values.to(everything.device)
        return v, int(torch.count_nonzero(everything < v)), int(torch.count_nonzero(everything == v))

    def _bracket(self, k: int, sample: int):
        gen = torch.Generator().manual_seed(0)
        picks = torch.randint(self.total, (sample,), generator=gen)
        ends = torch.tensor(self.sizes).cumsum(0)
        part_of = torch.searchsorted(ends, picks, right=True)
        picked = []
        for i in part_of.unique().tolist():
            at = picks[part_of == i] - (ends[i] - self.sizes[i])
            flat = self.values(i)
            picked.append(flat[at.to(flat.device)])
        picked = torch.cat(picked).sort().values
        spread, at = int(3 * sample ** 0.5) + 1, k / self.total * sample
        lo = picked[int(at) - spread] if at - spread > 0 else None
        hi = picked[int(at) + spread] if at + spread < sample - 1 else None
        below_lo = eq_lo = eq_hi = 0
        upto_hi, inner = self.total, []
        for i in range(len(self.parts)):
            flat = self.values(i)
            within = torch.ones_like(flat, dtype=torch.bool)
            if lo is not None:
                below_lo += int(torch.count_nonzero(flat < lo))
                eq_lo += int(torch.count_nonzero(flat == lo))
                within &= flat > lo
            if hi is not None:
                upto_hi -= int(torch.count_nonzero(flat > hi))
                eq_hi += int(torch.count_nonzero(flat == hi))
                within &= flat < hi
            inner.append(flat[within])
        if not below_lo < k <= upto_hi:  # the sample missed (rare)
            return None
        if lo is not None and k <= below_lo + eq_lo:
            return lo, below_lo, eq_lo
        if hi is not None and k > upto_hi - eq_hi:
            return hi, upto_hi - eq_hi, eq_hi
        inside = torch.cat(inner)
        v = torch.kthvalue(inside.cpu(), k - below_lo - eq_lo).values.to(inside.device)
        return v, below_lo + eq_lo + int(torch.count_nonzero(inside < v)), int(torch.count_nonzero(inside == v))

    def _device(self, i: int) -> torch.device:
        part = self.parts[i]
        return (part.source if isinstance(part, Derived) else part).device


def kth_smallest(flat: torch.Tensor, k: int, sample: int = 1 << 16) -> tuple[torch.Tensor, int, int]:
    """The ``k``-th smallest entry of a 1-D tensor (``1 <= k <= len``) and how many entries are
    strictly smaller, exactly, in linear time (:meth:`Ranking.kth`).

    Args:
        flat: the values (no NaN).
        k: the rank, from 1.
        sample: the sample size bracketing the value.

    Returns:
        ``(value as a 0-d tensor, count of entries below it, count of entries equal to it)``.

    Example:
        >>> kth_smallest(torch.tensor([3.0, 1.0, 2.0, 1.0]), 3)
        (tensor(2.), 2, 1)
    """
    return Ranking([flat]).kth(k, sample)


def n_of_m_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the ``n`` highest-scored weights in every ``m`` consecutive weights of a row (2:4 when
    n=2, m=4: the pattern that sparse tensor cores accelerate). Rows run over the input dimension
    (flattened with the kernel for convolutions).

    Args:
        scores: one score per weight, shaped like the weight.
        n, m: keep ``n`` of every ``m``.

    Returns:
        A bool keep-mask shaped like ``scores``.

    Example:
        >>> n_of_m_mask(torch.tensor([[4.0, 1.0, 3.0, 2.0]]))
        tensor([[ True, False,  True, False]])
    """
    rows = scores.reshape(scores.shape[0], -1)
    if not fits_n_of_m(scores.shape, m):
        raise ValueError(f"{n}:{m} sparsity needs each row's length ({rows.shape[1]}) to be a multiple of {m}")
    blocks = rows.reshape(-1, m)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(1, blocks.topk(n, dim=1).indices, True)
    return keep.reshape(scores.shape)
