"""One report as a job in two parts, like the retraining jobs: :meth:`ReportJob.prepare` on the
Pruner's thread (check the kind and options, take a copy), :meth:`ReportJob.run` on any thread
(measure on the copy, with progress and cancel). :func:`report` is both in a row.

The Pruner is never changed: every measurement runs on an independent Pruner over the copy, so
its parameters, buffers, masks and history (steps and position) are as they were, bit for bit.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Callable

from ..core.base import BasePruner
from ..core.checks import did_you_mean
from ..core.copies import PrunerCopy
from ..core.tables import Table
from ..retrain import Hooks
from .common import Context
from .records import compare_table, iterations_table
from .speed import inference_table, timing_table
from .structure import layers_table, size_table
from .sweeps import criteria_table, sparsity_table, thresholds_table

REPORTS: dict[str, Callable[..., Table]] = {
    "sparsity": sparsity_table, "criteria": criteria_table, "layers": layers_table,
    "thresholds": thresholds_table, "iterations": iterations_table, "timing": timing_table,
    "inference": inference_table, "size": size_table, "compare": compare_table,
}
"""Each kind of table, and the function that measures it."""

KINDS = tuple(REPORTS)

DESCRIPTIONS = {
    "sparsity": "prune % -> accuracy, parameters, nonzero, memory and the sparse file's real size",
    "criteria": "accuracy at the same sparsities, criteria side by side (magnitude vs random...)",
    "layers": "per layer: connections before and after, reduction, share of the FLOPs",
    "thresholds": "absolute |w| thresholds -> accuracy, sparsity, size",
    "iterations": "the steps of the last iterate(): sparsity, accuracy, time",
    "timing": "time to score, prune, measure, fine-tune (per epoch) and export",
    "inference": "dense vs pruned vs structured (vs int8): accuracy, latency, FLOPs ratio",
    "size": "the dense file and each export format's real file, with the reduction",
    "compare": "several models or saved states, before and after pruning",
}

# The last iterate() history of each Pruner, recorded by Pruner.iterate (weakly: it lives as long as the Pruner).
_LAST_ITERATE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def remember_iterate(pruner: BasePruner, history: Table) -> Table:
    """Keep ``history`` as ``pruner``'s last iterate() run, for the "iterations" table; returns it."""
    _LAST_ITERATE[pruner] = history
    return history


def check_kind(kind: str) -> str:
    """``kind`` if it names a report, else a ValueError with a did-you-mean and the kinds."""
    if kind not in REPORTS:
        raise ValueError(f"unknown report {kind!r}.{did_you_mean(kind, KINDS, n=1)} Reports: {list(KINDS)}.")
    return kind


def options_of(kind: str) -> list[str]:
    """The keyword options a kind takes (e.g. ``options_of("sparsity")[0] == "sparsities"``)."""
    params = list(inspect.signature(REPORTS[check_kind(kind)]).parameters.values())[1:]
    return [p.name for p in params]


class ReportJob:
    """One report of ``pruner``: prepare on its thread, run on any.

    Args:
        pruner: the Pruner (never changed).
        kind: one of :data:`KINDS`.
        options: the kind's options (see each ``*_table`` function, or :func:`options_of`).

    Example:
        >>> job = ReportJob(pruner, "sparsity", sparsities=[0, 0.9]).prepare()   # doctest: +SKIP
        >>> table = job.run()                                                     # doctest: +SKIP   (any thread)
    """

    def __init__(self, pruner: BasePruner, kind: str, **options):
        self.pruner, self.kind, self.options = pruner, kind, options
        self.context: Context | None = None
        self.table: Table | None = None

    def prepare(self) -> "ReportJob":
        """On the Pruner's thread: check the kind and option names, and take the copy.

        Raises:
            ValueError: an unknown kind. TypeError: an option the kind does not take.
        """
        known = options_of(self.kind)
        for name in self.options:
            if name not in known:
                raise TypeError(f"report {self.kind!r} takes no option {name!r}.{did_you_mean(name, known, n=1)} "
                                f"Its options: {known}.")
        self.context = Context(PrunerCopy.of(self.pruner), history=_LAST_ITERATE.get(self.pruner))
        return self

    def run(self, hooks: Hooks | None = None) -> Table:
        """On any thread: measure on the copy.

        Args:
            hooks: progress ``(done, total, what)`` after each measured point, and cancel.

        Returns:
            The :class:`prunelab.Table`.
        """
        if self.context is None:
            raise RuntimeError("call prepare() (on the Pruner's thread) before run().")
        self.context.hooks = hooks or Hooks()
        self.table = REPORTS[self.kind](self.context, **self.options)
        return self.table


def report(pruner: BasePruner, kind: str, *, hooks: Hooks | None = None, **options) -> Table:
    """Measure one of the tables people publish about pruning, on ``pruner``'s model as it is.

    Args:
        pruner: the Pruner; its state (parameters, buffers, masks, history) is left as it was.
        kind: one of :data:`KINDS` ("sparsity", "criteria", "layers", "thresholds", "iterations",
            "timing", "inference", "size", "compare").
        hooks: progress and cancel (for callers on other threads).
        options: the kind's options, e.g. ``sparsities=[0, 0.5, 0.9]`` (see :func:`options_of`).

    Returns:
        A :class:`prunelab.Table` (markdown in a terminal, HTML in a notebook; ``.rows``,
        ``.to_csv()``, ``.to_markdown()``, ``.to_pandas()``).

    Example:
        >>> print(report(pruner, "sparsity", sparsities=[0, 0.9]))   # doctest: +SKIP
    """
    return ReportJob(pruner, kind, **options).prepare().run(hooks)
