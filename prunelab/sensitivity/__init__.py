"""Sensitivity analysis (a workflow floor): how much accuracy each layer loses when pruned alone
(:mod:`.curves`), and choosing per-layer sparsities from those curves (:mod:`.allocation`).
Each takes a :class:`prunelab.core.base.BasePruner` through its public surface.

Example:
    >>> from prunelab import sensitivity
    >>> table = sensitivity.sensitivity(pruner, [0.5, 0.9])           # doctest: +SKIP
    >>> sensitivity.allocate(pruner, target_sparsity=0.8, table=table)  # doctest: +SKIP
"""

from .allocation import Allocation, allocate, choose_sparsities
from .curves import (DEFAULT_SPARSITIES, SensitivityJob, SensitivityTable, analysed_layers, check_executor,
                     check_granularity, check_sparsities, evaluate_masked, measure, sensitivity)

__all__ = ["Allocation", "DEFAULT_SPARSITIES", "SensitivityJob", "SensitivityTable", "allocate", "analysed_layers",
           "check_executor", "check_granularity", "check_sparsities", "choose_sparsities", "evaluate_masked",
           "measure", "sensitivity"]
