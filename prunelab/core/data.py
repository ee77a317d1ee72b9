"""Turning what users pass as data into tensors, with errors that say what to do.

Accepted everywhere: a DataLoader, a Dataset of ``(input, target)`` items, or an
``(inputs, targets)`` pair of tensors. A stream (an ``IterableDataset``, or a DataLoader over one)
can be measured and scored on (its first samples), but not trained on: see :func:`is_stream`.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

DATA_HELP = "Pass a DataLoader, a Dataset of (input, target) pairs, or an (inputs, targets) pair of tensors."


def as_dataset(data, what: str) -> Dataset:
    """A Dataset view of ``data`` without copying it."""
    if isinstance(data, DataLoader):
        return data.dataset
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"{what}: {len(x)} inputs but {len(y)} targets; they must pair up one to one.")
        return TensorDataset(x, y)
    raise TypeError(f"{what}: got {type(data).__name__}. {DATA_HELP}")


def materialize(data, what: str, *, max_samples: int | None = None, device=None,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``data`` (or a fixed class-stratified subset of ``max_samples``) as two tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"{what}: {len(x)} inputs but {len(y)} targets; they must pair up one to one.")
    else:
        loader = in_order(data) if isinstance(data, DataLoader) else DataLoader(as_dataset(data, what), batch_size=1024)
        xs, ys = [], []
        for batch in loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError(f"{what}: each item must be an (input, target) pair, got {type(batch).__name__}.")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
        if not xs:
            raise ValueError(f"{what} is empty: prunelab measures on real samples, so give it at least one.")
        x, y = torch.cat(xs), torch.cat(ys)
    if len(x) == 0:
        raise ValueError(f"{what} is empty: prunelab measures on real samples, so give it at least one.")
    if max_samples is not None and len(x) > max_samples:
        keep = stratified_subset(y, max_samples, seed)
        x, y = x[keep], y[keep]
    if device is not None:
        try:
            x, y = x.to(device), y.to(device)
        except (RuntimeError, NotImplementedError) as e:
            raise ValueError(f"{what} lives on {x.device} and cannot be moved to the model's device "
                             f"{device} ({e}). Move the data to {device} first.") from None
    return x, y


def in_order(loader: DataLoader) -> DataLoader:
    """``loader`` itself, or, when it only shuffles (``shuffle=True``: a RandomSampler over the
    whole dataset without replacement), a loader over the same dataset in index order with the
    same batch size and collate function. So the same data and seed give the same samples (and
    the same subset) whatever the shuffle.

    Example:
        >>> ds = TensorDataset(torch.arange(4.0), torch.arange(4))
        >>> next(iter(in_order(DataLoader(ds, batch_size=4, shuffle=True))))[1].tolist()
        [0, 1, 2, 3]
    """
    sampler = loader.sampler
    shuffles = (type(sampler) is torch.utils.data.RandomSampler and not sampler.replacement
                and sampler.num_samples == len(loader.dataset))
    if not shuffles or loader.batch_size is None:
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn,
                      drop_last=loader.drop_last, num_workers=loader.num_workers)


def stratified_subset(targets: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` samples with each class in proportion (for non-class targets: uniform):
    the first ``n`` of :func:`stratified_order`, sorted."""
    return stratified_order(targets, seed)[:n].sort().values


def stratified_order(targets: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Every sample's index, in a fixed seeded order whose every prefix holds each class in
    proportion (for non-class targets: a seeded shuffle).

    Args:
        targets: the targets (1-D integer tensors are class indices).
        seed: seeds the shuffle within each class.

    Returns:
        A permutation of ``range(len(targets))`` (int64, on the CPU).

    Example:
        >>> stratified_order(torch.tensor([0, 0, 1, 1]))[:2].sort().values.tolist() in ([0, 2], [0, 3], [1, 2], [1, 3])
        True
    """
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(targets), generator=gen)
    if targets.dtype.is_floating_point or targets.dim() != 1:
        return perm
    y = targets.cpu()[perm]
    # Rank each sample within its class, then order by relative rank: every prefix is proportional.
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(y)) - starts[y[order]]
    relative = (rank.double() + 0.5) / counts[y].double()
    return perm[torch.argsort(relative, stable=True)]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


def is_stream(data) -> bool:
    """Whether ``data`` is a stream: an ``IterableDataset``, or a DataLoader over one. A stream
    has no indexable samples (no reproducible shuffle) and often no length.

    Example:
        >>> is_stream((torch.zeros(2, 3), torch.zeros(2))), is_stream(DataLoader(range(4)))
        (False, False)
    """
    ds = data.dataset if isinstance(data, DataLoader) else data
    return isinstance(ds, IterableDataset)


def check_class_targets(y: torch.Tensor, classes: int, what: str) -> None:
    """A ValueError unless the class-index targets ``y`` lie in ``[0, classes)`` (the model's outputs).

    Args:
        y: targets; only 1-D integer tensors are class indices (others are not checked).
        classes: the model's number of outputs.
        what: which data, for the message ("val_data", "train_data").

    Example:
        >>> check_class_targets(torch.tensor([0, 3]), 3, "train_data")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: train_data: targets range over [0, 3] but the model has 3 outputs: ...
    """
    if y.dim() != 1 or y.numel() == 0 or y.dtype.is_floating_point or y.is_complex() or y.dtype == torch.bool:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        raise ValueError(f"{what}: targets range over [{lo}, {hi}] but the model has {classes} outputs: "
                         f"class-index targets must lie in [0, {classes}).")


def first_samples(data, n: int, what: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` samples from the start of ``data``, without reading the rest (a stream too)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return materialize((data[0][:n], data[1][:n]), what, device=device)
    if is_stream(data):
        if isinstance(data, DataLoader):  # its own batches: take whole ones until n samples, then cut
            xs, ys, got = [], [], 0
            for batch in data:
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    raise TypeError(f"{what}: each batch must be an (inputs, targets) pair, got "
                                    f"{type(batch).__name__}.")
                xs.append(torch.as_tensor(batch[0]))
                ys.append(torch.as_tensor(batch[1]))
                got += len(xs[-1])
                if got >= n:
                    break
            if not xs:
                raise ValueError(f"{what} is empty: give it at least one sample.")
            return materialize((torch.cat(xs)[:n], torch.cat(ys)[:n]), what, device=device)
        items = list(itertools.islice(iter(data), n))
        if not items:
            raise ValueError(f"{what} is empty: give it at least one sample.")
        return materialize(DataLoader(items, batch_size=len(items)), what, device=device)
    ds = as_dataset(data, what)
    if len(ds) == 0:
        raise ValueError(f"{what} is empty: give it at least one sample.")
    loader = DataLoader(torch.utils.data.Subset(ds, range(min(n, len(ds)))), batch_size=1024)
    return materialize(loader, what, device=device)
