"""The tables of what the pruned network is made of: ``"layers"`` and ``"size"``.

Both describe the model as it is now: its masks, its FLOPs (counted as ``Pruner.flops`` counts
them, the numbers of torch's FlopCounterMode) and the real files each export format writes.
"""

from __future__ import annotations

from ..core.tables import Table, count, fixed, percent
from ..export import FORMATS
from .common import MB, Context, file_bytes, scratch_folder

SIZE_FORMATS = tuple(f for f in FORMATS if f != "recipe")
"""The formats the size table writes (a recipe holds no weights)."""


def layers_table(ctx: Context) -> Table:
    """Per prunable layer: connections before and after, the reduction, and its share of FLOPs.

    Args:
        ctx: the report's context.

    Returns:
        A Table: ``layer, kind, connections_before, connections_after, reduction, flops, flops_share``
        (``flops_share``: the layer's dense FLOPs over the whole model's), then a row "total".
    """
    twin = ctx.twin()
    total_flops, per_layer = twin.flops()
    masks = twin.masks()
    ctx.total = len(twin.layers)
    rows = []
    for layer in twin.layers:
        ctx.hooks.check()
        mask = masks.get(layer.weight_name)
        after = layer.params if mask is None else int(mask.sum())
        rows.append(dict(layer=layer.name, kind=layer.kind, connections_before=layer.params,
                         connections_after=after, reduction=1 - after / max(layer.params, 1),
                         flops=per_layer.get(layer.name, 0), flops_share=per_layer.get(layer.name, 0) / max(total_flops, 1)))
        ctx.step(f"layer {layer.name}")
    before = sum(r["connections_before"] for r in rows)
    after = sum(r["connections_after"] for r in rows)
    rows.append(dict(layer="total", kind="", connections_before=before, connections_after=after,
                     reduction=1 - after / max(before, 1), flops=sum(r["flops"] for r in rows),
                     flops_share=sum(r["flops_share"] for r in rows)))
    return Table(["layer", "kind", "connections_before", "connections_after", "reduction", "flops", "flops_share"],
                 rows, title="connections per layer",
                 headers={"layer": "Layer", "kind": "Kind", "connections_before": "Connections before",
                          "connections_after": "Connections after", "reduction": "Reduction", "flops": "FLOPs",
                          "flops_share": "Share of FLOPs"},
                 formats={"connections_before": count, "connections_after": count, "reduction": percent(1),
                          "flops": count, "flops_share": percent(1)},
                 note=f"FLOPs per sample of the dense model ({total_flops:,} in all, counted as torch's "
                      "FlopCounterMode counts); the rest (activations, norms) is in no layer's share.")


def size_table(ctx: Context, formats=SIZE_FORMATS) -> Table:
    """The dense file and each export format's real file, with the reduction.

    Args:
        ctx: the report's context.
        formats: export formats to write (default: every format with weights).

    Returns:
        A Table: ``file, format, mb, reduction`` (reduction against the dense file, which is the
        unpruned model's "state_dict" export); a format that cannot be written has its error
        instead of a size.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; formats: {list(FORMATS)}.")
    twin = ctx.twin()
    ctx.total = len(formats) + 1
    rows = []
    with scratch_folder() as folder:
        with twin.dense():
            dense = sum(file_bytes(twin, folder, "state_dict", stem="dense").values())
        rows.append(dict(file="dense", format="state_dict", mb=dense / MB, reduction=0.0, error=""))
        ctx.step("dense file written")
        for fmt in formats:
            ctx.hooks.check()
            try:
                sizes = file_bytes(twin, folder, fmt)
            except (ValueError, ImportError, OSError, RuntimeError) as e:
                rows.append(dict(file=fmt, format=fmt, mb=None, reduction=None, error=str(e).split("\n")[0]))
            else:
                for name, size in sizes.items():
                    label = fmt if len(sizes) == 1 else f"{fmt} {name.rsplit('.', 1)[-1]}"
                    rows.append(dict(file=label, format=fmt, mb=size / MB, reduction=1 - size / dense, error=""))
            ctx.step(f"{fmt} written")
    return Table(["file", "format", "mb", "reduction", "error"], rows, title="file sizes",
                 headers={"file": "File", "format": "Format", "mb": "Size", "reduction": "Reduction",
                          "error": "Note"},
                 formats={"mb": fixed(3, " MB"), "reduction": percent(1)},
                 note=f"Real file sizes on disk, at overall sparsity {twin.overall_sparsity():.1%}; the dense file "
                      "is the unpruned model's state_dict.")
