"""Keep-masks stored one bit per entry.

A mask over every prunable weight is as many entries as the model has weights: as ``torch.bool``
that is a quarter of float32 weights for each mask held, and every step of history holds its
own. :class:`Bits` packs a bool tensor eight entries to a byte (numpy's ``packbits`` on the CPU,
shifts on other devices) and gives it back bit for bit when read, so what is kept is 1/32 of
the weights it masks.
"""

from __future__ import annotations

import numpy as np
import torch

_SHIFTS = {}  # device -> the bit positions 0..7 as uint8 on it (little-endian bit order)
# byte value -> its eight bits as eight bool bytes, read as one uint64 (unpacking is then one take)
_BYTES = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").view(np.uint64).reshape(256)


def _shifts(device: torch.device) -> torch.Tensor:
    if device not in _SHIFTS:
        _SHIFTS[device] = torch.arange(8, dtype=torch.uint8, device=device)
    return _SHIFTS[device]


class Bits:
    """An immutable bool tensor kept one bit per entry.

    Args:
        mask: a bool tensor (any shape, any device); it is not kept.

    Attributes:
        shape: the mask's shape. device: where it lives (reading gives it back there).
        kept: how many entries are True (counted once, when packed).

    Example:
        >>> b = Bits(torch.tensor([[True, False, True]]))
        >>> b.tensor(), b.kept, b.nbytes
        (tensor([[ True, False,  True]]), 2, 1)
    """

    __slots__ = ("shape", "device", "kept", "_packed")

    def __init__(self, mask: torch.Tensor):
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"Bits packs a bool tensor, not {getattr(mask, 'dtype', type(mask).__name__)}.")
        self.shape, self.device = mask.shape, mask.device
        flat = mask.detach().reshape(-1)
        self.kept = int(flat.count_nonzero())
        if flat.device.type == "cpu":
            self._packed = torch.from_numpy(np.packbits(flat.numpy(), bitorder="little"))
        else:
            pad = (-len(flat)) % 8
            if pad:
                flat = torch.cat([flat, flat.new_zeros(pad)])
            self._packed = (flat.reshape(-1, 8).to(torch.uint8) << _shifts(flat.device)).sum(1, dtype=torch.uint8)

    @property
    def numel(self) -> int:
        """Entries of the mask."""
        return self.shape.numel()

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self._packed.numel()

    @property
    def padded(self) -> int:
        """Entries a buffer for :meth:`tensor` needs (the mask's, rounded up to whole bytes)."""
        return self._packed.numel() * 8

    def tensor(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The mask as a bool tensor, shaped and placed as it was packed: a new one, or written into
        ``out`` (a contiguous 1-D bool buffer of at least :attr:`padded` entries on its device, so
        that writing many masks in turn allocates nothing) and returned as a view of it."""
        n, packed = self.numel, self._packed
        if out is None:
            out = torch.empty(self.padded, dtype=torch.bool, device=packed.device)
        if packed.device.type == "cpu":
            np.take(_BYTES, packed.numpy(), out=out[:self.padded].numpy().view(np.uint64))
        else:
            bytes_ = out[:self.padded].view(torch.uint8).view(-1, 8)
            torch.bitwise_right_shift(packed[:, None], _shifts(packed.device), out=bytes_)
            bytes_.bitwise_and_(1)
        return out[:n].view(self.shape)

    def same(self, other: "Bits") -> bool:
        """Whether ``other`` holds the same mask (shape and every entry)."""
        return self is other or (self.shape == other.shape and self.kept == other.kept
                                 and torch.equal(self._packed.cpu(), other._packed.cpu()))

    def __repr__(self) -> str:
        return f"Bits({tuple(self.shape)}, {self.kept} of {self.numel} kept)"


def unique_nbytes(bits) -> int:
    """Bytes of the :class:`Bits` in ``bits`` (an iterable; anything else is skipped), each object
    counted once (plans of coupled layers, and steps that did not change them, share one).

    Example:
        >>> b = Bits(torch.ones(16, dtype=torch.bool))
        >>> unique_nbytes([b, b, None])
        2
    """
    return sum(b.nbytes for b in {id(b): b for b in bits if isinstance(b, Bits)}.values())
