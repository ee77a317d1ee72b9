"""The training loop with masks held: batches, optimizers, hooks, and one masked training run.

Pruned weights stay exactly zero while training: their gradients are masked before each
optimizer step, the masks are re-applied after it, and the optimizer's per-weight state
(Adam's moments, SGD's momentum) is zeroed where the mask is False, so no momentum revives them.

BatchNorm layers stay in eval mode while training: their running statistics are buffers that the
Pruner's history does not hold, so training leaves them untouched and undo/reset stay exact;
their affine parameters train like any other.

Cancelling (a ``threading.Event`` in :class:`Hooks`) stops between batches with :class:`Cancelled`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from ..core.data import as_dataset
from .settings import check_batch_size, check_optimizer, check_whole

class Cancelled(Exception):
    """Training was cancelled between two batches."""


@dataclass
class Hooks:
    """How a caller watches and stops a run (the explorer's panel uses these from its thread).

    ``progress(done, total, what)`` is called after every batch (``done`` counts batches in the
    whole run); setting ``cancel`` stops the run before the next batch.

    Example:
        >>> stop = threading.Event()
        >>> hooks = Hooks(progress=lambda done, total, what: print(done, total, what), cancel=stop)
        >>> stop.set(); hooks.check()
        Traceback (most recent call last):
        ...
        prunelab.retrain.loop.Cancelled: training was cancelled
    """

    progress: Callable[[int, int, str], None] | None = None
    cancel: threading.Event | None = None

    def check(self) -> None:
        """Raise :class:`Cancelled` when ``cancel`` is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("training was cancelled")


@contextlib.contextmanager
def console_progress(hooks: Hooks | None, enabled: bool, total: int, desc: str) -> Iterator[Hooks]:
    """``hooks`` with a tqdm progress bar added to their progress (when ``enabled``).

    Args:
        hooks: the caller's hooks, or None.
        enabled: False gives the caller's hooks unchanged (no bar).
        total: batches in the whole run.
        desc: the bar's first label.

    Returns:
        A context manager giving the hooks to run with; the bar closes when it exits.

    Example:
        >>> with console_progress(None, False, 10, "fine-tuning") as hooks:  # doctest: +SKIP
        ...     train_masked(model, masks, batches, loss, epochs=1, lr=1e-3, hooks=hooks)
    """
    hooks = hooks or Hooks()
    if not enabled:
        yield hooks
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False)

    def update(done, _total, what):
        bar.set_description(what, refresh=False)
        bar.update(done - bar.n)
        if hooks.progress is not None:
            hooks.progress(done, _total, what)

    try:
        yield Hooks(update, hooks.cancel)
    finally:
        bar.close()


# ---------------------------------------------------------------------- data and optimizers

class Batches:
    """Shuffled training batches on a device, reproducible from a seed. Tensor data is sliced
    directly (fast); other datasets go through a DataLoader; a DataLoader is used as given.

    Args:
        train_data: a DataLoader, a Dataset, or an ``(inputs, targets)`` pair of tensors.
        batch_size: a whole number >= 1 (ignored for a DataLoader, which has its own).
        device: where the batches go.
        seed: the shuffling seed (each pass over the data draws a new order from it).

    Example:
        >>> batches = Batches((torch.randn(10, 4), torch.zeros(10, dtype=torch.long)), 4, "cpu")
        >>> len(batches), [len(x) for x, _ in batches]
        (3, [4, 4, 2])
    """

    def __init__(self, train_data, batch_size: int, device, seed: int = 0):
        if train_data is None:
            raise ValueError("training needs train_data: create the Pruner with train_data=... (a DataLoader, "
                             "a Dataset, or an (inputs, targets) pair of tensors).")
        check_batch_size(batch_size)
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.loader = None
        self.tensors = None
        if isinstance(train_data, torch.utils.data.DataLoader):
            self.loader = train_data
        else:
            ds = as_dataset(train_data, "train_data")
            if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) == 2:
                self.tensors = ds.tensors
            else:
                self.loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                                          generator=self.generator)
        self.batch_size = batch_size
        if len(self) == 0:
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
            yield batch[0].to(self.device), batch[1].to(self.device)


def make_optimizer(optimizer, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimizer over ``params``.

    Args:
        optimizer: "adam", "adamw", "sgd" (momentum 0.9), a torch.optim class, or a function
            ``f(params, lr) -> Optimizer``.
        params: the parameters to train.
        lr: the learning rate.

    Returns:
        A torch.optim.Optimizer.

    Example:
        >>> make_optimizer("sgd", list(nn.Linear(2, 2).parameters()), 0.1).defaults["momentum"]
        0.9
    """
    check_optimizer(optimizer, lr)
    # foreach: one call for all tensors, which matters for small models on the CPU
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, foreach=True)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=True)
    opt = optimizer(params, lr=lr) if isinstance(optimizer, type) else optimizer(params, lr)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"optimizer returned {type(opt).__name__}, not a torch.optim.Optimizer.")
    return opt


# ---------------------------------------------------------------------- training with masks held

@contextlib.contextmanager
def training_mode(model: nn.Module):
    """Train mode (dropout active) with BatchNorm statistics frozen; restores the modes after.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval()
        >>> with training_mode(model):
        ...     print(model[0].training, model[1].training)
        True False
    """
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed dropout and other random layers without disturbing the caller's random state. Only on
    the main thread: the global generator is shared, and a worker thread must not rewind it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def apply_masks(params: Mapping[str, torch.Tensor], dropped: Mapping[str, torch.Tensor], optimizer=None) -> None:
    """Zero the ``dropped`` entries of the parameters and, given an optimizer, of its per-weight
    state (Adam's moments, SGD's momentum).

    Args:
        params: parameter name -> parameter.
        dropped: parameter name -> bool tensor, True where pruned.
        optimizer: the optimizer whose state to mask, or None.

    Example:
        >>> w = torch.ones(3)
        >>> apply_masks({"w": w}, {"w": torch.tensor([False, True, False])}); w.tolist()
        [1.0, 0.0, 1.0]
    """
    # masked_fill, not multiplication: -0.0 * False is -0.0, and pruned weights should be +0.0 bit for bit.
    with torch.no_grad():
        for n, d in dropped.items():
            p = params[n]
            p.masked_fill_(d, 0)
            if optimizer is not None:
                for v in optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape:
                        v.masked_fill_(d, 0)


def train_masked(model: nn.Module, masks: Mapping[str, torch.Tensor], batches: Batches, loss: Callable, *,
                 epochs: int, lr: float, optimizer="adam", hooks: Hooks | None = None, done: int = 0,
                 total: int | None = None, what: str = "fine-tuning", seed: int = 0) -> list[float]:
    """Train ``model`` in place for ``epochs`` with ``masks`` held (pruned weights stay +0.0).

    The learning rate follows a cosine decay to zero over the run.

    Args:
        model: the model to train (a private copy: never the Pruner's own).
        masks: parameter name -> keep-mask (True = kept).
        batches: the training batches.
        loss: ``f(outputs, targets) -> scalar tensor``.
        epochs: passes over the batches, a whole number >= 0.
        lr, optimizer: see :func:`make_optimizer`.
        hooks: progress and cancel (:class:`Hooks`).
        done, total: place this run's batches inside a longer run for ``hooks.progress``.
        what: the label passed to ``hooks.progress``.
        seed: seeds dropout (on the main thread only).

    Returns:
        The mean training loss of each epoch.

    Raises:
        Cancelled: when ``hooks.cancel`` is set (between batches).
        FloatingPointError: when the loss stops being finite.

    Example:
        >>> model = nn.Linear(4, 2)
        >>> data = Batches((torch.randn(8, 4), torch.randint(0, 2, (8,))), 4, "cpu")
        >>> keep = {"weight": torch.rand(2, 4) > 0.5}
        >>> losses = train_masked(model, keep, data, nn.functional.cross_entropy, epochs=2, lr=1e-2)
        >>> bool((model.weight[~keep["weight"]] == 0).all()), len(losses)
        (True, 2)
    """
    check_whole(epochs, "epochs")
    hooks = hooks or Hooks()
    params = dict(model.named_parameters())
    dropped = {n: ~m.to(params[n].device) for n, m in masks.items()}
    opt = make_optimizer(optimizer, [p for p in params.values() if p.requires_grad], lr)
    steps = max(epochs * len(batches), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    total = total if total is not None else epochs * len(batches)
    apply_masks(params, dropped, opt)
    losses = []
    state_masked = False
    with training_mode(model), _seeded(seed, next(iter(params.values())).device):
        for _ in range(epochs):
            running, n = 0.0, 0
            for x, y in batches:
                hooks.check()
                opt.zero_grad(set_to_none=True)
                value = loss(model(x), y)
                if not torch.isfinite(value):
                    raise FloatingPointError(f"the training loss became {float(value.detach())}; lower lr (now {lr}).")
                value.backward()
                for name, d in dropped.items():
                    g = params[name].grad
                    if g is not None:
                        g.masked_fill_(d, 0)
                opt.step()
                sched.step()
                # The weights are masked after every step, whatever the optimizer does. Its state
                # is masked once it exists (after the first step): from then on, with zero
                # gradients and zero weights at pruned entries, momentum and moments stay zero there.
                apply_masks(params, dropped, None if state_masked else opt)
                state_masked = True
                running += float(value.detach()) * len(x)
                n += len(x)
                done += 1
                if hooks.progress is not None:
                    hooks.progress(done, total, what)
            losses.append(running / max(n, 1))
    opt.zero_grad(set_to_none=True)
    return losses


def trained_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters, detached and cloned: what a run hands back to the Pruner.

    Example:
        >>> sorted(trained_weights(nn.Linear(2, 2)))
        ['bias', 'weight']
    """
    return {n: p.detach().clone() for n, p in model.named_parameters()}
