"""Training batches: what a training run reads, shuffled reproducibly, checked as it goes.

Tensor data is sliced directly (fast); other datasets go through a DataLoader; a DataLoader is
used as given. A stream (an ``IterableDataset``) is refused with what to do (:data:`STREAM_HELP`).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from ..core.data import as_dataset, check_class_targets, is_stream
from .settings import check_batch_size

STREAM_HELP = ("train_data is a stream (an IterableDataset, or a DataLoader over one): training shuffles its "
               "samples reproducibly from a seed and counts batches for its schedule and progress, which a stream "
               "cannot give. Pass a map-style Dataset (with __len__ and __getitem__), a DataLoader over one, or "
               "the samples as an (inputs, targets) pair of tensors. The stream can still be val_data.")


class Batches:
    """Shuffled training batches on a device, reproducible from a seed. Tensor data is sliced
    directly (fast); other datasets go through a DataLoader; a DataLoader is used as given.

    Args:
        train_data: a DataLoader, a Dataset, or an ``(inputs, targets)`` pair of tensors (not a
            stream: see :data:`STREAM_HELP`).
        batch_size: a whole number >= 1 (ignored for a DataLoader, which has its own).
        device: where the batches go.
        seed: the shuffling seed (each pass over the data draws a new order from it).
        classes: the model's outputs when the targets are class indices (0: not checked). Tensor
            targets are checked here, at once; other data batch by batch, before each batch trains.

    Raises:
        ValueError: no data, empty data, a bad batch size, or class targets out of range.
        TypeError: a stream, or batches that are not (inputs, targets) pairs.

    Example:
        >>> batches = Batches((torch.randn(10, 4), torch.zeros(10, dtype=torch.long)), 4, "cpu")
        >>> len(batches), [len(x) for x, _ in batches]
        (3, [4, 4, 2])
    """

    def __init__(self, train_data, batch_size: int, device, seed: int = 0, *, classes: int = 0):
        if train_data is None:
            raise ValueError("training needs train_data: create the Pruner with train_data=... (a DataLoader, "
                             "a Dataset, or an (inputs, targets) pair of tensors).")
        check_batch_size(batch_size)
        if is_stream(train_data):
            raise TypeError(STREAM_HELP)
        self.device, self.classes = device, classes
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = None
        self.tensors = None
        if isinstance(train_data, torch.utils.data.DataLoader):
            self.loader = train_data
        else:
            ds = as_dataset(train_data, "train_data")
            if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) == 2:
                self.tensors = ds.tensors
                if classes:
                    check_class_targets(self.tensors[1], classes, "train_data")
            else:
                self.loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                                          generator=self.generator)
        self.batch_size = batch_size
        try:
            empty = len(self) == 0
        except TypeError:  # a DataLoader whose dataset has no length
            raise TypeError(STREAM_HELP) from None
        if empty:
            raise ValueError("train_data is empty: give it at least one (input, target) pair.")

    def __len__(self) -> int:
        if self.tensors is not None:
            return math.ceil(len(self.tensors[0]) / self.batch_size)
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.tensors is not None:
            x, y = self.tensors
            order = torch.randperm(len(x), generator=self.generator)
            for i in range(0, len(x), self.batch_size):
                idx = order[i:i + self.batch_size]
                yield x[idx].to(self.device), y[idx].to(self.device)
            return
        for batch in self.loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError(f"train_data: each batch must be an (inputs, targets) pair, got "
                                f"{type(batch).__name__}.")
            if self.classes and isinstance(batch[1], torch.Tensor):
                check_class_targets(batch[1], self.classes, "train_data")
            yield batch[0].to(self.device), batch[1].to(self.device)
