"""What every panel shares: built like the views, from (pruner, state, post), giving a widget.

A panel is a tab beside the Inspect views (export, fine-tuning, your own). Like a view it reads
the Pruner and observes the state hub; unlike a view it may act on the Pruner (export, retrain),
always on the kernel's main thread through ``post``. A panel is itself an ipywidgets VBox (its
``widget`` is the panel), so it can also be shown on its own: made without an explorer's state,
it makes its own hub following the Pruner (:func:`prunelab.explorer.state.follow`), and without
``post``, its own :class:`~prunelab.explorer.background.Scheduler`, made on the thread that made
the panel and posted to with ``Scheduler.call`` (at once on that thread; from other threads
through the asyncio loop running there, which it adopts once it runs, else queued until drained).
"""

from __future__ import annotations

from typing import Callable

import ipywidgets as w

from ..background import Scheduler
from ..state import ExplorerState, follow, measure


class Panel(w.VBox):
    """Base of the explorer's panels: subclasses set ``title`` and implement :meth:`build`.

    Args:
        pruner: the Pruner the panel shows (and acts on, on the main thread).
        state: the explorer's ExplorerState; default: a new one that follows ``pruner``.
        post: ``post(key, fn)`` running ``fn`` on the kernel's main thread, from any thread
            (``Scheduler.post``); default: ``call`` of a Scheduler of the panel's own, made on
            this thread.

    Returns:
        The panel, an ipywidgets widget with the classes ``prunelab-panel`` and ``prunelab-<slug>``.

    Example:
        >>> class Sparsity(Panel):
        ...     title = "Sparsity"
        ...     def build(self):
        ...         self.label = w.HTML()
        ...         self.watch(lambda _: setattr(self.label, "value", f"{self.pruner.overall_sparsity():.0%}"),
        ...                    "revision")
        ...         return [self.label]
        >>> panel = Sparsity(pruner)
        >>> pruner.prune(0.5); panel.label.value
        '50%'
    """

    title = ""

    def __init__(self, pruner, state: ExplorerState | None = None,
                 post: Callable[[str, Callable[[], None]], None] | None = None):
        super().__init__()
        self.pruner = pruner
        self._own_scheduler = Scheduler() if post is None else None
        self.post = post if post is not None else self._post_own
        self._watching: list[tuple[Callable, object]] = []
        self._unfollow: Callable[[], None] | None = None
        if state is None:  # shown on its own: a hub of its own, following the Pruner
            state = ExplorerState(layer_names=tuple(pruner.layer_names))
            soon = self._own_scheduler.soon if self._own_scheduler is not None else self.post
            self._unfollow = follow(pruner, soon, lambda: measure(pruner, state))
        self.state = state
        self.children = tuple(self.build())
        self.add_class("prunelab-panel")
        self.add_class(f"prunelab-{self.slug}")

    def _post_own(self, _key: str, fn: Callable[[], None]) -> None:
        # A panel on its own may be made before its loop runs (a script, then asyncio.run):
        # Scheduler.call adopts the loop on its first call inside it, and runs clicks at once.
        self._own_scheduler.call(fn)

    @property
    def widget(self) -> w.Widget:
        """What the explorer lays out: the panel itself (as ``View.widget`` for the views)."""
        return self

    @property
    def slug(self) -> str:
        """CSS class suffix: prunelab-export, ..."""
        return type(self).__name__.removesuffix("Panel").lower()

    def build(self) -> list[w.Widget]:
        """The panel's children, top to bottom (subclasses implement it)."""
        raise NotImplementedError

    def watch(self, handler: Callable[[dict], None], names) -> None:
        """Observe the state's ``names`` until the panel is closed (as ``state.observe``).

        Args:
            handler: ``handler(change)``, on the main thread. names: a trait name or a list.

        Returns:
            None.

        Example: ``self.watch(self._mark_stale, "revision")``.
        """
        self.state.observe(handler, names)
        self._watching.append((handler, names))

    def close(self) -> None:
        """Stop observing the state (and following the Pruner, for a panel on its own), and close."""
        for handler, names in self._watching:
            self.state.unobserve(handler, names)
        self._watching = []
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        if self._own_scheduler is not None:
            self._own_scheduler.close()
        super().close()
