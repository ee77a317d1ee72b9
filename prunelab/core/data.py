"""Turning what users pass as data into tensors, with errors that say what to do.

Accepted everywhere: an ``(inputs, labels)`` pair, where inputs is a tensor or a dict of tensors
(the same first dimension; each key reaches the model as a keyword argument, see
:class:`~prunelab.core.inputs.Inputs`); a dict batch holding the labels under ``label_key``
(default ``"labels"``, as Hugging Face names them); or a Dataset or DataLoader of
``(input, label)`` pairs or of such dicts. A stream (an ``IterableDataset``, or a DataLoader over
one) can be measured and scored on (its first samples), but not trained on: see :func:`is_stream`.

Labels equal to the token inputs (a causal language model's ``labels=input_ids``) are shifted
once, as they are read, into next-token targets (:mod:`.tokens`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from .inputs import Inputs, concat
from .tokens import is_causal, next_token_targets

DATA_HELP = ("Pass a DataLoader, a Dataset of (input, target) pairs (or of dicts holding the labels under "
             "label_key, default 'labels'), or an (inputs, targets) pair (inputs a tensor or a dict of tensors).")
LABEL_KEY = "labels"


def _as_inputs(x, what: str):
    """A tensor as it is; a mapping of tensors (a dict, a BatchEncoding) as Inputs."""
    if isinstance(x, (torch.Tensor, Inputs)):
        return x
    if isinstance(x, Mapping):
        try:
            return Inputs(x)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{what}: {e}") from None
    return torch.as_tensor(x)


def _is_pair(data) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor)
            and isinstance(data[0], (torch.Tensor, Inputs, Mapping)))


def split_batch(batch, what: str, label_key: str = LABEL_KEY):
    """``(inputs, labels)`` of one batch or one sample: an ``(input, label)`` pair, or a dict
    whose ``label_key`` holds the labels (every other key is an input). Not shifted.

    Args:
        batch: what a DataLoader yields, or an item of a Dataset.
        what: the data's name for messages ("val_data", "train_data").
        label_key: where a dict keeps its labels.

    Returns:
        ``(tensor or Inputs, labels)``.

    Raises:
        ValueError: a dict without ``label_key`` (the message names the keys it has).
        TypeError: anything else that is not a pair.

    Example:
        >>> x, y = split_batch({"input_ids": torch.zeros(2, 3), "labels": torch.ones(2)}, "val_data")
        >>> type(x).__name__, y.tolist()
        ('Inputs', [1.0, 1.0])
    """
    if isinstance(batch, Mapping):
        if label_key not in batch:
            raise ValueError(f"{what}: a batch holds the keys {sorted(map(str, batch.keys()))} but no labels under "
                             f"{label_key!r}. Put the labels there, or name their key: label_key='...'.")
        x = {k: v for k, v in batch.items() if k != label_key}
        if not x:
            raise ValueError(f"{what}: a batch holds only its labels ({label_key!r}) and no inputs.")
        return _as_inputs(x, what), torch.as_tensor(batch[label_key])
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return _as_inputs(batch[0], what), torch.as_tensor(batch[1])
    raise TypeError(f"{what}: each item must be an (input, target) pair or a dict with its labels under "
                    f"{label_key!r}, got {type(batch).__name__}.")


def labelled(x, y: torch.Tensor):
    """``(x, y)`` with causal LM labels (equal to the token inputs: ``input_ids``, or the input
    tensor itself) shifted to next-token targets; any other labels as they are.

    Example:
        >>> labelled(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 3]]))[1].tolist()
        [[2, 3, -100]]
    """
    ids = x["input_ids"] if isinstance(x, Inputs) and "input_ids" in x else x
    if isinstance(ids, torch.Tensor) and is_causal(ids, y):
        return x, next_token_targets(y)
    return x, y


def _check_lengths(x, y, what: str) -> None:
    if len(x) != len(y):
        raise ValueError(f"{what}: {len(x)} inputs but {len(y)} targets; they must pair up one to one.")


class PairDataset(Dataset):
    """A Dataset over an ``(inputs, labels)`` pair whose inputs are :class:`Inputs` (item ``i``
    is ``({name: tensor}, label)``, which the default collate turns back into a dict batch)."""

    def __init__(self, x: Inputs, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[int(i)], self.y[i]


def read_pair(data, what: str, label_key: str = LABEL_KEY):
    """The ``(inputs, labels)`` of pair-like data, checked and shifted (see :func:`labelled`); None
    for a Dataset or DataLoader.

    Example:
        >>> read_pair((torch.zeros(2, 3), torch.ones(2)), "val_data")[1].tolist()
        [1.0, 1.0]
    """
    if isinstance(data, Mapping) and not isinstance(data, Inputs):
        x, y = split_batch(data, what, label_key)
    elif _is_pair(data):
        x, y = _as_inputs(data[0], what), data[1]
    else:
        return None
    _check_lengths(x, y, what)
    return labelled(x, y)


def as_dataset(data, what: str, label_key: str = LABEL_KEY) -> Dataset:
    """A Dataset view of ``data`` without copying it.

    Example:
        >>> len(as_dataset((torch.zeros(3, 2), torch.zeros(3)), "val_data"))
        3
    """
    if isinstance(data, DataLoader):
        return data.dataset
    if isinstance(data, Dataset):
        return data
    pair = read_pair(data, what, label_key)
    if pair is not None:
        x, y = pair
        return PairDataset(x, y) if isinstance(x, Inputs) else TensorDataset(x, y)
    raise TypeError(f"{what}: got {type(data).__name__}. {DATA_HELP}")


def take(x, y: torch.Tensor, what: str, *, max_samples: int | None = None, device=None, seed: int = 0):
    """``(x, y)`` read already, cut to a fixed class-stratified subset of ``max_samples`` (None:
    all) and moved to ``device``.

    Example:
        >>> len(take(torch.zeros(10, 2), torch.arange(10) % 2, "val_data", max_samples=4)[0])
        4
    """
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


def _read_batches(batches, what: str, label_key: str, limit: int | None = None):
    xs, ys, got = [], [], 0
    for batch in batches:
        x, y = split_batch(batch, what, label_key)
        _check_lengths(x, y, what)
        xs.append(x)
        ys.append(y)
        got += len(y)
        if limit is not None and got >= limit:
            break
    if not xs:
        raise ValueError(f"{what} is empty: prunelab measures on real samples, so give it at least one.")
    try:
        y = torch.cat(ys)
    except RuntimeError as e:
        raise ValueError(f"{what}: the labels of different batches do not join ({e}); pad token labels to one "
                         "length.") from None
    return labelled(concat(xs), y)


def materialize(data, what: str, *, max_samples: int | None = None, device=None,
                seed: int = 0, label_key: str = LABEL_KEY):
    """All of ``data`` (or a fixed class-stratified subset of ``max_samples``) as ``(inputs,
    labels)``: inputs a tensor, or :class:`~prunelab.core.inputs.Inputs` for dict inputs.

    Args:
        data: any of the forms in this module's docstring.
        what: its name for messages.
        max_samples, device, seed: as :func:`take`.
        label_key: where dict batches keep their labels.

    Example:
        >>> x, y = materialize([{"x": torch.zeros(2), "labels": 1}] * 3, "val_data")  # doctest: +SKIP
    """
    pair = read_pair(data, what, label_key)
    if pair is None:
        loader = in_order(data) if isinstance(data, DataLoader) else DataLoader(as_dataset(data, what, label_key),
                                                                                batch_size=1024)
        pair = _read_batches(loader, what, label_key)
    return take(*pair, what, max_samples=max_samples, device=device, seed=seed)


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
        y: targets; 1-D integer tensors are class indices, 2-D ones token labels (-100 skipped);
            others are not checked.
        classes: the model's number of outputs.
        what: which data, for the message ("val_data", "train_data").

    Example:
        >>> check_class_targets(torch.tensor([0, 3]), 3, "train_data")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: train_data: targets range over [0, 3] but the model has 3 outputs: ...
    """
    if y.dim() not in (1, 2) or y.dtype.is_floating_point or y.is_complex() or y.dtype == torch.bool:
        return
    if y.dim() == 2:  # token labels: -100 is not scored
        y = y[y != -100]
    if y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        raise ValueError(f"{what}: targets range over [{lo}, {hi}] but the model has {classes} outputs: "
                         f"class-index targets must lie in [0, {classes}).")




def first_samples(data, n: int, what: str, device=None, label_key: str = LABEL_KEY):
    """Up to ``n`` samples from the start of ``data``, without reading the rest (a stream too).

    Returns:
        ``(inputs, labels)`` as :func:`materialize` gives them.

    Example:
        >>> len(first_samples((torch.zeros(5, 2), torch.zeros(5)), 2, "val_data")[0])
        2
    """
    pair = read_pair(data, what, label_key)
    if pair is not None:
        return take(pair[0][:n], pair[1][:n], what, device=device)
    if is_stream(data):
        if isinstance(data, DataLoader):  # its own batches: take whole ones until n samples, then cut
            x, y = _read_batches(data, what, label_key, limit=n)
        else:
            items = list(itertools.islice(iter(data), n))
            x, y = _read_batches(DataLoader(items, batch_size=max(len(items), 1)) if items else [], what, label_key)
        return take(x[:n], y[:n], what, device=device)
    ds = as_dataset(data, what, label_key)
    if len(ds) == 0:
        raise ValueError(f"{what} is empty: give it at least one sample.")
    collate = data.collate_fn if isinstance(data, DataLoader) else None  # a user's padding collator, say
    loader = DataLoader(torch.utils.data.Subset(ds, range(min(n, len(ds)))), batch_size=1024, collate_fn=collate)
    return take(*_read_batches(loader, what, label_key), what, device=device)
