"""torch.fx tracing that no forward pass on another thread trips over.

``torch.fx.symbolic_trace`` patches ``nn.Module.__call__`` and ``__getattr__`` for the whole
process while it traces. A forward pass on another thread in that window goes through the patched
methods and fails ("module is not installed as a submodule") or leaks into the trace. The explorer
runs background jobs (fine-tuning, recalibration, sensitivity) whose private Pruner traces its copy
while the kernel's thread measures. So prunelab traces holding :data:`TRACING` alone, and runs
its forward passes holding it shared: a trace waits for running passes, a pass for a trace.
Passes never wait for each other.

Example:
    >>> with TRACING.shared():                  # a forward pass (any thread)
    ...     _ = nn.Linear(2, 2)(torch.zeros(1, 2))     # doctest: +SKIP
    >>> graph = symbolic_trace(nn.Linear(2, 2)).graph   # a trace: alone
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager

from torch import fx, nn


class SharedOrAlone:
    """A lock held shared by many threads or alone by one. The thread holding it alone may also
    take it shared (a trace runs the model's forward symbolically), and a thread holding it shared
    may take it alone when no other thread holds it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared: Counter = Counter()
        self._alone: int | None = None
        self._depth = 0

    @contextmanager
    def shared(self):
        me = threading.get_ident()
        with self._cond:
            while self._alone not in (None, me):
                self._cond.wait()
            self._shared[me] += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared[me] -= 1
                if not self._shared[me]:
                    del self._shared[me]
                self._cond.notify_all()

    @contextmanager
    def alone(self):
        me = threading.get_ident()
        with self._cond:
            while self._alone not in (None, me) or any(t != me for t in self._shared):
                self._cond.wait()
            self._alone, self._depth = me, self._depth + 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._alone = None
                self._cond.notify_all()


TRACING = SharedOrAlone()


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace(model)`` while no other thread runs a prunelab forward pass.

    Args:
        model: the module to trace.

    Returns:
        The traced GraphModule (exceptions from tracing propagate, as fx raises them).

    Example:
        >>> len(list(symbolic_trace(nn.Linear(2, 2)).graph.nodes))
        4
    """
    with TRACING.alone():
        return fx.symbolic_trace(model)



