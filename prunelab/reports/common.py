"""What every report shares: the twin it measures on, progress and cancel, real file sizes, and an
accuracy loop of its own for models the Pruner does not hold (a structured export, int8).

A report never changes the Pruner it describes. :class:`Context` holds a
:class:`~prunelab.core.copies.PrunerCopy` taken on the Pruner's thread, and every measurement
runs on an independent Pruner over that copy (:meth:`Context.twin`), which starts in the copied
state: the same unmasked weights, plans and masks, so "the model as it is". Resetting the twin
gives the current unmasked weights with no masks (after a fine-tune: the fine-tuned weights).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import contextlib
import torch

from ..core.base import BasePruner
from ..core.checks import check_fraction
from ..core.copies import PrunerCopy
from ..export import export
from ..retrain import Hooks

DEFAULT_SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)
"""The sparsities a report measures when none are given."""

MB = 1e6


@dataclass
class Context:
    """What a report runs with, on any thread.

    Attributes:
        copy: the Pruner's state, taken on its thread.
        hooks: progress and cancel (:class:`prunelab.retrain.Hooks`).
        history: the Pruner's last ``iterate()`` history table, when it has one.
        total: how many progress steps the report will take (set by the report).
    """

    copy: PrunerCopy
    hooks: Hooks = field(default_factory=Hooks)
    history: object = None
    total: int = 1
    _done: int = 0
    _twin: BasePruner | None = None

    def twin(self) -> BasePruner:
        """The independent Pruner the report measures on (one per report, made on first use)."""
        if self._twin is None:
            self._twin = self.copy.pruner()
        return self._twin

    def step(self, what: str) -> None:
        """One progress step done (``what`` names the next); raises Cancelled when cancelled."""
        self.hooks.check()
        self._done += 1
        if self.hooks.progress is not None:
            self.hooks.progress(min(self._done, self.total), self.total, what)


def check_sparsities(values: Sequence[float] | None, name: str = "sparsities") -> tuple[float, ...]:
    """Fractions in [0, 1], at least one (None gives :data:`DEFAULT_SPARSITIES`).

    Example:
        >>> check_sparsities([0, 0.5])
        (0.0, 0.5)
    """
    if values is None:
        return DEFAULT_SPARSITIES
    if isinstance(values, (int, float)):
        values = [values]
    values = tuple(float(check_fraction(v, name)) for v in values)
    if not values:
        raise ValueError(f"{name}: give at least one fraction, e.g. [0, 0.5, 0.9].")
    return values


def check_two_of_four(granularity: str, sparsities: Sequence[float]) -> None:
    """A ValueError unless every sparsity is 0 or 0.5 for the 2:4 pattern."""
    bad = [s for s in sparsities if granularity == "2:4" and s not in (0, 0.5)]
    if bad:
        raise ValueError(f"2:4 sparsity is always 0.5 (or 0); got {bad[0]}. Give sparsities=[0, 0.5].")


def prune_to(twin: BasePruner, sparsity: float, *, criterion="magnitude", granularity: str = "unstructured",
             scope: str = "global") -> BasePruner:
    """The twin reset to its unmasked weights, then pruned one-shot to ``sparsity`` (0: dense)."""
    twin.reset()
    if sparsity:
        twin.prune(sparsity, criterion=criterion, granularity=granularity, scope=scope)
    return twin


def criterion_name(criterion) -> str:
    """A criterion's name for a column: the string, or a Criterion's ``name`` (else its class)."""
    if isinstance(criterion, str):
        return criterion
    return str(getattr(criterion, "name", None) or type(criterion).__name__)


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder for the files a report writes to measure them (removed after)."""
    with tempfile.TemporaryDirectory(prefix="prunelab-report-") as tmp:
        yield Path(tmp)


def file_bytes(pruner: BasePruner, folder: Path, fmt: str, stem: str = "model") -> dict[str, int]:
    """Export ``pruner`` in ``fmt`` into ``folder`` and read each file's size from the disk.

    Returns:
        ``{file name: bytes}`` (two files for "structured": the weights and the .pt2 program).
    """
    suffix = {"state_dict": ".safetensors", "sparse": ".sparse.safetensors", "onnx": ".onnx",
              "recipe": ".json"}.get(fmt, "")
    done = export(pruner, folder / f"{stem}-{fmt}{suffix}", fmt)
    return {f.name: os.path.getsize(f) for f in done.files}


def logits(output) -> torch.Tensor:
    """A model's output as a tensor (the ``logits`` of a ModelOutput, the first of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"the model returned a {type(output).__name__}; a report needs a tensor (or .logits).")


