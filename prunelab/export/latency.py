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

from ..core.checks import check_fraction
from ..core.copies import PrunerCopy
from ..core.inputs import call
from ..core.tables import Table, fixed, percent
from .structured import shrink


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


# ---------------------------------------------------------------------------- latency versus ratio

CURVE_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NO_GAIN = 0.02  # a step to fewer FLOPs "does not run faster" when latency falls by less than this fraction


def structured_latency(pruner, amount, inputs: Mapping[str, torch.Tensor] | None = None, *,
                       criterion="magnitude", scope: str = "layer", threads: int = 1, repeats: int = 30,
                       dense: nn.Module | None = None):
    """Structured pruning of a private copy of ``pruner`` to ``amount`` (a fraction of units, or
    ``{layer: fraction}``), cut physically, and timed beside the dense network.

    Args:
        pruner: the Pruner (left exactly as it was).
        amount: as for ``prune(amount, granularity="structured")``.
        inputs: ``{label: batch}`` to time on (default: batch 1 of the validation inputs).
        criterion, scope: of the pruning.
        threads, repeats: of :func:`measure_latency`.
        dense: the dense network to time beside (default: the Pruner's model as it is).

    Returns:
        ``(flops kept, {label: (latency of the cut network, latency of dense)})``: seconds, medians.

    Example:
        >>> kept, times = structured_latency(pruner, 0.5)          # doctest: +SKIP
    """
    inputs = {"1": pruner.val_inputs[:1]} if inputs is None else inputs
    twin = PrunerCopy.of(pruner).pruner()
    if isinstance(amount, Mapping) or amount:
        twin.prune(amount, criterion=criterion, granularity="structured",
                   **({} if isinstance(amount, Mapping) else {"scope": scope}))
    return cut_latency(twin, inputs, dense if dense is not None else pruner.model, threads=threads, repeats=repeats)


def cut_latency(pruner, inputs: Mapping[str, torch.Tensor], dense: nn.Module, *, threads: int = 1,
                repeats: int = 30):
    """``pruner``'s state cut physically (:func:`prunelab.export.shrink`) and timed on each of
    ``inputs`` interleaved with ``dense``.

    Returns:
        ``(flops kept, {label: (latency of the cut network, latency of dense)})``: seconds, medians.

    Example:
        >>> kept, times = cut_latency(twin, {"1": x[:1]}, dense_model)      # doctest: +SKIP
    """
    shrunk = shrink(pruner)
    models = {"cut": shrunk.model, "dense": dense}
    out = {}
    for label, x in inputs.items():
        t = measure_latency(models, x, threads=threads, repeats=repeats)
        out[label] = (t["cut"].median, t["dense"].median)
    return 1 / shrunk.flops_ratio, out


def latency_curve(pruner, ratios=CURVE_RATIOS, *, batch: int = 256, criterion="magnitude", threads: int = 1,
                  repeats: int = 30):
    """Measured latency versus structured pruning ratio for the model at hand, at batch 1 and at a
    throughput ``batch``, marking where fewer FLOPs do not run faster.

    Each ratio removes that fraction of the units of every layer that has removable units
    (``scope="layer"``), on a private copy; the network is cut physically (format "structured")
    and timed interleaved with the dense one. A row is marked ``no_gain`` (per batch size) when its
    FLOPs are lower than the previous row's but its measured speedup over dense is not at least
    :data:`NO_GAIN` (2%) above the best of the rows before it: fewer FLOPs that do not run faster
    here than a state with more of them.

    Args:
        pruner: the Pruner (left exactly as it was).
        ratios: fractions of units removed per layer, ascending.
        batch: the throughput batch (at most the validation samples).
        criterion: which units go.
        threads, repeats: of :func:`measure_latency`.

    Returns:
        A :class:`prunelab.Table`: ``ratio, flops_kept, latency_ms_1, speedup_1, no_gain_1,
        latency_ms_batch, speedup_batch, no_gain_batch`` (speedups over dense, measured beside it).

    Example:
        >>> print(pl.export.latency_curve(pruner, [0, 0.25, 0.5, 0.75]))   # doctest: +SKIP
    """
    ratios = [float(r) for r in ratios]
    for r in ratios:
        check_fraction(r, "ratio")
    if ratios != sorted(ratios) or not ratios:
        raise ValueError(f"ratios must be one or more fractions in ascending order, got {ratios}.")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a whole number >= 1, got {batch!r}.")
    x = pruner.val_inputs
    inputs = {"1": x[:1], "batch": x[:batch]}
    rows, best = [], {}
    for r in ratios:
        kept, times = structured_latency(pruner, r, inputs, criterion=criterion, threads=threads, repeats=repeats)
        row = dict(ratio=r, flops_kept=kept)
        for label, (cut, dense) in times.items():
            row[f"latency_ms_{label}"], row[f"speedup_{label}"] = cut * 1e3, dense / cut
            fewer = bool(rows) and kept < rows[-1]["flops_kept"] - 1e-9
            row[f"no_gain_{label}"] = bool(fewer and row[f"speedup_{label}"] < best[label] * (1 + NO_GAIN))
            best[label] = max(best.get(label, 0.0), row[f"speedup_{label}"])
        rows.append(row)
    n = len(inputs["batch"])
    flat = [f"{r['ratio']:.0%}" for r in rows if r["no_gain_1"] or r["no_gain_batch"]]
    note = (f"Structured, {criterion}, every layer with removable units at the same ratio; median of {repeats} "
            f"interleaved runs beside dense, {threads} thread(s). "
            + (f"Fewer FLOPs but not faster (by {NO_GAIN:.0%}) at: {', '.join(flat)}." if flat else
               "Every step to fewer FLOPs ran faster here."))
    mark = lambda v: "no gain" if v else ""  # noqa: E731
    return Table(["ratio", "flops_kept", "latency_ms_1", "speedup_1", "no_gain_1", "latency_ms_batch", "speedup_batch",
                  "no_gain_batch"], rows, title="latency versus structured ratio",
                 headers={"ratio": "Units removed", "flops_kept": "FLOPs kept", "latency_ms_1": "Latency (batch 1)",
                          "speedup_1": "Speedup (1)", "no_gain_1": "", "latency_ms_batch": f"Latency (batch {n})",
                          "speedup_batch": f"Speedup ({n})", "no_gain_batch": ""},
                 formats={"ratio": percent(0), "flops_kept": percent(1), "latency_ms_1": fixed(3, " ms"),
                          "speedup_1": fixed(2, "x"), "no_gain_1": mark, "latency_ms_batch": fixed(3, " ms"),
                          "speedup_batch": fixed(2, "x"), "no_gain_batch": mark}, note=note)
