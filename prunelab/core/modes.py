"""Running a model without changing it, and noticing what changed it.

Everything in core that runs the user's model (forward checks, FLOP counting, tracing, scoring,
evaluation) runs it inside :func:`untouched`: every module in eval mode for the duration, then
each module's *own* train flag restored (``model.train(was)`` would flatten a model with one
submodule kept in eval mode, or MC-dropout kept in train mode, to one flag), and every buffer
that the forward changed put back bit for bit (a BatchNorm subclass counting batches in Python,
a cache a module fills as it runs).

:func:`forward_hooks` lists the modules with forward hooks (which change what ``model(x)``
returns), and :func:`stamp` fingerprints the buffers and hooks per module, so cached measurements are
not served after either changed. :func:`param_versions` fingerprints the parameters (their identity
and ``tensor._version`` counters), so the Pruner notices weights changed behind its back.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.modules import module as _torch_module


@contextlib.contextmanager
def untouched(model: nn.Module, train: bool = False):
    """Run ``model`` in eval mode (``train=True``: train mode) for the duration, then restore each
    module's own train flag and every buffer changed meanwhile (even on an error or a
    KeyboardInterrupt).

    Args:
        model: the model.
        train: the mode to run in (False: eval).

    Yields:
        The model.

    Example:
        >>> m = nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)); m[0].train(); m[1].eval()
        >>> with untouched(m):
        ...     _ = m(torch.ones(3, 2))
        >>> m[0].training, m[1].training
        (True, False)
    """
    modes = [(m, m.training) for m in model.modules()]
    saved = [(m, name, b, b._version, b.detach().clone())
             for m in model.modules() for name, b in m.named_buffers(recurse=False) if isinstance(b, torch.Tensor)]
    try:
        model.train(train)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for m, name, b, version, value in saved:
                if getattr(m, name, None) is not b:
                    setattr(m, name, b)
                # BatchNorm's kernel updates its running statistics without moving the version
                # counter, so compare values too; copy only what changed (a copy moves the counter)
                if b._version != version or not torch.equal(b, value):
                    b.copy_(value)


def forward_hooks(model: nn.Module) -> dict[str, tuple]:
    """``{module name: (forward hook ids, forward pre-hook ids)}`` for the modules of ``model``
    with forward hooks; ``"*"`` when a global forward hook is registered
    (``torch.nn.modules.module.register_module_forward_hook``).

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2)); _ = m.register_forward_hook(lambda *a: None)
        >>> list(forward_hooks(m))
        ['']
    """
    out = {}
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        out["*"] = (tuple(_torch_module._global_forward_hooks), tuple(_torch_module._global_forward_pre_hooks))
    for n, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            out[n] = (tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
    return out


def stamp(model: nn.Module) -> dict[str, tuple]:
    """A fingerprint of ``model``'s buffers (identity and version) and forward hooks, per module
    name (``"*"``: the global hooks): where two stamps differ, a buffer was written or replaced,
    or a forward hook came or went, in that module. :func:`changed_modules` compares two.

    Example:
        >>> m = nn.Sequential(nn.BatchNorm1d(2)); s = stamp(m)
        >>> _ = m(torch.randn(4, 2)); changed_modules(s, stamp(m))   # train mode: running stats moved
        {'0'}
    """
    hooks = forward_hooks(model)
    out: dict[str, tuple] = {"*": hooks.get("*")}
    for n, m in model.named_modules():
        buffers = tuple((b_name, id(b), b._version) for b_name, b in m.named_buffers(recurse=False))
        if buffers or n in hooks:
            out[n] = (buffers, hooks.get(n))
    return out


def changed_modules(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    """Names of the modules whose entry differs between two :func:`stamp` results (``"*"`` for
    the global hooks).

    Example:
        >>> changed_modules({"a": (1,)}, {"a": (2,), "b": (3,)})
        {'a', 'b'}
    """
    return {n for n in set(before) | set(after) if before.get(n) != after.get(n)}


def param_versions(params) -> dict[str, tuple[int, int, int]]:
    """``{name: (id, version, data pointer)}`` of ``params`` (``{name: tensor}``): the same
    Parameter objects with the same ``_version`` counters over the same memory hold the values
    last written. (An in-place edit through ``p.data`` bypasses the version counter: torch
    gives no cheap way to see it.)

    Example:
        >>> p = nn.Linear(2, 2); v = param_versions(dict(p.named_parameters()))
        >>> with torch.no_grad(): _ = p.weight.mul_(2)
        >>> param_versions(dict(p.named_parameters())) == v
        False
    """
    return {n: (id(p), p._version, p.data_ptr()) for n, p in params.items()}
