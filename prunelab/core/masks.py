"""From scores and an amount to boolean masks (True = kept).

Scores are sorted once (a :class:`Ranking`); any sparsity is then an index lookup into that
order, so dragging a slider never re-sorts. Counts are exact: ``round(amount * n)`` entries go.
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
    """Entries of one or more score tensors in ascending order of score (ties by position)."""

    def __init__(self, scores: list[torch.Tensor]):
        self.shapes = [s.shape for s in scores]
        self.sizes = [s.numel() for s in scores]
        flat = torch.cat([s.detach().reshape(-1).float() for s in scores])
        self.order = torch.argsort(flat, stable=True)
        self.sorted_scores = flat[self.order]
        # rank[i]: position of entry i in the order. Keeping "rank >= k" is one comparison, no scatter.
        self.rank = torch.empty_like(self.order)
        self.rank[self.order] = torch.arange(len(flat), device=flat.device)

    @property
    def total(self) -> int:
        return int(sum(self.sizes))

    def masks(self, amount: float) -> list[torch.Tensor]:
        """Keep-masks, one per score tensor, with the lowest ``amount`` of all entries removed."""
        return self._split(pruned_count(amount, self.total))

    def masks_below(self, threshold: float) -> list[torch.Tensor]:
        """Keep-masks that remove every entry scored below ``threshold``."""
        k = int(torch.searchsorted(self.sorted_scores, torch.tensor(float(threshold), device=self.order.device)))
        return self._split(k)

    def _split(self, k: int) -> list[torch.Tensor]:
        """Keep-masks dropping the first ``k`` entries of the order."""
        keep = self.rank >= k
        return [part.reshape(shape) for part, shape in zip(keep.split(self.sizes), self.shapes)]


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
