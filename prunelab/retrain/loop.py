"""The training loop with masks held: optimizers, hooks, and one masked training run (the batches
are in :mod:`.batches`).

Pruned weights stay exactly zero while training: their gradients are masked before each
optimizer step, the masks are re-applied after it, and the optimizer's per-weight state
(Adam's moments, SGD's momentum) is zeroed where the mask is False, so no momentum revives them.

Training changes parameters only. Normalization layers with running statistics (BatchNorm and
the like) stay in eval mode while training, and every buffer (running statistics, counters a
module keeps in Python) is put back bit for bit when training ends, however it ends: the Pruner's
history holds parameters only, so undo/reset stay exact. Every module's own train/eval flag comes
back too, one by one (a submodule kept in eval, or an MC-dropout kept in train mode, stays so).

Any torch.optim optimizer works, those that need a closure (LBFGS) too: each step is taken as
``optimizer.step(closure)``. The loss must return a scalar (``reduction='mean'`` or ``'sum'``).

Cancelling (a ``threading.Event`` in :class:`Hooks`) stops between batches with :class:`Cancelled`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from ..core.inputs import forward
from ..core.modes import untouched
from .batches import Batches
from .settings import check_optimizer, check_whole

__all__ = ["Batches", "Cancelled", "Hooks", "apply_masks", "check_scalar_loss", "checked_loss", "console_progress",
           "keeps_statistics", "make_optimizer", "train_masked", "trained_weights", "training_mode"]


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


# ---------------------------------------------------------------------- optimizers

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


def keeps_statistics(module: nn.Module) -> bool:
    """Whether ``module`` normalizes with running statistics (BatchNorm, InstanceNorm with
    ``track_running_stats``, and their subclasses): those stay in eval mode while training."""
    return isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats


@contextlib.contextmanager
def training_mode(model: nn.Module):
    """Train mode (dropout active) with running statistics frozen (:func:`keeps_statistics` in eval
    mode); every flag and buffer comes back as it was after (:func:`prunelab.core.modes.untouched`).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval()
        >>> with training_mode(model):
        ...     print(model[0].training, model[1].training)
        True False
    """
    with untouched(model, train=True):
        for m in model.modules():
            if keeps_statistics(m):
                m.eval()
        yield model


def check_scalar_loss(value) -> None:
    """A clear error unless ``value`` (what the loss returned) is one number with a gradient.

    Raises:
        TypeError: not a tensor.
        ValueError: not one number (e.g. ``reduction='none'``), or no gradient to the parameters.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"the loss returned {type(value).__name__}; it must return a scalar tensor computed "
                        "from the outputs (e.g. nn.functional.cross_entropy(outputs, targets)).")
    if value.numel() != 1:
        raise ValueError(f"the loss returned a tensor of shape {tuple(value.shape)}, not one number: training "
                         "steps on a scalar. Reduce it (reduction='mean' or 'sum', or .mean() in your loss).")
    if not value.requires_grad:
        raise ValueError("the loss has no gradient with respect to the trainable parameters (computed without "
                         "autograd, detached, or under torch.no_grad()): return it as a tensor computed from the "
                         "model's outputs.")


def checked_loss(value, lr: float) -> torch.Tensor:
    """``value`` (what the loss returned for a batch) as a scalar, if training can step on it.

    Raises:
        TypeError, ValueError: as :func:`check_scalar_loss`.
        FloatingPointError: not finite (the message suggests a lower ``lr``).
    """
    check_scalar_loss(value)
    if not torch.isfinite(value.detach()).all():
        raise FloatingPointError(f"the training loss became {float(value.detach())}; lower lr (now {lr}).")
    return value.reshape(())


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
                 total: int | None = None, what: str = "fine-tuning", seed: int = 0, output=None) -> list[float]:
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
        output: the Pruner's output selector (:func:`prunelab.core.inputs.forward`).

    Returns:
        The mean training loss of each epoch.

    Raises:
        Cancelled: when ``hooks.cancel`` is set (between batches).
        TypeError, ValueError: when the loss does not return a scalar with a gradient (see
            :func:`checked_loss`).
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
    takes_closure = "closure" in inspect.signature(opt.step).parameters
    apply_masks(params, dropped, opt)
    losses = []
    state_masked = False
    with training_mode(model), _seeded(seed, next(iter(params.values())).device):
        for _ in range(epochs):
            running, n = 0.0, 0
            for x, y in batches:
                hooks.check()
                values = []

                def closure(x=x, y=y):  # LBFGS calls it several times a step; the first loss is the batch's
                    opt.zero_grad(set_to_none=True)
                    value = checked_loss(loss(forward(model, x, output), y), lr)
                    value.backward()
                    for name, d in dropped.items():
                        g = params[name].grad
                        if g is not None:
                            g.masked_fill_(d, 0)
                    values.append(value.detach())
                    return value

                if takes_closure:
                    opt.step(closure)
                else:
                    closure()
                    opt.step()
                value = values[0]
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
