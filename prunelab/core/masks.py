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


def rounded_kept(kept: int, n: int, multiple: int) -> int:
    """``kept`` of ``n`` units moved to the nearest multiple of ``multiple`` (at least one multiple,
    at most ``n``); all ``n`` stay when all were kept, whatever their count. Kernels run channel
    counts in blocks (oneDNN: 8 or 16), so a ragged count costs as much as the next multiple.

    Example:
        >>> rounded_kept(125, 256, 16), rounded_kept(3, 256, 16), rounded_kept(250, 250, 16)
        (128, 16, 250)
    """
    if kept >= n:
        return n
    return min(n, max(multiple, multiple * int(kept / multiple + 0.5)))


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
    from the weights themselves, so ranking them costs no copy of the weights). ``fn`` is an
    elementwise torch function that takes ``out=`` (``torch.abs``).

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

    def __call__(self, out: torch.Tensor | None = None) -> torch.Tensor:
        source = self.source.detach()
        return self.fn(source) if out is None else self.fn(source, out=out)


class _Scratch:
    """Buffers the size of the largest part, reused for every part of one pass: the values read
    (a Derived part's scores, a non-float32 part as float) and the comparisons made on them, so a
    pass over millions of scores allocates nothing of their size (freed blocks of many sizes stay
    resident as heap fragments)."""

    def __init__(self, n: int, device: torch.device):
        self.device = device
        self.values = torch.empty(n, dtype=torch.float32, device=device)
        self.a, self.b = (torch.empty(n, dtype=torch.bool, device=device) for _ in range(2))


class Ranking:
    """Entries of one or more score tensors ranked together in ascending order of score, ties by
    position (the order a stable sort gives), without sorting them: a mask for ``amount`` is one
    selection (:meth:`kth`, linear time), so a global move over millions of weights costs a few
    passes over the scores, not a sort.

    The score tensors are read where they are (a :class:`Derived` one is computed when read, one
    at a time, into a buffer reused for every part), never concatenated: a ranking holds no copy
    of its scores.

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

    def values(self, i: int, scratch: _Scratch | None = None) -> torch.Tensor:
        """Part ``i``'s scores, flat, as float32: the part itself when it is one, else computed
        (a :class:`Derived` part) or converted, into ``scratch`` when given (valid until its next use)."""
        part, n = self.parts[i], self.sizes[i]
        source = part.source if isinstance(part, Derived) else part
        out = scratch.values[:n].view(part.shape) if scratch is not None and source.device == scratch.device else None
        if isinstance(part, Derived):
            return part(out).reshape(-1)
        t = part.detach()
        if t.dtype == torch.float32:
            return t.reshape(-1)
        return (t.float() if out is None else out.copy_(t)).reshape(-1)

    def masks(self, amount: float) -> list[torch.Tensor]:
        """Keep-masks, one per score tensor, with the lowest ``amount`` of all entries removed."""
        return [m.clone() for m in self.each_mask(amount)]

    def each_mask(self, amount: float):
        """:meth:`masks` one part at a time (a generator). Each mask is a view of a buffer reused for
        the next one: use it (or clone it) before asking for the next."""
        k = pruned_count(amount, self.total)
        for part, shape in zip(self.keep_all_but(k), self.shapes):
            yield part.view(shape)

    def keeping(self, kept: int) -> list[torch.Tensor]:
        """Keep-masks that keep exactly the ``kept`` highest entries of all parts together."""
        return [part.clone().view(shape) for part, shape in zip(self.keep_all_but(self.total - kept), self.shapes)]

    def masks_below(self, threshold: float) -> list[torch.Tensor]:
        """Keep-masks that remove every entry scored below ``threshold``."""
        return [(self.values(i) >= float(threshold)).reshape(shape) for i, shape in enumerate(self.shapes)]

    def keep_all_but(self, k: int):
        """The flat keep-mask of each part in turn (a generator; each a view of a reused buffer,
        valid until the next) dropping the ``k`` lowest entries of all parts together (ties: the
        earlier positions go first, across parts in order)."""
        scratch = self._scratch()
        if k <= 0 or k >= self.total:
            for n in self.sizes:
                yield scratch.a[:n].fill_(k <= 0)
            return
        v, below, _ = self.kth(k, scratch=scratch)
        need = k - below  # entries equal to v that go: the first ones by position
        for i, n in enumerate(self.sizes):
            flat = self.values(i, scratch)
            if need == 0:
                yield torch.ge(flat, v, out=scratch.a[:n])
                continue
            keep = torch.gt(flat, v, out=scratch.a[:n])
            ties = torch.eq(flat, v, out=scratch.b[:n]).nonzero().flatten()
            keep[ties[need:]] = True
            need = max(need - len(ties), 0)
            yield keep

    def kth(self, k: int, sample: int = 1 << 16, scratch: _Scratch | None = None) -> tuple[torch.Tensor, int, int]:
        """The ``k``-th smallest entry of all parts (``1 <= k <= total``), exactly, in linear time:
        a seeded sample brackets the value, one counting pass over the parts confirms the bracket
        and keeps the few entries strictly inside it, which are selected from.

        Returns:
            ``(value as a 0-d tensor, count of entries below it, count of entries equal to it)``.
        """
        if self.total > 4 * sample:
            bracket = self._bracket(k, sample, scratch or self._scratch())
            if bracket is not None:
                return bracket
        everything = torch.cat([self.values(i) for i in range(len(self.parts))])  # small, or the sample missed
        v = torch.kthvalue(everything.cpu(), k).values.to(everything.device)
        return v, int(torch.count_nonzero(everything < v)), int(torch.count_nonzero(everything == v))

    def _bracket(self, k: int, sample: int, scratch: _Scratch):
        picked = self._sample(sample).sort().values
        spread, at = int(3 * sample ** 0.5) + 1, k / self.total * sample
        lo = picked[int(at) - spread] if at - spread > 0 else None
        hi = picked[int(at) + spread] if at + spread < sample - 1 else None
        # Entries equal to lo or hi are gathered with the inside unless the sample says they are
        # many (ties in bulk, as zeros after fine-tuning a masked model): then they are counted.
        strict = any(b is not None and int((picked == b).sum()) > sample // 64 for b in (lo, hi))
        below_lo = eq_lo = eq_hi = 0
        upto_hi, inner = self.total, []
        for i, n in enumerate(self.sizes):
            flat, test, within = self.values(i, scratch), scratch.b[:n], scratch.a[:n]
            if not strict:  # lo <= flat <= hi, in as few passes as it takes
                if lo is not None:
                    below_lo += int(torch.lt(flat, lo, out=test).count_nonzero())
                if hi is not None:
                    upto_hi -= n - int(torch.le(flat, hi, out=within).count_nonzero())
                else:
                    within.fill_(True)
                if lo is not None:
                    within &= test.logical_not_()
                inner.append(flat[within])
                continue
            within.fill_(True)
            if lo is not None:
                below_lo += int(torch.lt(flat, lo, out=test).count_nonzero())
                eq_lo += int(torch.eq(flat, lo, out=test).count_nonzero())
                within &= torch.gt(flat, lo, out=test)
            if hi is not None:
                upto_hi -= int(torch.gt(flat, hi, out=test).count_nonzero())
                eq_hi += int(torch.eq(flat, hi, out=test).count_nonzero())
                within &= torch.lt(flat, hi, out=test)
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

    def _sample(self, sample: int) -> torch.Tensor:
        """``sample`` entries drawn with a fixed seed (the same entries on every run), as float32."""
        picks = torch.randint(self.total, (sample,), generator=torch.Generator().manual_seed(0)).sort().values
        ends = torch.tensor(self.sizes).cumsum(0)
        counts = torch.bincount(torch.searchsorted(ends, picks, right=True), minlength=len(self.sizes))
        picked = []
        for i, at in enumerate(picks.split(counts.tolist())):
            if len(at):
                part, at = self.parts[i], at - (ends[i] - self.sizes[i])
                if isinstance(part, Derived):  # elementwise: only the drawn entries are computed
                    picked.append(part.fn(part.source.detach().reshape(-1)[at.to(part.source.device)]).float())
                else:
                    picked.append(part.detach().reshape(-1)[at.to(part.device)].float())
        return torch.cat(picked)

    def _scratch(self) -> _Scratch:
        part = self.parts[0] if self.parts else torch.empty(0)
        device = (part.source if isinstance(part, Derived) else part).device
        return _Scratch(max(self.sizes, default=0), device)


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
