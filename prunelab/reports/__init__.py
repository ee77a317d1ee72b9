"""The tables people publish about pruning, measured on the user's own model (a workflow floor).

``pruner.report(kind, **options)`` is :func:`report`; each kind is one function taking a
:class:`~prunelab.reports.common.Context` (a copy of the Pruner's state, progress and cancel):

- :mod:`.sweeps`: "sparsity", "criteria", "thresholds" (accuracy against how much is pruned).
- :mod:`.structure`: "layers", "size" (what the network and its files are made of).
- :mod:`.speed`: "timing", "inference" (time per stage; latency of dense, pruned, structured, int8).
- :mod:`.records`: "iterations", "compare" (the steps of iterate(); several models side by side).
- :mod:`.job`: :class:`ReportJob` (prepare on the Pruner's thread, run on any) and :func:`report`.
- :mod:`.loading`: models and data named by import path (``mypkg.models:build``), for the shell.

Example:
    >>> table = pruner.report("sparsity", sparsities=[0, 0.5, 0.9])   # doctest: +SKIP
    >>> print(table); table.to_csv()                                  # doctest: +SKIP
"""

from .common import DEFAULT_SPARSITIES, Context
from .job import DESCRIPTIONS, KINDS, REPORTS, ReportJob, check_kind, options_of, remember_iterate, report

__all__ = ["Context", "DEFAULT_SPARSITIES", "DESCRIPTIONS", "KINDS", "REPORTS", "ReportJob", "check_kind",
           "options_of", "remember_iterate", "report"]
