"""Retraining pruned models (a workflow floor): fine-tuning with the masks held, gradual pruning,
regrowth. Each job takes a :class:`prunelab.core.base.BasePruner` through its public surface.

- :mod:`.settings`: :class:`FinetuneSettings`, :class:`IterateSettings` (every default, once) and the checks.
- :mod:`.schedule`: :func:`sparsity_schedule` and :data:`SCHEDULES`.
- :mod:`.batches`: the training batches (shuffled from a seed; class targets checked; streams refused).
- :mod:`.loop`: optimizers (LBFGS too), :class:`Hooks` (progress, cancel) and the masked training
  loop, which holds every module's flag and every buffer.
- :mod:`.preflight`: what every run checks before it copies or trains anything.
- :mod:`.regrow`: RigL's regrowth.
- :mod:`.recalibration`, :mod:`.calibration`: recovery without training (BatchNorm re-estimated, bias
  compensation), one step of history; what it computes.
- :mod:`.finetuning`, :mod:`.iterative`: the jobs (prepare on the Pruner's thread, run on any thread,
  apply on the Pruner's thread) and :func:`finetune` / :func:`iterate`, the three parts in a row.
  The Python API and the explorer's Fine-tune panel run the same jobs. Each is a transaction: the
  Pruner changes only in ``apply``, one atomic history step at a time.

Example:
    >>> from prunelab import retrain
    >>> retrain.finetune(pruner, 3, progress=False)    # doctest: +SKIP
    >>> retrain.iterate(pruner, 0.9, progress=False)   # doctest: +SKIP
"""

from .finetuning import FinetuneJob, FinetuneResult, finetune
from .iterative import IterateJob, IterateStep, history_table, iterate
from .loop import Cancelled, Hooks
from .recalibration import RecalibrateJob, RecalibrateSettings, Recalibration, recalibrate
from .schedule import SCHEDULES, sparsity_schedule
from .settings import (OPTIMIZERS, VARIABLE_GRANULARITIES, FinetuneSettings, IterateSettings, TrainingSettings,
                       resolve_defaults)

__all__ = ["Cancelled", "FinetuneJob", "FinetuneResult", "FinetuneSettings", "Hooks", "IterateJob", "IterateSettings",
           "IterateStep", "OPTIMIZERS", "RecalibrateJob", "RecalibrateSettings", "Recalibration", "SCHEDULES", "TrainingSettings", "VARIABLE_GRANULARITIES", "finetune",
           "history_table", "iterate", "recalibrate", "resolve_defaults", "sparsity_schedule"]
