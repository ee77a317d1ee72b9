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


class Ranking:
    """Entries of one or more score tensors ranked together in ascending order of score, ties by
    position (the order a stable sort gives), without sorting them: a mask for ``amount`` is one
    selection (:func:`kth_smallest`, linear time), so a global move over millions of weights
    costs a few passes over the scores, not a sort.

    Example:
        >>> Ranking([torch.tensor([0.3, 0.1, 0.2])]).masks(1 / 3)[0]
        tensor([ True, False,  True])
    """

    def __init__(self, scores: list[torch.Tensor]):
        self.shapes = [s.shape for s in scores]
        self.sizes = [s.numel() for s in scores]
        self.flat = torch.cat([s.detach().reshape(-1).float() for s in scores])

    @property
    def total(self) -> int:
        return int(sum(self.sizes))

    def nbytes(self) -> int:
        """Bytes this ranking holds."""
        return self.flat.numel() * self.flat.element_size()

    def masks(self, amount: float) -> list[torch.Tensor]:
        """Keep-masks, one per score tensor, with the lowest ``amount`` of all entries removed."""
        return self._split(self.keep_all_but(pruned_count(amount, self.total)))

    def masks_below(self, threshold: float) -> list[torch.Tensor]:
        """Keep-masks that remove every entry scored below ``threshold``."""
        return self._split(self.flat >= float(threshold))

    def keep_all_but(self, k: int) -> torch.Tensor:
        """The flat keep-mask dropping the ``k`` lowest entries (ties: the earlier positions go first)."""
        flat = self.flat
        if k <= 0:
            return torch.ones_like(flat, dtype=torch.bool)
        if k >= len(flat):
            return torch.zeros_like(flat, dtype=torch.bool)
        v, less, ties = kth_smallest(flat, k)
        need = k - less  # entries equal to v that go: the first ones by position
        if need == ties:
            return flat > v
        if need == 0:
            return flat >= v
        keep = flat > v
        keep[(flat == v).nonzero().flatten()[need:]] = True
        return keep

    def _split(self, keep: torch.Tensor) -> list[torch.Tensor]:
        return [part.reshape(shape) for part, shape in zip(keep.split(self.sizes), self.shapes)]


def kth_smallest(flat: torch.Tensor, k: int, sample: int = 1 << 16) -> tuple[torch.Tensor, int, int]:
    """The ``k``-th smallest entry of a 1-D tensor (``1 <= k <= len``) and how many entries are
    strictly smaller, exactly, in linear time: a seeded sample brackets the value, two counting
    passes confirm the bracket, and the few entries inside it are selected from.

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
    n = len(flat)
    inside, below = flat, 0
    if n > 4 * sample:
        gen = torch.Generator().manual_seed(0)
        picked = flat[torch.randint(n, (sample,), generator=gen).to(flat.device)].sort().values
        spread, at = int(3 * sample ** 0.5) + 1, k / n * sample
        lo = picked[int(at) - spread] if at - spread > 0 else None
        hi = picked[int(at) + spread] if at + spread < sample - 1 else None
        low = 0 if lo is None else int(torch.count_nonzero(flat < lo))
        within = (flat >= lo) if lo is not None else torch.ones_like(flat, dtype=torch.bool)
        if hi is not None:
            within &= flat <= hi
        if low < k <= low + int(torch.count_nonzero(within)):  # else the sample missed (rare): all of it
            inside, below = flat[within], low
    v = torch.kthvalue(inside.cpu(), k - below).values.to(flat.device)
    return v, below + int(torch.count_nonzero(inside < v)), int(torch.count_nonzero(inside == v))


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
