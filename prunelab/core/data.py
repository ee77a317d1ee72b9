"""Turning what users pass as data into tensors, with errors that say what to do.

Accepted everywhere: a DataLoader, a Dataset of ``(input, target)`` items, or an
``(inputs, targets)`` pair of tensors.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

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
    """Indices of ``n`` samples with each class in proportion (for non-class targets: uniform)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(targets), generator=gen)
    if targets.dtype.is_floating_point or targets.dim() != 1:
        return perm[:n].sort().values
    y = targets.cpu()[perm]
    # Rank each sample within its class, then take the n lowest by relative rank: proportional.
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(y)) - starts[y[order]]
    relative = (rank.double() + 0.5) / counts[y].double()
    chosen = torch.argsort(relative, stable=True)[:n]
    return perm[chosen].sort().values


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


def first_samples(data, n: int, what: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` samples from the start of ``data``, without reading the rest."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return materialize((data[0][:n], data[1][:n]), what, device=device)
    ds = as_dataset(data, what)
    if len(ds) == 0:
        raise ValueError(f"{what} is empty: give it at least one sample.")
    loader = DataLoader(torch.utils.data.Subset(ds, range(min(n, len(ds)))), batch_size=1024)
    return materialize(loader, what, device=device)
