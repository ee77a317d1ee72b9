"""Measuring inference latency honestly: fixed threads, warm-up, many repeats, the median.

Models compared together are timed interleaved (A, B, A, B, ...) on the same batch, so a busy
machine slows all of them alike instead of whichever ran during the noise.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..core.inputs import call


@dataclass(frozen=True)
class Latency:
    """Median and quartiles of one forward pass on ``batch`` samples, in seconds."""

    median: float
    q1: float
    q3: float
    repeats: int
    batch: int
    threads: int

    def __str__(self) -> str:
        return (f"{self.median * 1e3:.2f} ms (IQR {self.q1 * 1e3:.2f}-{self.q3 * 1e3:.2f}, median of "
                f"{self.repeats}, batch {self.batch}, {self.threads} thread{'s' * (self.threads != 1)})")


def measure_latency(models: Mapping[str, nn.Module], inputs: torch.Tensor, *, threads: int = 1,
                    warmup: int = 5, repeats: int = 30) -> dict[str, Latency]:
    """Time ``model(inputs)`` (``model(**inputs)`` for keyword Inputs) for each of ``models`` (eval mode, no grad), interleaved.

    Args:
        models: ``{label: module}``; each is run on the same ``inputs``.
        threads: torch intra-op threads during the measurement (restored afterwards).
        warmup: untimed runs of each model first (allocator, kernel selection).
        repeats: timed runs of each (at least 1); the median is reported.

    Returns:
        ``{label: Latency}`` (median and quartiles in seconds). Torch's thread count and each
        model's train/eval mode are restored afterwards, even on an error.

    Raises:
        ValueError: ``repeats`` below 1.

    Example:
        >>> print(pl.measure_latency({"dense": model}, x)["dense"])
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    before = torch.get_num_threads()
    modes = {k: m.training for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    torch.set_num_threads(threads)
    try:
        for m in models.values():
            _set_mode(m, False)
        with torch.inference_mode():
            for _ in range(warmup):
                for m in models.values():
                    call(m, inputs)
            for _ in range(repeats):
                for k, m in models.items():
                    start = time.perf_counter()
                    call(m, inputs)
                    times[k].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
        for k, m in models.items():
            _set_mode(m, modes[k])
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[k] = Latency(statistics.median(ts), q[0], q[2], repeats, len(inputs), threads)
    return out


def _set_mode(model: nn.Module, training: bool) -> None:
    try:
        model.train(training)
    except NotImplementedError:  # a torch.export program's module has no modes: it runs as exported
        pass
