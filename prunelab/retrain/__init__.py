"""Retraining pruned models (a workflow floor): fine-tuning with the masks held, gradual pruning,
regrowth. Each job takes a :class:`prunelab.core.base.BasePruner` through its public surface."""

from .training import FinetuneResult, finetune, iterate, sparsity_schedule

__all__ = ["FinetuneResult", "finetune", "iterate", "sparsity_schedule"]
