"""Training batches: what a training run reads, shuffled reproducibly, checked as it goes.

Tensor data is sliced directly (fast); other datasets go through a DataLoader; a DataLoader is
used as given. A stream (an ``IterableDataset``) is refused with what to do (:data:`STREAM_HELP`).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from ..core.data import LABEL_KEY, PairDataset, as_dataset, check_class_targets, is_stream, labelled, split_batch
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
        label_key: where dict batches keep their labels (causal LM labels are shifted to the
            next token as each batch is read, see :func:`prunelab.core.data.labelled`).

    Raises:
        ValueError: no data, empty data, a bad batch size, or class targets out of range.
        TypeError: a stream, or batches that are not (inputs, targets) pairs.

    Example:
        >>> batches = Batches((torch.randn(10, 4), torch.zeros(10, dtype=torch.long)), 4, "cpu")
        >>> len(batches), [len(x) for x, _ in batches]
        (3, [4, 4, 2])
    """

    def __init__(self, train_data, batch_size: int, device, seed: int = 0, *, classes: int = 0,
                 label_key: str = LABEL_KEY):
        if train_data is None:
            raise ValueError("training needs train_data: create the Pruner with train_data=... (a DataLoader, "
                             "a Dataset, or an (inputs, targets) pair of tensors).")
        check_batch_size(batch_size)
        if is_stream(train_data):
            raise TypeError(STREAM_HELP)
        self.device, self.classes, self.label_key = device, classes, label_key
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = None
        self.tensors = None
        if isinstance(train_data, torch.utils.data.DataLoader):
            self.loader = train_data
        else:
            ds = as_dataset(train_data, "train_data", label_key)
            if isinstance(ds, PairDataset) or (isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) == 2):
                self.tensors = (ds.x, ds.y) if isinstance(ds, PairDataset) else ds.tensors
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
            x, y = labelled(*split_batch(batch, "train_data", self.label_key))
            if self.classes:
                check_class_targets(y, self.classes, "train_data")
            yield x.to(self.device), y.to(self.device)
