"""The tables of accuracy against how much is pruned: ``"sparsity"``, ``"criteria"``, ``"thresholds"``.

Each point is one-shot pruning of the model as it is (its current unmasked weights), measured
with ``evaluate()`` on the Pruner's evaluation data; sizes are read from real files on the disk.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.tables import Table, count, fixed, percent
from .common import (DEFAULT_SPARSITIES, MB, Context, check_sparsities, check_two_of_four, criterion_name, file_bytes, prune_to,
                     scratch_folder)

SPARSITY_COLUMNS = ("sparsity", "accuracy", "params", "nonzero_params", "dense_mb", "sparse_mb", "file_mb",
                    "compression", "flops", "nonzero_flops", "samples")


def sparsity_table(ctx: Context, sparsities: Sequence[float] | None = None, *, criterion="magnitude",
                   granularity: str = "unstructured", scope: str = "global", files: bool = True) -> Table:
    """Prune % -> accuracy, parameters, nonzero parameters, memory and the sparse export's real file.

    Args:
        ctx: the report's context.
        sparsities: fractions to prune (default :data:`~prunelab.reports.common.DEFAULT_SPARSITIES`).
        criterion, granularity, scope: as for ``Pruner.prune``.
        files: write the "sparse" export at each point and read its size (``file_mb``); False
            leaves it empty (None) for speed.

    Returns:
        A Table: ``sparsity, accuracy, params, nonzero_params, dense_mb, sparse_mb, file_mb,
        compression, flops, nonzero_flops, samples``.
    """
    sparsities = check_sparsities(sparsities)
    check_two_of_four(granularity, sparsities)
    ctx.total = len(sparsities)
    twin, rows = ctx.twin(), []
    with scratch_folder() as folder:
        for s in sparsities:
            ctx.hooks.check()
            m = prune_to(twin, s, criterion=criterion, granularity=granularity, scope=scope).evaluate()
            size = sum(file_bytes(twin, folder, "sparse").values()) / MB if files else None
            rows.append(dict(sparsity=s, accuracy=m.accuracy, params=m.params, nonzero_params=m.nonzero_params,
                             dense_mb=m.dense_bytes / MB, sparse_mb=m.sparse_bytes / MB, file_mb=size,
                             compression=m.compression_ratio, flops=m.flops, nonzero_flops=m.nonzero_flops,
                             samples=m.samples))
            ctx.step(f"sparsity {s:.0%} measured")
    pruned = "Units pruned" if granularity == "structured" else "Pruned"
    samples = rows[0]["samples"]
    return Table(SPARSITY_COLUMNS, rows, title=f"accuracy and size by sparsity ({criterion_name(criterion)}, "
                                               f"{granularity})",
                 headers={"sparsity": pruned, "accuracy": "Accuracy", "params": "Parameters",
                          "nonzero_params": "Nonzero", "dense_mb": "Memory (dense)", "sparse_mb": "Memory (sparse)",
                          "file_mb": "File (sparse)", "compression": "Compression", "flops": "FLOPs",
                          "nonzero_flops": "Nonzero FLOPs", "samples": "Samples"},
                 formats={"sparsity": percent(0), "accuracy": percent(1), "params": _millions,
                          "nonzero_params": _millions, "dense_mb": fixed(2, " MB"), "sparse_mb": fixed(2, " MB"),
                          "file_mb": fixed(2, " MB"), "compression": fixed(1, "x"), "flops": count,
                          "nonzero_flops": count},
                 note=f"Measured on {samples} validation samples; memory stores masked weights as a bitmask plus "
                      "nonzero fp32 values; file is the real size of the 'sparse' export on disk.")


def criteria_table(ctx: Context, sparsities: Sequence[float] | None = None, *, criteria=("magnitude", "random"),
                   granularity: str = "unstructured", scope: str = "global") -> Table:
    """Accuracy at the same sparsities for several criteria side by side.

    Args:
        ctx: the report's context.
        sparsities: as for :func:`sparsity_table`.
        criteria: names or Criterion objects (default magnitude vs random).
        granularity, scope: as for ``Pruner.prune``.

    Returns:
        A Table: ``sparsity`` then one accuracy column per criterion (named after it).
    """
    sparsities = check_sparsities(sparsities)
    check_two_of_four(granularity, sparsities)
    criteria = [criteria] if isinstance(criteria, str) else list(criteria)
    if not criteria:
        raise ValueError("criteria: name at least one, e.g. ['magnitude', 'random'].")
    names = [criterion_name(c) for c in criteria]
    if len(set(names)) != len(names):
        raise ValueError(f"criteria: each criterion once, got {names}.")
    ctx.total = len(sparsities) * len(criteria)
    twin = ctx.twin()
    rows = [dict(sparsity=s) for s in sparsities]
    for c, name in zip(criteria, names):
        for row in rows:
            ctx.hooks.check()
            row[name] = prune_to(twin, row["sparsity"], criterion=c, granularity=granularity, scope=scope
                                 ).evaluate().accuracy
            ctx.step(f"{name} at {row['sparsity']:.0%} measured")
    samples = twin.evaluate().samples
    return Table(["sparsity", *names], rows, title=f"accuracy by criterion ({granularity})",
                 headers={"sparsity": "Units pruned" if granularity == "structured" else "Pruned"},
                 formats={"sparsity": percent(0), **{n: percent(1) for n in names}},
                 note=f"Accuracy measured on {samples} validation samples, one-shot {scope} pruning.")


def default_thresholds(ctx: Context, at: Sequence[float] = DEFAULT_SPARSITIES) -> tuple[float, ...]:
    """Thresholds of |w| that prune about each fraction in ``at`` of the weights (3 significant digits)."""
    twin = ctx.twin()
    twin.reset()
    weights = torch.cat([twin.layer(n).weight.detach().abs().flatten().float().cpu()
                         for n in twin.layer_names])
    out = []
    for q in at:
        t = 0.0 if q == 0 else float(weights.kthvalue(max(1, int(q * len(weights)))).values)
        out.append(float(f"{t:.3g}"))
    return tuple(dict.fromkeys(out))


def thresholds_table(ctx: Context, thresholds: Sequence[float] | None = None, *, granularity: str = "unstructured",
                     files: bool = True) -> Table:
    """Absolute |w| thresholds -> accuracy, sparsity, network size.

    Args:
        ctx: the report's context.
        thresholds: |w| values (default: those pruning about 0, 50, 80, 90 and 95% of the weights).
        granularity: "unstructured", or "structured" (units whose mean |w| is below).
        files: read the "sparse" export's real size at each threshold (else ``file_mb`` is None).

    Returns:
        A Table: ``threshold, accuracy, sparsity, nonzero_params, sparse_mb, file_mb``.
    """
    thresholds = default_thresholds(ctx) if thresholds is None else tuple(thresholds)
    bad = [t for t in thresholds if not isinstance(t, (int, float)) or isinstance(t, bool) or not t >= 0]
    if bad or not thresholds:
        raise ValueError(f"thresholds must be absolute |w| values >= 0, e.g. [0.01, 0.05]; got {bad or 'none'}.")
    ctx.total = len(thresholds)
    twin, rows = ctx.twin(), []
    with scratch_folder() as folder:
        for t in thresholds:
            ctx.hooks.check()
            twin.reset()
            if t:
                twin.prune(threshold=float(t), granularity=granularity)
            m = twin.evaluate()
            size = sum(file_bytes(twin, folder, "sparse").values()) / MB if files else None
            rows.append(dict(threshold=float(t), accuracy=m.accuracy, sparsity=twin.overall_sparsity(),
                             nonzero_params=m.nonzero_params, sparse_mb=m.sparse_bytes / MB, file_mb=size))
            ctx.step(f"threshold {t:g} measured")
    return Table(["threshold", "accuracy", "sparsity", "nonzero_params", "sparse_mb", "file_mb"], rows,
                 title=f"accuracy by |w| threshold ({granularity})",
                 headers={"threshold": "|w| below", "accuracy": "Accuracy", "sparsity": "Sparsity",
                          "nonzero_params": "Nonzero", "sparse_mb": "Memory (sparse)", "file_mb": "File (sparse)"},
                 formats={"threshold": lambda v: f"{v:.3g}", "accuracy": percent(1), "sparsity": percent(1),
                          "nonzero_params": count, "sparse_mb": fixed(3, " MB"), "file_mb": fixed(3, " MB")},
                 note=f"Measured on {twin.evaluate().samples} validation samples; file is the real 'sparse' export.")


def _millions(v) -> str:
    return f"{v / 1e6:.2f}M"
